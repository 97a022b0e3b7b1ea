"""State changes of a sharded run and its shards, each one conditional UPDATE.

A run of a shardable kind (``latent_atlas.analyses.shards``) dispatched while
at least two gpu slots are free is cut into shards (``plan``); each shard is a
task ``atlas.execute_shard(run_id, idx)`` and the run's merge a task
``atlas.merge_run(run_id)`` (``workers.execute_shard``). Invariants:

* ``plan`` runs inside the dispatcher's locked transaction: the run goes
  queued -> running (attempt 1, ``worker`` "N shards") and its shard rows are
  inserted, all or nothing. A sharded run is never claimed whole
  (``lifecycle.claim`` skips runs with shards).
* A shard's claim succeeds for exactly one caller: queued -> running, or
  running with a stale (or cleared) heartbeat -> running with attempt + 1, while
  the run is running and no cancel was asked. Every later write of that worker
  is conditioned on the shard's status and attempt and on the run running.
* A shard's success stores its part first, then flips the shard; the run is
  merged by whoever then sees every shard succeeded and wins ``claim_merge``
  (a conditional UPDATE: the run's attempt + 1 and stage "merging", taken once,
  or again only when the merger's heartbeat went stale); the merger writes the
  run's artifacts and ``succeeded`` in one transaction (``lifecycle.finish``
  at the merge attempt), so the run is merged exactly once.
* A shard that fails (or runs out of attempts) fails the run; a shard that
  sees the cancel cancels the run; either way ``end_run`` ends every shard
  still queued or running in the same transaction, so their workers' next
  write matches nothing and they stop.
* Progress: the run's progress is the work-unit-weighted mean of its shards'.
* Fair share: each shard attempt's device time is added to ``gpu_s`` when it
  ends; a running shard counts from its attempt's start (``shard_spans``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from latent_atlas.analyses import Cancelled
from latent_atlas.analyses.shards import ShardResult, get_shardable, shard_count
from latent_atlas.settings import get_settings
from models import Run, RunShard, RunStatus, ShardStatus, session_scope
from models.base import utcnow
from models.shard import SHARD_ACTIVE
from models.store import ArtifactStore

log = logging.getLogger(__name__)

MERGING = "merging"


@dataclass(frozen=True)
class ShardClaim:
    run_id: str
    idx: int
    count: int
    attempt: int
    kind: str
    params: dict[str, Any]
    spec: dict[str, Any]


def has_shards(run_id_column=Run.id):
    """SQL: the run has shard rows (it runs sharded, never whole)."""
    return exists().where(RunShard.run_id == run_id_column)


def shard_units(kind: str, params: Any, spec: dict[str, Any], total: int) -> int:
    """A shard's work units, the weight of its progress (``shards`` docstring)."""
    if "begin" in spec and "end" in spec:
        return int(spec["end"]) - int(spec["begin"])
    if "prompt_begin" in spec and "prompt_end" in spec:
        return int(spec["prompt_end"]) - int(spec["prompt_begin"])
    return max(1, total // max(1, int(spec["count"])))


def min_units(kind: str) -> int | None:
    """The smallest shard for ``kind`` (the kind's own minimum, raised by settings); None: never split."""
    settings = get_settings().sharding
    sharded = get_shardable(kind)
    if not settings.enabled or sharded is None:
        return None
    return max(sharded.min_units_per_shard, settings.min_units_per_shard.get(kind, 0))


def plan(session: Session, run_id: str, kind: str, raw_params: dict[str, Any], free: int,
         now: datetime, task_id: str) -> int:
    """Cut a queued run into shards when it pays (inside the dispatcher's transaction).

    Returns the number of shards written (0: the run runs whole, nothing written).
    """
    smallest = min_units(kind)
    if smallest is None or free < 2:
        return 0
    from latent_atlas.analyses import get_kind

    sharded = get_shardable(kind)
    try:
        params = get_kind(kind).params.model_validate(raw_params)
        total = sharded.work_units(params)
        n = shard_count(total, free, smallest)
        specs = sharded.split(params, n) if n > 1 else []
    except Exception:  # the worker reports bad params as the run's failure
        log.exception("run %s: could not plan shards; it runs whole", run_id)
        return 0
    if len(specs) < 2:
        return 0
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.queued.value, Run.dispatched_at.is_(None),
               Run.cancel_requested.is_(False))
        .values(status=RunStatus.running.value, attempts=Run.attempts + 1, started_at=now, heartbeat_at=now,
                dispatched_at=now, task_id=task_id, worker=f"{len(specs)} shards", progress=0.0,
                stage=f"shards: 0/{len(specs)} done")
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return 0
    for spec in specs:
        session.add(RunShard(run_id=run_id, idx=int(spec["index"]), count=len(specs),
                             units=shard_units(kind, params, spec, total), spec=spec,
                             status=ShardStatus.queued.value, task_id=f"{task_id}.{spec['index']}"))
    session.flush()
    return len(specs)


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=get_settings().stale_after)


def claim(run_id: str, idx: int, worker: str, pid: int | None = None,
          now: datetime | None = None) -> ShardClaim | None:
    """Take shard ``idx`` of ``run_id`` for this worker, or None when it is not claimable."""
    settings = get_settings()
    now = now or utcnow()
    run_ok = exists().where(Run.id == run_id, Run.status == RunStatus.running.value,
                            Run.cancel_requested.is_(False))
    claimable = or_(
        RunShard.status == ShardStatus.queued.value,
        and_(RunShard.status == ShardStatus.running.value,
             or_(RunShard.heartbeat_at.is_(None), RunShard.heartbeat_at < _stale_before(now)),
             RunShard.attempts < settings.max_attempts),
    )
    with session_scope() as session:
        previous = session.execute(
            select(RunShard.status, RunShard.started_at, RunShard.heartbeat_at)
            .where(RunShard.run_id == run_id, RunShard.idx == idx)
        ).one_or_none()
        if previous is None:
            return None
        values: dict[str, Any] = dict(status=ShardStatus.running.value, attempts=RunShard.attempts + 1,
                                      worker=worker, pid=pid, started_at=now, heartbeat_at=now, progress=0.0,
                                      stage="starting", error=None)
        if previous.status == ShardStatus.running.value and previous.started_at is not None:
            # the stale attempt's device time up to its last beat counts for the owner
            last = previous.heartbeat_at or previous.started_at
            values["gpu_s"] = RunShard.gpu_s + max(0.0, (last - previous.started_at).total_seconds())
        result = session.execute(
            update(RunShard)
            .where(RunShard.run_id == run_id, RunShard.idx == idx, claimable, run_ok)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        row = session.execute(
            select(RunShard.attempts, RunShard.count, RunShard.spec, Run.kind, Run.params)
            .join(Run, Run.id == RunShard.run_id)
            .where(RunShard.run_id == run_id, RunShard.idx == idx)
        ).one()
    return ShardClaim(run_id, idx, row.count, row.attempts, row.kind, row.params, row.spec)


def _owned(run_id: str, idx: int, attempt: int):
    return and_(RunShard.run_id == run_id, RunShard.idx == idx, RunShard.status == ShardStatus.running.value,
                RunShard.attempts == attempt,
                exists().where(Run.id == run_id, Run.status == RunStatus.running.value))


def _update_owned(run_id: str, idx: int, attempt: int, **values: Any) -> bool:
    with session_scope() as session:
        result = session.execute(
            update(RunShard).where(_owned(run_id, idx, attempt)).values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def heartbeat(run_id: str, idx: int, attempt: int) -> bool:
    return _update_owned(run_id, idx, attempt, heartbeat_at=utcnow())


def set_device(run_id: str, idx: int, attempt: int, device: str) -> None:
    _update_owned(run_id, idx, attempt, device=device[:100])


def _refresh_run(session: Session, run_id: str, now: datetime) -> None:
    """The run's progress (work-unit-weighted mean of its shards'), stage and heartbeat."""
    rows = session.execute(
        select(RunShard.units, RunShard.progress, RunShard.status).where(RunShard.run_id == run_id)
    ).all()
    total = sum(r.units for r in rows) or 1
    done = sum(1 for r in rows if r.status == ShardStatus.succeeded.value)
    progress = sum(r.units * (1.0 if r.status == ShardStatus.succeeded.value else r.progress) for r in rows) / total
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.stage != MERGING)
        .values(progress=min(progress, 0.999), heartbeat_at=now, stage=f"shards: {done}/{len(rows)} done")
        .execution_options(synchronize_session=False)
    )


def report_progress(run_id: str, idx: int, attempt: int, fraction: float, stage: str) -> None:
    """Record a shard's progress; raise ``Cancelled`` (cancel asked) or ``LostOwnership``."""
    from workers.lifecycle import LostOwnership

    fraction = min(max(float(fraction), 0.0), 1.0)
    now = utcnow()
    with session_scope() as session:
        cancel = session.execute(select(Run.cancel_requested).where(Run.id == run_id)).scalar_one_or_none()
        if cancel:
            raise Cancelled()
        result = session.execute(
            update(RunShard).where(_owned(run_id, idx, attempt))
            .values(progress=fraction, stage=stage[:200], heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise LostOwnership(f"{run_id}#{idx}")
        _refresh_run(session, run_id, now)


def part_dir(run_id: str, idx: int, attempt: int) -> str:
    return f"shards/{run_id}/{idx}.{attempt}"


def save_part(run_id: str, idx: int, attempt: int, part: ShardResult, store: ArtifactStore | None = None) -> str:
    """Store a shard's part as ``.npy`` files + ``summary.json``; returns its location (under the store root)."""
    store = store or ArtifactStore()
    where = part_dir(run_id, idx, attempt)
    directory = f"{store.root}/{where}"
    store.fs.makedirs(directory, exist_ok=True)
    names = sorted(part.arrays)
    for i, name in enumerate(names):
        with store.fs.open(f"{directory}/{i}.npy", "wb") as handle:
            np.lib.format.write_array(handle, np.ascontiguousarray(part.arrays[name]), allow_pickle=False)
    with store.fs.open(f"{directory}/summary.json", "w") as handle:  # written last: the part is complete
        json.dump({"arrays": names, "summary": part.summary}, handle)
    return where


def load_part(where: str, store: ArtifactStore | None = None) -> ShardResult:
    store = store or ArtifactStore()
    directory = f"{store.root}/{where}"
    with store.fs.open(f"{directory}/summary.json", "r") as handle:
        meta = json.load(handle)
    arrays = {}
    for i, name in enumerate(meta["arrays"]):
        with store.fs.open(f"{directory}/{i}.npy", "rb") as handle:
            arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
    return ShardResult(arrays=arrays, summary=meta["summary"])


def clear_parts(run_id: str, store: ArtifactStore | None = None) -> None:
    store = store or ArtifactStore()
    directory = f"{store.root}/shards/{run_id}"
    try:
        if store.fs.exists(directory):
            store.fs.rm(directory, recursive=True)
    except Exception:  # leftover parts cost disk space only
        log.warning("could not remove shard parts in %s", directory, exc_info=True)


def _attempt_seconds(session: Session, run_id: str, idx: int, now: datetime) -> float:
    started = session.execute(
        select(RunShard.started_at).where(RunShard.run_id == run_id, RunShard.idx == idx)
    ).scalar_one_or_none()
    return max(0.0, (now - started).total_seconds()) if started else 0.0


def succeed(run_id: str, idx: int, attempt: int, where: str) -> bool | None:
    """Flip the shard to succeeded (its part stored at ``where``).

    Returns None when the shard was no longer ours, else whether every shard
    of the run has now succeeded (then the caller merges).
    """
    now = utcnow()
    with session_scope() as session:
        seconds = _attempt_seconds(session, run_id, idx, now)
        result = session.execute(
            update(RunShard).where(_owned(run_id, idx, attempt))
            .values(status=ShardStatus.succeeded.value, progress=1.0, stage="done", finished_at=now,
                    heartbeat_at=now, result_uri=where, gpu_s=RunShard.gpu_s + seconds)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        _refresh_run(session, run_id, now)
        left = session.scalar(
            select(func.count()).select_from(RunShard)
            .where(RunShard.run_id == run_id, RunShard.status != ShardStatus.succeeded.value)
        )
    return left == 0


def end_run(run_id: str, status: str, *, error: str | None = None, shard: tuple[int, int] | None = None,
            shard_status: str | None = None, traceback_text: str | None = None) -> bool:
    """End a running sharded run as ``status`` (failed or cancelled) and every shard still active.

    With ``shard`` = (idx, attempt), that shard (if still ours) ends as
    ``shard_status`` with ``error``. One transaction; False if the run was no
    longer running (someone else ended it).
    """
    now = utcnow()
    with session_scope() as session:
        values: dict[str, Any] = {"status": status, "stage": status, "finished_at": now}
        if error is not None:
            values.update(error=error[:4000], traceback=traceback_text)
        result = session.execute(
            update(Run).where(Run.id == run_id, Run.status == RunStatus.running.value).values(**values)
            .execution_options(synchronize_session=False)
        )
        if shard is not None:
            idx, attempt = shard
            seconds = _attempt_seconds(session, run_id, idx, now)
            session.execute(
                update(RunShard)
                .where(RunShard.run_id == run_id, RunShard.idx == idx, RunShard.attempts == attempt,
                       RunShard.status == ShardStatus.running.value)
                .values(status=shard_status or status, finished_at=now, stage=shard_status or status,
                        error=error[:4000] if error else None, gpu_s=RunShard.gpu_s + seconds)
                .execution_options(synchronize_session=False)
            )
        for row in session.execute(
            select(RunShard.idx, RunShard.status, RunShard.started_at, RunShard.heartbeat_at)
            .where(RunShard.run_id == run_id, RunShard.status.in_(SHARD_ACTIVE))
        ).all():
            extra: dict[str, Any] = {}
            if row.status == ShardStatus.running.value and row.started_at is not None:
                last = row.heartbeat_at or row.started_at
                extra["gpu_s"] = RunShard.gpu_s + max(0.0, (last - row.started_at).total_seconds())
            session.execute(
                update(RunShard)
                .where(RunShard.run_id == run_id, RunShard.idx == row.idx, RunShard.status.in_(SHARD_ACTIVE))
                .values(status=ShardStatus.cancelled.value, stage="cancelled", finished_at=now, **extra)
                .execution_options(synchronize_session=False)
            )
        ended = result.rowcount == 1
    if ended:
        clear_parts(run_id)
    return ended


def claim_merge(run_id: str, now: datetime | None = None) -> tuple[int, str, dict[str, Any]] | None:
    """Take the merge of ``run_id``: (merge attempt, kind, params), or None.

    Succeeds once: when the run is running, every shard succeeded and nobody
    is merging (or the merger's heartbeat went stale).
    """
    now = now or utcnow()
    not_all_done = exists().where(RunShard.run_id == run_id, RunShard.status != ShardStatus.succeeded.value)
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.cancel_requested.is_(False),
                   has_shards(), ~not_all_done,
                   or_(Run.stage != MERGING, Run.heartbeat_at.is_(None), Run.heartbeat_at < _stale_before(now)))
            .values(attempts=Run.attempts + 1, stage=MERGING, heartbeat_at=now, progress=0.999)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        row = session.execute(select(Run.attempts, Run.kind, Run.params).where(Run.id == run_id)).one()
    return row.attempts, row.kind, row.params


def parts_of(run_id: str) -> list[str]:
    """The stored parts of a run's shards, in shard order."""
    with session_scope() as session:
        return list(session.execute(
            select(RunShard.result_uri).where(RunShard.run_id == run_id).order_by(RunShard.idx)
        ).scalars())


def mark_lost(run_id: str, idx: int, worker: str, pid: int | None, reason: str) -> str | None:
    """The process running shard ``idx`` died: make the shard claimable at once (heartbeat cleared).

    Out of attempts: the run fails. Returns the shard's status afterwards, or None if nothing changed.
    """
    settings = get_settings()
    with session_scope() as session:
        row = session.execute(
            select(RunShard.attempts, RunShard.started_at, RunShard.heartbeat_at)
            .where(RunShard.run_id == run_id, RunShard.idx == idx, RunShard.worker == worker,
                   RunShard.status == ShardStatus.running.value,
                   *([RunShard.pid == pid] if pid is not None else []))
        ).one_or_none()
    if row is None:
        return None
    if row.attempts >= settings.max_attempts:
        end_run(run_id, RunStatus.failed.value, shard=(idx, row.attempts), shard_status=ShardStatus.failed.value,
                error=f"shard {idx}: the worker was lost {row.attempts} times (last: {reason}); giving up")
        return ShardStatus.failed.value
    now = utcnow()
    last = row.heartbeat_at or row.started_at or now
    seconds = max(0.0, (last - (row.started_at or last)).total_seconds())
    with session_scope() as session:
        result = session.execute(
            update(RunShard)
            .where(RunShard.run_id == run_id, RunShard.idx == idx, RunShard.attempts == row.attempts,
                   RunShard.status == ShardStatus.running.value)
            .values(heartbeat_at=None, stage=f"worker lost ({reason[:120]}); retrying",
                    gpu_s=RunShard.gpu_s + seconds, started_at=None)
            .execution_options(synchronize_session=False)
        )
    return ShardStatus.running.value if result.rowcount == 1 else None


def shard_rows(session: Session, run_id: str) -> list[RunShard]:
    return list(session.execute(select(RunShard).where(RunShard.run_id == run_id).order_by(RunShard.idx)).scalars())
