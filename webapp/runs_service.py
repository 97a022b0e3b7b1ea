"""Run operations shared by the JSON API, the Dash pages and the CLI: submit, fetch, cancel, export.

Invariants:

* Nothing is written before the submission is checked (``webapp.run_params``:
  a rejected one raises ``SubmissionError`` and writes nothing).
* The row is committed before the task is sent (``workers.dispatch``), so an
  accepted run is never lost even if the broker is down. A gpu run is sent
  by the dispatcher when a worker slot is free, in fair-share order; a queued
  run's position, estimated start and any hold come from that same plan
  (``webapp.run_queue``).
* Only the owner or an admin may cancel; anyone logged in may view.
* ``submit`` hands back an identical succeeded run (same kind, validated
  params, model identity and inputs: ``webapp.reuse``) instead of queueing,
  unless forced; ``submit_run`` always queues a new run.
* The JSON forms of runs (``run_summary``, ``run_detail``, ``list_runs``) live
  in ``webapp.run_records`` and the checks in ``webapp.run_params``; both are
  importable from here, where the pages and the API import them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from latent_atlas.settings import get_settings
from models import Run, RunStatus, User, session_scope
from models.base import utcnow
from models.store import ArtifactStore
from webapp.lanes import queue_for
from webapp.reuse import find_reusable, key_params
from webapp.run_params import (  # noqa: F401  (callers import these from here)
    SubmissionError,
    clean_tags,
    clean_title,
    format_validation_error,
    params_hash,
    run_info,
    validate_params,
)
from webapp.run_queue import queue_position  # noqa: F401  (pages use it)
from webapp.run_records import (  # noqa: F401  (callers import these from here)
    RunFilter,
    attempt_record,
    list_runs,
    run_detail,
    run_summary,
    shard_records,
)


class RunNotFound(LookupError):
    pass


class NotAllowed(PermissionError):
    pass


class RunDeleted(LookupError):
    """The run was deleted: its record stays, its arrays are gone."""



@dataclass(frozen=True)
class Submitted:
    """What a submission gave: a new queued run, or (``reused``) an identical succeeded one."""

    run: Run
    reused: bool


def submit_run(
    user_id: int,
    kind_name: str,
    raw_params: Any,
    *,
    title: str | None = None,
    tags: Any = None,
    parent_id: str | None = None,
) -> Run:
    """Validate, insert a queued run and dispatch it (always a new run). Returns the run."""
    return submit(user_id, kind_name, raw_params, title=title, tags=tags, parent_id=parent_id,
                  force=True).run


def submit(
    user_id: int,
    kind_name: str,
    raw_params: Any,
    *,
    title: str | None = None,
    tags: Any = None,
    parent_id: str | None = None,
    force: bool = False,
) -> Submitted:
    """Validate; hand back an identical succeeded run (unless ``force``), else queue a new one.

    A reused run is returned as it is (its own title, tags and owner): nothing
    is written, queued or stored, and the per-user limit of runs in flight is
    not consulted (no run is added).
    """
    from workers.dispatch import dispatch_submitted

    settings = get_settings()
    params = validate_params(kind_name, raw_params)
    title_text = clean_title(title)
    tag_list = clean_tags(tags)
    dumped = params.model_dump(mode="json")
    keyed = key_params(kind_name, dumped)
    if not force:
        with session_scope() as session:
            found = find_reusable(session, kind_name, keyed)
            found_id = found.id if found is not None else None
        if found_id is not None:
            return Submitted(get_run(found_id), True)
    with session_scope() as session:
        in_flight = session.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.owner_id == user_id,
                Run.status.in_([RunStatus.queued.value, RunStatus.running.value]),
            )
        )
        limit = settings.limits.max_concurrent_runs_per_user
        if in_flight >= limit:
            raise SubmissionError(
                [f"you already have {in_flight} runs queued or running (the limit is {limit}); "
                 "wait for one to finish or cancel one"]
            )
        if parent_id is not None and session.get(Run, parent_id) is None:
            raise SubmissionError([f"parent run {parent_id!r} does not exist"])
        run = Run(
            kind=kind_name,
            model=str(dumped.get("model", "")),
            params=dumped,
            params_hash=keyed.params_hash,
            owner_id=user_id,
            title=title_text,
            tags=tag_list,
            parent_id=parent_id,
            queue=queue_for(session, kind_name, dumped),  # the interactive lane when small (webapp.lanes)
            status=RunStatus.queued.value,
            stage="queued",
        )
        session.add(run)
        session.flush()
        run_id, queue = run.id, run.queue
    dispatch_submitted(run_id, queue)  # gpu: the dispatcher sends it when a slot is free, in fair-share order
    return Submitted(get_run(run_id), False)


def get_run(run_id: str) -> Run:
    with session_scope() as session:
        run = session.scalar(
            select(Run)
            .options(selectinload(Run.artifacts), selectinload(Run.attempt_records))
            .where(Run.id == run_id)
        )
        if run is None:
            raise RunNotFound(run_id)
        session.expunge(run)
        return run


def _may_change(user: User, run: Run) -> bool:
    return user.is_admin or run.owner_id == user.id


def cancel_run(user: User, run_id: str) -> Run:
    """Cancel a queued run at once, or ask a running one to stop between batches."""
    from workers.dispatch import GATED_QUEUE, dispatch_pending_quietly, revoke

    run = get_run(run_id)
    if not _may_change(user, run):
        raise NotAllowed("only the run's owner or an admin may cancel it")
    if run.is_terminal:
        return run
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.queued.value)
            .values(status=RunStatus.cancelled.value, stage="cancelled", finished_at=utcnow(),
                    cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.running.value)
                .values(cancel_requested=True, stage="cancelling")
                .execution_options(synchronize_session=False)
            )
    if result.rowcount == 1:
        revoke(run.task_id)
        if run.queue == GATED_QUEUE and run.dispatched_at is not None:
            dispatch_pending_quietly()  # the slot it held is free
    return get_run(run_id)



def traceback_for(user: User, run: Run) -> str | None:
    """The failure traceback, shown to the owner and admins only."""
    return run.traceback if _may_change(user, run) else None


def succeeded_children(run_id: str, kind: str) -> list[str]:
    """IDs of the succeeded child runs of ``run_id`` of one kind, oldest first."""
    with session_scope() as session:
        return list(session.scalars(
            select(Run.id)
            .where(Run.parent_id == run_id, Run.kind == kind, Run.status == RunStatus.succeeded.value)
            .order_by(Run.created_at)
        ))


def load_arrays(run: Run, names: list[str] | None = None) -> dict[str, np.ndarray]:
    if run.deleted_at is not None:
        raise RunDeleted(run.id)
    store = ArtifactStore()
    wanted = [a for a in run.artifacts if names is None or a.name in names]
    return {a.name: store.read_array(a.uri) for a in wanted}


def export_npz(run: Run) -> bytes:
    """All arrays of a run in one compressed NPZ (no pickling)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **load_arrays(run))
    return buffer.getvalue()


def export_json(run: Run) -> bytes:
    return json.dumps(run_detail(run), indent=2, sort_keys=True).encode()


def verify_artifacts(run: Run) -> dict[str, bool]:
    store = ArtifactStore()
    return {a.name: store.verify(a.uri, a.sha256) for a in run.artifacts}

