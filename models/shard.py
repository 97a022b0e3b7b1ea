"""One shard of a run split across workers (``workers.shards``).

Invariants:

* a run has either no shards (it runs whole) or ``count`` rows, ``idx`` 0..count-1,
  written in the transaction that dispatches it; they are never re-cut;
* ``status`` moves queued -> running -> {succeeded, failed, cancelled}, or
  running -> running (a stale shard taken over, ``attempts`` + 1), or
  queued/running -> cancelled when the run ends otherwise;
* a worker owns a shard while it is ``running`` at the attempt its claim
  produced, and the run is ``running``; every write of a shard's worker is
  conditioned on both;
* ``result_uri`` (set with ``succeeded``) names the stored part under the
  artifact store root: ``shards/<run id>/<idx>.<attempt>/`` (``.npy`` arrays
  + ``summary.json``, never a pickle);
* ``gpu_s`` adds up the device time of every ended attempt (fair share).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime


class ShardStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


SHARD_ACTIVE = (ShardStatus.queued.value, ShardStatus.running.value)


class RunShard(Base):
    __tablename__ = "run_shards"
    __table_args__ = (UniqueConstraint("run_id", "idx", name="uq_run_shards_run_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(BigInteger)  # the shard's work units (progress weight)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=ShardStatus.queued.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # this attempt's start
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    gpu_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    stage: Mapped[str] = mapped_column(String(200), default="queued", server_default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_uri: Mapped[str | None] = mapped_column(String(500), nullable=True)
