"""Hand queued runs to the broker. The run row is written before the message.

If the broker is down the run stays queued with no dispatch time, and the
dispatcher or the sweeper sends it once the broker is back: nothing accepted
is lost.

The ``gpu`` queue is gated (``dispatch_pending``): the database is the queue,
and a run is sent only when a worker slot is free, the next one in fair-share
order (``workers.queue_plan.gpu_queue``), so the order is decided when a slot
frees, not at submit time. Invariants:

* in flight = gpu runs ``running`` or ``queued`` with ``dispatched_at`` set;
  slots = summed concurrency of live workers listening to ``gpu``; at most
  ``slots - in_flight`` runs are marked dispatched per call.
* The count and the marking happen in one transaction holding the dispatch
  lock (an UPDATE of ``dispatch_lock`` row 1: a row lock on PostgreSQL, the
  write lock on SQLite), so concurrent dispatchers never over-fill the slots.
  Messages are sent after the commit; a send that fails clears
  ``dispatched_at`` again, which frees the slot.
* A run of a shardable kind with enough work units, reached while >= 2
  slots are free, is split into shards (``workers.shards.plan``, in the same
  locked transaction) that take that many slots; its shards are sent as one
  chord (``celery_app.send_shards``). Sharding off (``sharding.enabled``)
  or one free slot: it runs whole.
* Triggers: a submission (web), a terminal write of a worker (same process,
  right after it), a worker's start, and every sweep. Queues ``cpu`` and
  ``interactive`` are not gated: their runs are sent at submit.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import func, select, update

from models import DispatchLock, Run, RunStatus, session_scope
from models.base import utcnow
from models.dispatch import DISPATCH_LOCK_ID
from workers.celery_app import EXECUTE_TASK, app, send_shards

log = logging.getLogger(__name__)


GATED_QUEUE = "gpu"


def _new_task_id(run_id: str) -> str:
    return f"{run_id}.{uuid.uuid4().hex[:8]}"


def _send(run_id: str, queue: str, task_id: str) -> bool:
    """Send the message of a run already marked dispatched; on failure unmark it."""
    try:
        app.send_task(EXECUTE_TASK, args=[run_id], queue=queue, task_id=task_id)
        return True
    except Exception:
        log.exception("broker unavailable: run %s stays queued for the sweeper", run_id)
        with session_scope() as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.task_id == task_id)
                .values(dispatched_at=None)
                .execution_options(synchronize_session=False)
            )
        return False


def dispatch(run_id: str, queue: str) -> bool:
    """Send the run's task now, whatever the slots; True when the broker accepted it.

    For ungated queues, and to re-send a gpu run that already holds its slot
    (running with a stale heartbeat, or a message presumed lost).
    """
    task_id = _new_task_id(run_id)
    with session_scope() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
            .values(dispatched_at=utcnow(), task_id=task_id)
            .execution_options(synchronize_session=False)
        )
    return _send(run_id, queue, task_id)


def dispatch_submitted(run_id: str, queue: str) -> None:
    """After a submission: an ungated run is sent at once; the gated queue is refilled."""
    if queue == GATED_QUEUE:
        dispatch_pending()
    else:
        dispatch(run_id, queue)


def _take_lock(session, now: datetime) -> None:
    result = session.execute(
        update(DispatchLock).where(DispatchLock.id == DISPATCH_LOCK_ID).values(taken_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # a database created without migration 0005's row
        session.add(DispatchLock(id=DISPATCH_LOCK_ID, taken_at=now))
        session.flush()


def dispatch_pending(now: datetime | None = None) -> list[str]:
    """Fill the gpu queue's free slots with the next runs in fair-share order.

    Returns the IDs whose messages the broker accepted. Safe to call from any
    process at any time; never raises for a broker that is down.
    """
    from workers import shards
    from workers.queue_plan import gpu_queue

    now = now or utcnow()
    chosen: list[tuple[str, str]] = []
    sharded: list[tuple[str, int, str]] = []  # run id, shard count, task id
    with session_scope() as session:  # no lock (no write) when nothing waits: the usual sweep
        waiting = session.scalar(
            select(func.count()).select_from(Run)
            .where(Run.queue == GATED_QUEUE, Run.status == RunStatus.queued.value, Run.dispatched_at.is_(None))
        )
    if not waiting:
        return []
    with session_scope() as session:
        _take_lock(session, now)
        state = gpu_queue(session, now)
        free = state.free
        for run in state.ready:
            if free <= 0:
                break
            task_id = _new_task_id(run.run_id)
            if free >= 2:  # a big run of a shardable kind takes the free slots as shards
                kind, params = session.execute(select(Run.kind, Run.params).where(Run.id == run.run_id)).one()
                count = shards.plan(session, run.run_id, kind, params or {}, free, now, task_id)
                if count:
                    sharded.append((run.run_id, count, task_id))
                    free -= count
                    continue
            free -= 1
            result = session.execute(
                update(Run)
                .where(Run.id == run.run_id, Run.status == RunStatus.queued.value,
                       Run.dispatched_at.is_(None))
                .values(dispatched_at=now, task_id=task_id)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                chosen.append((run.run_id, task_id))
    sent = [run_id for run_id, task_id in chosen if _send(run_id, GATED_QUEUE, task_id)]
    for run_id, count, task_id in sharded:
        try:
            send_shards(run_id, count, GATED_QUEUE, task_id)
            sent.append(run_id)
        except Exception:  # its shards stay queued; the sweeper re-sends them
            log.exception("broker unavailable: the shards of run %s wait for the sweeper", run_id)
    if sent:
        log.info("dispatched %s", ", ".join(sent))
    return sent


def dispatch_pending_quietly() -> None:
    """``dispatch_pending`` for a trigger that must not fail (a worker after a run, a signal)."""
    try:
        dispatch_pending()
    except Exception:  # the next trigger (at the latest the next sweep) tries again
        log.exception("dispatch failed; the next sweep tries again")


def revoke(task_id: str | None) -> None:
    """Best effort: tell workers to drop a queued message (the claim no-ops anyway)."""
    if not task_id or app.conf.broker_url.startswith("sqla+"):
        return  # the SQL transport has no broadcast; the claim makes the message a no-op
    try:
        app.control.revoke(task_id)
    except Exception:
        log.warning("could not revoke task %s", task_id, exc_info=True)
