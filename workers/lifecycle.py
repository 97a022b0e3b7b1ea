"""State changes of a run, each one conditional UPDATE.

Invariants:

* Ownership: a worker owns a run while ``status == 'running'`` and ``attempts``
  equals the attempt number its claim produced. Every write of a worker is
  conditioned on both, so a worker that lost the run (cancelled, reaped, taken
  over after a stale heartbeat) can no longer change it: its writes match no row
  and it learns that it lost (``LostOwnership``).
* A claim succeeds for exactly one caller: queued -> running, or running with a
  stale heartbeat -> running with attempt + 1 (while attempts < max_attempts).
* ``finish`` records the artifacts and flips the status to ``succeeded`` in one
  transaction; if the status flip matches no row the artifacts are not recorded.
* Attempts: a claim keeps the run's first ``started_at`` and inserts a
  ``RunAttempt`` row in the same transaction (closing an earlier attempt that
  is still open as ``lost``); every terminal write of a worker closes its
  attempt's row with the outcome in the transaction that changes the run.
* A worker process that died (``mark_worker_lost``, called by the worker's main
  process when Celery reports the child lost) closes its attempt as ``lost``
  and clears the heartbeat, which makes the run claimable at once: the
  redelivered message retries it without waiting ``stale_after``. A run out of
  attempts fails there and then; one whose cancel was requested is cancelled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from latent_atlas.analyses import Cancelled
from latent_atlas.settings import get_settings
from models import Artifact, Run, RunShard, RunStatus, session_scope
from models.base import utcnow
from models.run import AttemptOutcome, RunAttempt
from models.store import StoredArray


class LostOwnership(Exception):
    """The run is no longer this worker's (reaped, taken over or finished)."""


@dataclass(frozen=True)
class Claim:
    run_id: str
    attempt: int
    kind: str
    params: dict[str, Any]
    queue: str = "gpu"


def _owned(run_id: str, attempt: int):
    return and_(Run.id == run_id, Run.status == RunStatus.running.value, Run.attempts == attempt)


def _close_attempt(session: Session, run_id: str, attempt: int, outcome: AttemptOutcome,
                   error: str | None = None, now: datetime | None = None) -> None:
    """End attempt ``attempt`` of ``run_id`` (and any earlier one still open) with ``outcome``."""
    now = now or utcnow()
    session.execute(
        update(RunAttempt)
        .where(RunAttempt.run_id == run_id, RunAttempt.attempt == attempt, RunAttempt.outcome.is_(None))
        .values(outcome=outcome.value, finished_at=now, error=error[:4000] if error else None)
        .execution_options(synchronize_session=False)
    )


def claim(run_id: str, worker: str, now: datetime | None = None, pid: int | None = None) -> Claim | None:
    """Take ``run_id`` for this worker (process ``pid``), or return None when someone else has it."""
    settings = get_settings()
    now = now or utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after)
    claimable = or_(
        Run.status == RunStatus.queued.value,
        and_(
            Run.status == RunStatus.running.value,
            or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < stale_before),
            Run.attempts < settings.max_attempts,
        ),
    )
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.cancel_requested.is_(False), claimable,
                   ~exists().where(RunShard.run_id == Run.id))  # a sharded run is never claimed whole
            .values(
                status=RunStatus.running.value,
                attempts=Run.attempts + 1,
                heartbeat_at=now,
                started_at=func.coalesce(Run.started_at, now),  # the first attempt's start stays
                worker=worker,
                progress=0.0,
                stage="starting",
                error=None,
                traceback=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        row = session.execute(
            select(Run.attempts, Run.kind, Run.params, Run.queue).where(Run.id == run_id)
        ).one()
        # An earlier attempt still open was taken over after its heartbeat went stale.
        session.execute(
            update(RunAttempt)
            .where(RunAttempt.run_id == run_id, RunAttempt.attempt < row.attempts,
                   RunAttempt.outcome.is_(None))
            .values(outcome=AttemptOutcome.lost.value, finished_at=now,
                    error=f"no heartbeat for over {settings.stale_after:g} s; taken over")
            .execution_options(synchronize_session=False)
        )
        session.add(RunAttempt(run_id=run_id, attempt=row.attempts, worker=worker, pid=pid,
                               started_at=now))
    return Claim(run_id=run_id, attempt=row.attempts, kind=row.kind, params=row.params, queue=row.queue)


def _update_owned(run_id: str, attempt: int, outcome: AttemptOutcome | None = None,
                  attempt_error: str | None = None, **values: Any) -> bool:
    """Write ``values`` while the run is ours; with ``outcome``, close the attempt too."""
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(_owned(run_id, attempt))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return False
        if outcome is not None:
            _close_attempt(session, run_id, attempt, outcome, attempt_error)
        return True


def heartbeat(run_id: str, attempt: int) -> bool:
    """Refresh the heartbeat; False when the run is no longer ours."""
    return _update_owned(run_id, attempt, heartbeat_at=utcnow())


def report_progress(run_id: str, attempt: int, fraction: float, stage: str) -> None:
    """Record progress; raise ``Cancelled`` or ``LostOwnership`` when we must stop."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(_owned(run_id, attempt), Run.cancel_requested.is_(False))
            .values(progress=fraction, stage=stage[:200], heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            return
        cancel = session.execute(
            select(Run.cancel_requested).where(_owned(run_id, attempt))
        ).scalar_one_or_none()
    if cancel:
        raise Cancelled()
    raise LostOwnership(run_id)


def set_device(run_id: str, attempt: int, device: str) -> None:
    if _update_owned(run_id, attempt, device=device):
        with session_scope() as session:
            session.execute(
                update(RunAttempt)
                .where(RunAttempt.run_id == run_id, RunAttempt.attempt == attempt)
                .values(device=device)
                .execution_options(synchronize_session=False)
            )


def finish(
    run_id: str,
    attempt: int,
    stored: dict[str, StoredArray],
    summary: dict[str, Any],
    timings: dict[str, float],
    environment: dict[str, Any],
) -> bool:
    """Record artifacts and mark the run succeeded, atomically. False if not ours."""
    now = utcnow()
    with session_scope() as session:
        result = session.execute(
            update(Run)
            .where(_owned(run_id, attempt))
            .values(
                status=RunStatus.succeeded.value,
                progress=1.0,
                stage="done",
                finished_at=now,
                heartbeat_at=now,
                summary=summary,
                timings=timings,
                environment=environment,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.rollback()
            return False
        _close_attempt(session, run_id, attempt, AttemptOutcome.succeeded, now=now)
        for name, item in stored.items():
            session.add(
                Artifact(
                    run_id=run_id,
                    name=name,
                    uri=item.uri,
                    dtype=item.dtype,
                    shape=list(item.shape),
                    nbytes=item.nbytes,
                    sha256=item.sha256,
                )
            )
    return True


def fail(
    run_id: str,
    attempt: int,
    error: str,
    traceback_text: str | None = None,
    timings: dict[str, float] | None = None,
) -> bool:
    values: dict[str, Any] = {
        "status": RunStatus.failed.value,
        "error": error[:4000],
        "traceback": traceback_text,
        "finished_at": utcnow(),
        "stage": "failed",
    }
    if timings is not None:
        values["timings"] = timings
    return _update_owned(run_id, attempt, outcome=AttemptOutcome.failed, attempt_error=error, **values)


def mark_cancelled(run_id: str, attempt: int) -> bool:
    return _update_owned(
        run_id, attempt, outcome=AttemptOutcome.cancelled,
        status=RunStatus.cancelled.value, finished_at=utcnow(), stage="cancelled",
    )


WORKER_LOST_STAGE = "worker lost; retrying"


def mark_worker_lost(run_id: str, worker: str, pid: int | None, reason: str) -> str | None:
    """The worker process ``pid`` of ``worker`` died while running ``run_id``.

    Closes that process's open attempt as ``lost`` and, if the run is still at
    that attempt, makes it claimable at once (heartbeat cleared, stage
    ``WORKER_LOST_STAGE``), or ends it: ``cancelled`` when cancel was
    requested, ``failed`` after ``max_attempts``. Returns the run's new status,
    or None when no open attempt of that process exists (nothing changed).
    """
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        found = select(RunAttempt.attempt).where(
            RunAttempt.run_id == run_id, RunAttempt.worker == worker, RunAttempt.outcome.is_(None)
        )
        if pid is not None:
            found = found.where(RunAttempt.pid == pid)
        attempt = session.execute(found.order_by(RunAttempt.attempt.desc())).scalars().first()
        if attempt is None:
            return None
        row = session.execute(
            select(Run.attempts, Run.cancel_requested).where(_owned(run_id, attempt))
        ).one_or_none()
        if row is None:  # the run moved on (taken over or ended): only the attempt's record is closed
            _close_attempt(session, run_id, attempt, AttemptOutcome.lost, reason, now)
            return None
        if row.cancel_requested:
            values: dict[str, Any] = {"status": RunStatus.cancelled.value, "stage": "cancelled",
                                      "finished_at": now}
        elif row.attempts >= settings.max_attempts:
            values = {"status": RunStatus.failed.value, "stage": "failed", "finished_at": now,
                      "error": f"the worker was lost {row.attempts} times while running this job "
                               f"(last: {reason}); giving up"}
        else:
            values = {"heartbeat_at": None, "stage": WORKER_LOST_STAGE}
        result = session.execute(
            update(Run).where(_owned(run_id, attempt)).values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        _close_attempt(session, run_id, attempt, AttemptOutcome.lost, reason, now)
        return values.get("status", RunStatus.running.value)


class Heartbeat:
    """A daemon thread that refreshes the heartbeat while a run executes.

    It beats independently of batches, so a long batch (or a model load) never
    looks stale. ``lost`` is set when a beat finds the run no longer ours.
    """

    def __init__(self, run_id: str, attempt: int, every: float) -> None:
        self.run_id, self.attempt, self.every = run_id, attempt, every
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not heartbeat(self.run_id, self.attempt):
                    self.lost.set()
                    return
            except Exception:  # a database hiccup: try again next beat
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)
