"""The registry of live Celery workers (``models.dispatch.WorkerSlot``).

Invariants: a worker's main process writes its row at start (``register``),
rewrites it every ``sweep_every`` seconds from the sweeper thread (so a row
deleted by mistake comes back) and deletes it at a clean shutdown
(``unregister``). A worker killed without shutdown leaves a row whose
heartbeat ages: it counts for nothing once older than ``live_window()``, and
the sweeper removes it after ``PRUNE_AFTER_S``. Celery is not imported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from latent_atlas.settings import get_settings
from models import WorkerSlot, session_scope
from models.base import utcnow

log = logging.getLogger(__name__)

PRUNE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class WorkerInfo:
    name: str  # the Celery node name, e.g. "gpu@host"
    queues: tuple[str, ...]
    concurrency: int
    hostname: str
    pid: int


def live_window() -> float:
    """Seconds after its last beat that a worker still counts: ``stale_after``, and at
    least three sweeps (a worker beats once per sweep)."""
    settings = get_settings()
    return max(settings.stale_after, 3 * settings.sweep_every)


def register(info: WorkerInfo, now: datetime | None = None) -> None:
    """Insert or refresh this worker's row (its heartbeat is ``now``)."""
    now = now or utcnow()
    values = {"queues": list(info.queues), "concurrency": int(info.concurrency),
              "hostname": info.hostname, "pid": info.pid, "heartbeat_at": now}
    for _ in range(2):  # an insert racing another insert of the same name becomes an update
        try:
            with session_scope() as session:
                result = session.execute(
                    update(WorkerSlot).where(WorkerSlot.name == info.name).values(**values)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 0:
                    session.add(WorkerSlot(name=info.name, started_at=now, **values))
            return
        except IntegrityError:
            continue


def unregister(name: str) -> None:
    with session_scope() as session:
        session.execute(delete(WorkerSlot).where(WorkerSlot.name == name)
                        .execution_options(synchronize_session=False))


def prune(now: datetime | None = None) -> int:
    """Remove rows of workers silent for ``PRUNE_AFTER_S``; returns how many."""
    before = (now or utcnow()) - timedelta(seconds=PRUNE_AFTER_S)
    with session_scope() as session:
        result = session.execute(delete(WorkerSlot).where(WorkerSlot.heartbeat_at < before)
                                 .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)
