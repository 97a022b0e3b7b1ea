"""Run operations shared by the JSON API, the Dash pages and the CLI.

Invariants:

* Every parameter is validated (pydantic, with the portal's limits, catalogue
  and a token counter) before a row is written; a rejected submission writes
  nothing and raises ``SubmissionError`` with human-readable messages.
* The row is committed before the task is sent (``workers.dispatch``), so an
  accepted run is never lost even if the broker is down. A gpu run is sent
  by the dispatcher when a worker slot is free, in fair-share order; a queued
  run's position, estimated start and any hold come from that same plan
  (``webapp.run_queue``).
* Only the owner or an admin may cancel; anyone logged in may view.
* ``submit`` hands back an identical succeeded run (same kind, validated
  params, model identity and inputs: ``webapp.reuse``) instead of queueing,
  unless forced; ``submit_run`` always queues a new run.
* A running run whose heartbeat is older than ``heartbeat_late_after()`` (or
  cleared because Celery reported its worker process dead) is shown as such
  in every form of the run (``heartbeat_state``): the page, ``/runs`` and the
  JSON API say "worker lost? ..." while the retry is on its way.
* The web process never loads a model: it loads tokenizers only (cached), and
  the model's block count and vocabulary size from its config alone
  (``webapp.model_shape``: config.json or the GGUF header, never weights), so
  layers and token ids are checked before queueing (context keys ``n_layers``
  and ``vocab_size``); a catalogue model whose local files are absent (never
  fetched) is refused before queueing with the path and the fetch command
  (``latent_atlas.lm.fetch.missing_files``).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import String, cast, func, select, update
from sqlalchemy.orm import selectinload

from latent_atlas.analyses import get_kind
from latent_atlas.lm.fetch import missing_files
from latent_atlas.settings import get_settings
from models import Run, RunStatus, User, session_scope
from models.base import utcnow
from models.run import RunAttempt, RunStar
from models.store import ArtifactStore
from webapp.lanes import queue_for
from webapp.model_shape import model_shape
from webapp.reuse import find_reusable, key_params
from webapp.run_health import heartbeat_state
from webapp.run_queue import add_queue_fields, queue_fields, queue_position  # noqa: F401  (pages use it)
from webapp.sae_runs import sae_run_dir

log = logging.getLogger(__name__)


class SubmissionError(ValueError):
    """A submission was rejected; ``messages`` say why, one line each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class RunNotFound(LookupError):
    pass


class NotAllowed(PermissionError):
    pass


class RunDeleted(LookupError):
    """The run was deleted: its record stays, its arrays are gone."""


_tokenizer_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}


def _token_counter(model_name: str):
    """A callable counting tokens per prompt with the model's own tokenizer."""
    from latent_atlas.lm import load_tokenizer

    settings = get_settings()
    with _tokenizer_lock:
        tokenizer = _tokenizers.get(model_name)
        if tokenizer is None:
            entry = settings.model_source(model_name)
            try:
                tokenizer = load_tokenizer(
                    entry.source,
                    gguf_file=entry.gguf_file,
                    revision=entry.revision,
                    cache_dir=settings.data_dir / "tokenizers",
                )
            except Exception as exc:
                raise SubmissionError(
                    [f"could not load the tokenizer of model {model_name!r} to check prompt lengths: {exc}"]
                ) from exc
            _tokenizers[model_name] = tokenizer

    def count(prompts: list[str]) -> list[int]:
        encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    return count


# Pydantic names Python types; a JSON client sent JSON types.
_JSON_TYPE_MESSAGES = {"dict_type": "must be a JSON object", "model_type": "must be a JSON object",
                       "list_type": "must be a JSON array"}


def format_validation_error(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        text = _JSON_TYPE_MESSAGES.get(error.get("type", ""), error.get("msg", "invalid value"))
        if text.startswith("Value error, "):
            text = text[len("Value error, "):]
        messages.append(f"{where}: {text}" if where else text)
    return messages


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (key or value) of a JSON-like value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def run_info(run_id: str) -> dict[str, Any] | None:
    """``{kind, status, model, summary}`` of a run, ``None`` when there is none.

    In the validation context as ``ctx["run_info"]``: params that name another
    run (a scan's basis run) are checked against it before anything is queued.
    """
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        return {"kind": run.kind, "status": run.status, "model": run.model,
                "summary": dict(run.summary or {})}


def validate_params(kind_name: str, raw: Any) -> Any:
    """Validated params for ``kind_name``; raises ``SubmissionError``."""
    settings = get_settings()
    try:
        kind = get_kind(kind_name)
    except KeyError as exc:
        raise SubmissionError([str(exc.args[0])]) from None
    if not isinstance(raw, dict):
        raise SubmissionError(["params must be a JSON object"])
    context: dict[str, Any] = {"limits": settings.limits, "models": set(settings.models),
                               "run_info": run_info, "sae_run_dir": sae_run_dir}
    model_name = raw.get("model")
    if isinstance(model_name, str) and model_name in settings.models:
        missing = missing_files(model_name, settings.model_source(model_name))
        if missing is not None:  # a catalogue model whose files were never fetched
            raise SubmissionError([missing])
        context["count_tokens"] = _token_counter(model_name)
        shape = model_shape(model_name)  # bounds of layers and token ids, from the config alone
        if shape.n_layers is not None:
            context["n_layers"] = shape.n_layers
        if shape.vocab_size is not None:
            context["vocab_size"] = shape.vocab_size
    try:
        # Strict JSON-mode validation: no coercion between JSON types (``true`` is not 1,
        # ``"5"`` is not 5), for every field of every kind; JSON arrays still fill tuples.
        document = json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SubmissionError([f"params must be plain JSON values ({exc})"]) from None
    try:
        params = kind.params.model_validate_json(document, strict=True, context=context)
    except ValidationError as exc:
        raise SubmissionError(format_validation_error(exc)) from None
    if _has_nul(raw):  # PostgreSQL text cannot hold NUL
        raise SubmissionError(["params: text may not contain NUL characters"])
    return params


def params_hash(kind: str, params: dict[str, Any]) -> str:
    """The run key of validated, dumped params (``webapp.reuse.key_params``)."""
    return key_params(kind, params).params_hash


def _clean_title(title: str | None) -> str:
    title = (title or "").strip()
    if "\x00" in title:
        raise SubmissionError(["title: may not contain NUL characters"])
    limit = get_settings().limits.max_title_chars
    if len(title) > limit:
        raise SubmissionError([f"title: at most {limit} characters"])
    return title


def _clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SubmissionError(["tags: must be a list of strings"])
    if any("\x00" in t for t in tags):
        raise SubmissionError(["tags: may not contain NUL characters"])
    cleaned = [t.strip() for t in tags if t.strip()]
    if len(cleaned) > 20 or any(len(t) > 50 for t in cleaned):
        raise SubmissionError(["tags: at most 20 tags of at most 50 characters"])
    return cleaned


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
    clean_title = _clean_title(title)
    clean_tags = _clean_tags(tags)
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
            title=clean_title,
            tags=clean_tags,
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


@dataclass(frozen=True)
class RunFilter:
    kind: str | None = None
    model: str | None = None
    owner: str | None = None
    status: str | None = None
    text: str | None = None
    tag: str | None = None  # runs carrying this tag
    starred_by: int | None = None  # runs this user starred
    limit: int = 200
    offset: int = 0


def list_runs(flt: RunFilter = RunFilter()) -> list[dict[str, Any]]:
    """Rows for the runs table / API, newest first (bounded by ``limit`` <= 1000)."""
    limit = max(1, min(int(flt.limit), 1000))
    query = (select(Run).join(Run.owner).where(Run.deleted_at.is_(None))
             .order_by(Run.created_at.desc()).limit(limit).offset(max(0, int(flt.offset))))
    if flt.tag:  # the JSON text of the list holds the tag as a JSON string, quotes included
        query = query.where(cast(Run.tags, String).like(f"%{_like_literal(json.dumps(flt.tag))}%", escape="\\"))
    if flt.starred_by is not None:
        query = query.where(Run.id.in_(select(RunStar.run_id).where(RunStar.user_id == flt.starred_by)))
    if flt.kind:
        query = query.where(Run.kind == flt.kind)
    if flt.model:
        query = query.where(Run.model == flt.model)
    if flt.status:
        query = query.where(Run.status == flt.status)
    if flt.owner:
        query = query.where(User.username == flt.owner)
    if flt.text:
        pattern = f"%{_like_literal(flt.text.strip())}%"
        query = query.where(
            Run.title.ilike(pattern, escape="\\") | Run.id.ilike(pattern, escape="\\")
        )
    with session_scope() as session:
        rows = [run_summary(run) for run in session.scalars(query)]
    return add_queue_fields(rows)


def _like_literal(text: str) -> str:
    """``text`` matched literally by LIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def run_summary(run: Run) -> dict[str, Any]:
    """The short JSON form of a run (table rows, API lists)."""
    duration = run.duration_s
    beat = heartbeat_state(run.status, run.heartbeat_at)
    return {
        "id": run.id,
        "kind": run.kind,
        "model": run.model,
        "owner": run.owner.username if run.owner else None,
        "status": run.status,
        "progress": run.progress,
        "stage": run.stage,
        "title": run.title,
        "tags": list(run.tags or []),
        "created_at": _iso(run.created_at),
        "duration_s": round(duration, 3) if duration is not None else None,
        "heartbeat_age_s": round(beat.age_s, 1) if beat.age_s is not None else None,
        "heartbeat_stale": beat.stale,
        "warning": beat.warning,
    }


def attempt_record(attempt: RunAttempt) -> dict[str, Any]:
    duration = attempt.duration_s
    return {
        "attempt": attempt.attempt,
        "worker": attempt.worker,
        "pid": attempt.pid,
        "device": attempt.device,
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
        "duration_s": round(duration, 3) if duration is not None else None,
        "outcome": attempt.outcome,
        "error": attempt.error,
    }


def shard_records(run_id: str) -> list[dict[str, Any]]:
    """A sharded run's shards (index, status, worker, device, attempts, progress, times); [] for a whole run."""
    from models import RunShard

    with session_scope() as session:
        rows = session.execute(select(RunShard).where(RunShard.run_id == run_id).order_by(RunShard.idx)).scalars()
        return [{
            "index": row.idx, "count": row.count, "status": row.status, "worker": row.worker,
            "device": row.device, "attempts": row.attempts, "progress": round(float(row.progress), 4),
            "stage": row.stage, "units": int(row.units), "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at), "gpu_s": round(float(row.gpu_s), 3), "error": row.error,
        } for row in rows]


def run_detail(run: Run) -> dict[str, Any]:
    """The full JSON form of a run (API detail, export summary)."""
    return {
        **run_summary(run),
        "params": run.params,
        "params_hash": run.params_hash,
        "note": run.note or "",
        "deleted_at": _iso(run.deleted_at),
        "parent_id": run.parent_id,
        "queue": run.queue,
        "error": run.error,
        "attempts": run.attempts,
        "cancel_requested": run.cancel_requested,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "heartbeat_at": _iso(run.heartbeat_at),
        "worker": run.worker,
        "device": run.device,
        "timings": run.timings,
        "environment": run.environment,
        "summary": run.summary,
        **queue_fields(run),
        "attempt_records": [attempt_record(a) for a in run.attempt_records],
        "shards": shard_records(run.id),
        "artifacts": [
            {"name": a.name, "dtype": a.dtype, "shape": a.shape, "bytes": a.nbytes, "sha256": a.sha256}
            for a in run.artifacts
        ],
    }


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

