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
Every change is a conditional UPDATE, so several sweepers may run at once; a
run ended here closes its open attempt record as ``lost`` and loses its saved
pieces of work (``workers.checkpoints``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from latent_atlas.settings import get_settings
from models import Run, RunStatus, session_scope
from models.base import utcnow
from models.run import AttemptOutcome, RunAttempt
from workers import worker_registry
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
                Run.status == RunStatus.running.value, _is_stale(stale_before)
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
    report.dispatched = dispatch_pending(now)
    if report.redispatched or report.failed or report.cancelled or report.dispatched:
        log.info("sweep: %s", report)
    return report

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
