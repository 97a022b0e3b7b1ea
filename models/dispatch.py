"""The dispatcher's tables: the registry of live workers and the dispatch lock.

Invariants:

* ``WorkerSlot``: one row per live Celery worker (its node name). The worker's
  main process upserts it at start, refreshes ``heartbeat_at`` every
  ``sweep_every`` seconds and deletes it at shutdown; a row whose heartbeat is
  older than ``stale_after`` is a dead worker and counts for nothing.
  The gpu queue's slots are the sum of ``concurrency`` of live rows whose
  ``queues`` include ``"gpu"``.
* ``DispatchLock``: one row (``id == 1``). ``workers.dispatcher`` holds it
  (``SELECT ... FOR UPDATE`` on PostgreSQL, SQLite's write lock taken by an
  UPDATE) from counting free slots until the chosen runs are marked
  dispatched, so two dispatchers never over-fill the slots.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow

DISPATCH_LOCK_ID = 1


class WorkerSlot(Base):
    __tablename__ = "worker_slots"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    hostname: Mapped[str] = mapped_column(String(200), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class DispatchLock(Base):
    __tablename__ = "dispatch_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
