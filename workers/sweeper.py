"""The sweeper: every accepted run ends in exactly one terminal state.

* A running run whose heartbeat is older than ``stale_after``, or cleared
  (``lifecycle.mark_worker_lost``: Celery reported the process dead), lost its worker:
  if cancel was requested it becomes ``cancelled``; after ``max_attempts`` it
  becomes ``failed``; otherwise it is re-dispatched and the next claim takes it
  over with attempt + 1 (the claim accepts a stale running run).
* A queued run of an ungated queue never dispatched (broker was down), or a
  queued run of any queue dispatched longer than ``redispatch_after`` ago, is
  sent again (a gpu run so re-sent keeps the slot it holds). Duplicate
  messages are harmless: the claim lets exactly one through.
* A queued gpu run never dispatched is the dispatcher's: every sweep ends with
  ``dispatch_pending`` (the catch-all trigger), which sends as many as there
  are free slots, in fair-share order; never-dispatched gpu runs are not sent
  blindly.
* A sharded run is swept shard by shard (``sweep_shards``): a stale shard is
  re-sent alone (at most once per ``stale_after``; its claim takes it over
  with attempt + 1, or the run fails when the shard is out of attempts); a
  shard never delivered is re-sent after ``redispatch_after``; a run whose
  cancel was asked and whose shards all went quiet is cancelled; a run whose
  shards all succeeded but that nobody merges (the merger died) is nudged.
Every change is a conditional UPDATE, so several sweepers may run at once; a
run ended here closes its open attempt record as ``lost`` and loses its saved
pieces of work (``workers.checkpoints``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update

from latent_atlas.settings import get_settings
from models import Run, RunStatus, session_scope
from models.base import utcnow
from models.run import AttemptOutcome, RunAttempt
from workers import shards, worker_registry
from workers.checkpoints import StoreCheckpoint
from workers.dispatch import GATED_QUEUE, dispatch, dispatch_pending

log = logging.getLogger(__name__)

@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)  # gpu runs sent by the dispatcher

def _is_stale(stale_before: datetime):
    return or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < stale_before)


def _finalise_stale(run_id: str, attempts: int, stale_before: datetime, **values) -> bool:
    now = utcnow()
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.status == RunStatus.running.value,
                Run.attempts == attempts,
                _is_stale(stale_before),
            )
            .values(finished_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return False
        session.execute(
            update(RunAttempt)
            .where(RunAttempt.run_id == run_id, RunAttempt.outcome.is_(None))
            .values(outcome=AttemptOutcome.lost.value, finished_at=now,
                    error="no heartbeat; the sweeper ended the run")
            .execution_options(synchronize_session=False)
        )
    StoreCheckpoint(run_id).clear()  # the run has ended: no attempt will resume it
    return True

def sweep(now: datetime | None = None) -> SweepReport:
    settings = get_settings()
    now = now or utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after)
    redispatch_before = now - timedelta(seconds=settings.redispatch_after)
    report = SweepReport()
    with session_scope() as session:
        stale = session.execute(
            select(Run.id, Run.attempts, Run.cancel_requested, Run.queue, Run.dispatched_at).where(
                Run.status == RunStatus.running.value, _is_stale(stale_before),
                ~shards.has_shards(),  # a sharded run's shards are swept one by one (sweep_shards)
            )
        ).all()
        undelivered = session.execute(
            select(Run.id, Run.queue, Run.dispatched_at).where(
                Run.status == RunStatus.queued.value,
                or_(Run.dispatched_at.is_(None), Run.dispatched_at < redispatch_before),
            )
        ).all()
    for row in stale:
        if row.cancel_requested:
            if _finalise_stale(row.id, row.attempts, stale_before,
                               status=RunStatus.cancelled.value, stage="cancelled"):
                report.cancelled.append(row.id)
        elif row.attempts >= settings.max_attempts:
            message = f"the worker was lost {row.attempts} times while running this job; giving up"
            if _finalise_stale(row.id, row.attempts, stale_before,
                               status=RunStatus.failed.value, stage="failed", error=message):
                report.failed.append(row.id)
        elif row.dispatched_at is None or row.dispatched_at < stale_before:
            # Re-dispatch at most once per stale period; the next claim takes it over.
            if dispatch(row.id, row.queue):
                report.redispatched.append(row.id)
    for row in undelivered:
        if row.queue == GATED_QUEUE and row.dispatched_at is None:
            continue  # not sent yet: the dispatcher decides when, below
        if dispatch(row.id, row.queue):
            report.redispatched.append(row.id)
    sweep_shards(now, report)
    report.dispatched = dispatch_pending(now)
    if report.redispatched or report.failed or report.cancelled or report.dispatched:
        log.info("sweep: %s", report)
    return report

def _sent_at(task_id: str | None, fallback: datetime | None) -> datetime | None:
    """When a shard's message was last (re-)sent: the sweeper's re-sends carry the time in the task id."""
    part = (task_id or "").split(".")
    if len(part) >= 3 and part[1].startswith("r") and part[1][1:].isdigit():
        return datetime.fromtimestamp(int(part[1][1:]), tz=UTC)
    return fallback


def sweep_shards(now: datetime, report: SweepReport) -> None:
    from models import RunShard, ShardStatus
    from workers.celery_app import MERGE_TASK, app, send_shard

    settings = get_settings()
    stale_before = now - timedelta(seconds=settings.stale_after)
    redispatch_before = now - timedelta(seconds=settings.redispatch_after)
    with session_scope() as session:
        rows = session.execute(
            select(RunShard.run_id, RunShard.idx, RunShard.status, RunShard.attempts, RunShard.heartbeat_at,
                   RunShard.task_id, Run.queue, Run.dispatched_at, Run.cancel_requested, Run.stage,
                   Run.heartbeat_at.label("run_beat"))
            .join(Run, Run.id == RunShard.run_id)
            .where(Run.status == RunStatus.running.value)
        ).all()
    by_run: dict[str, list] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    for run_id, items in by_run.items():
        first = items[0]
        quiet = all(r.status != ShardStatus.running.value or r.heartbeat_at is None or r.heartbeat_at < stale_before
                    for r in items)
        if first.cancel_requested:
            if quiet and shards.end_run(run_id, RunStatus.cancelled.value):
                StoreCheckpoint(run_id).clear()
                report.cancelled.append(run_id)
            continue
        if all(r.status == ShardStatus.succeeded.value for r in items):
            merging = first.stage == shards.MERGING
            if not merging or first.run_beat is None or first.run_beat < stale_before:
                app.send_task(MERGE_TASK, args=[run_id], queue=first.queue)  # the claim lets one merger through
                report.redispatched.append(f"{run_id}:merge")
            continue
        for row in items:
            sent = _sent_at(row.task_id, first.dispatched_at)
            if row.status == ShardStatus.running.value and (row.heartbeat_at is None
                                                              or row.heartbeat_at < stale_before):
                if row.attempts >= settings.max_attempts:
                    if shards.end_run(run_id, RunStatus.failed.value, shard=(row.idx, row.attempts),
                                      shard_status=ShardStatus.failed.value,
                                      error=f"shard {row.idx + 1}/{len(items)}: the worker was lost "
                                            f"{row.attempts} times; giving up"):
                        report.failed.append(run_id)
                    break
                due = sent is None or sent < stale_before
            elif row.status == ShardStatus.queued.value:
                due = sent is None or sent < redispatch_before
            else:
                continue
            if due and _mark_resent(run_id, row.idx, row.task_id, now):
                send_shard(run_id, row.idx, row.queue)
                report.redispatched.append(f"{run_id}#{row.idx}")


def _mark_resent(run_id: str, idx: int, old_task_id: str | None, now: datetime) -> bool:
    """Compare-and-set the shard's task id to one carrying ``now``: one sweeper re-sends it."""
    from models import RunShard

    with session_scope() as session:
        result = session.execute(
            update(RunShard)
            .where(RunShard.run_id == run_id, RunShard.idx == idx,
                   RunShard.task_id == old_task_id if old_task_id is not None else RunShard.task_id.is_(None))
            .values(task_id=f"{run_id}.r{int(now.timestamp())}.{idx}")
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


class SweeperThread(threading.Thread):
    """Runs ``sweep`` every ``sweep_every`` seconds in a worker's main process.

    With ``worker`` (this worker's registry entry) each round first refreshes
    the worker's row in the registry (``workers.worker_registry``), so its slots
    count while it lives, and removes rows of long-dead workers.
    """

    def __init__(self, worker: worker_registry.WorkerInfo | None = None) -> None:
        super().__init__(name="atlas-sweeper", daemon=True)
        self._stop_event = threading.Event()
        self.worker = worker

    def run(self) -> None:
        every = get_settings().sweep_every
        while not self._stop_event.wait(every):
            try:
                if self.worker is not None:
                    worker_registry.register(self.worker)
                    worker_registry.prune()
                sweep()
            except Exception:
                log.exception("sweep failed; trying again in %s s", every)

    def stop(self) -> None:
        self._stop_event.set()
