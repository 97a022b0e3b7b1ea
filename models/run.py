"""Runs and their artifacts.

Invariants:

* ``status`` moves only queued -> running -> {succeeded, failed, cancelled}, or
  queued -> cancelled, or running -> running (a stale run taken over, attempt+1).
  Every change of status is one conditional UPDATE (see ``workers.lifecycle``),
  so two workers can never both own a run.
* A run is ``succeeded`` only in the same transaction that records its artifacts.
* ``params`` are the validated, normalised parameters (JSON); ``params_hash`` is
  the sha256 of their canonical JSON together with the kind, the model's
  catalogue identity and the digests of inputs kept outside the params
  (``webapp.reuse.key_params``): equal hashes mean a run may be reused.
* A deleted run keeps its row (``deleted_at``, ``deleted_by_id``) so its page
  can say so; its artifact rows go, and their files once no row refers to them.
  Renames, tags, notes, stars and deletion are each recorded as a ``RunEvent``.
* ``started_at`` is the start of the first attempt (a retry never moves it);
  each attempt has its own ``RunAttempt`` row (worker, process, device, start,
  end, outcome), written by the same conditional UPDATEs that change the run.
"""

from __future__ import annotations

import enum
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, utcnow
from models.user import User

RUN_ID_LENGTH = 12


def new_run_id() -> str:
    """Short, URL-safe and unguessable (72 random bits)."""
    return secrets.token_urlsafe(9)


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled})


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_runs_owner_status", "owner_id", "status"),
        Index("ix_runs_kind_params_hash", "kind", "params_hash"),
    )

    id: Mapped[str] = mapped_column(String(RUN_ID_LENGTH), primary_key=True, default=new_run_id)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(200), default="", index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    params_hash: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    )
    queue: Mapped[str] = mapped_column(String(32), default="gpu")
    # Admin "move": a higher priority is dispatched first, before fair share (workers.fair_share).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    status: Mapped[str] = mapped_column(String(16), default=RunStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(200), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")  # Markdown, rendered escaped
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    deleted_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )

    owner: Mapped[User] = relationship(lazy="joined", foreign_keys=[owner_id])
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Artifact.name"
    )
    attempt_records: Mapped[list[RunAttempt]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="RunAttempt.attempt"
    )

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def is_terminal(self) -> bool:
        return RunStatus(self.status) in TERMINAL_STATUSES

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()


class Artifact(Base):
    """One stored array of a run: a content-addressed ``.npy`` file."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_artifacts_run_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    uri: Mapped[str] = mapped_column(String(500))
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[list[int]] = mapped_column(JSON)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="artifacts")


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended; ``None`` (no outcome) while it is still running."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    lost = "lost"  # the worker process died or stopped beating; the run was retried or given up


class RunAttempt(Base):
    """One attempt at a run: who ran it, where, when, and how it ended.

    ``(run_id, attempt)`` is unique; ``attempt`` equals ``Run.attempts`` at the
    claim that created the row. ``pid`` is the worker process that claimed it,
    so the worker's main process can tell which attempt died with a child.
    """

    __tablename__ = "run_attempts"
    __table_args__ = (UniqueConstraint("run_id", "attempt", name="uq_run_attempts_run_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    run: Mapped[Run] = relationship(back_populates="attempt_records")

    @property
    def duration_s(self) -> float | None:
        end = self.finished_at or (None if self.outcome else utcnow())
        return None if end is None else (end - self.started_at).total_seconds()


class RunEvent(Base):
    """One change to a run by a member (rename, tags, note, star, unstar, delete).

    ``detail`` is the change as JSON (``{"from": ..., "to": ...}``); rows are
    only ever added, never edited, and go with their run.
    """

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    user: Mapped[User | None] = relationship(lazy="joined")


class RunStar(Base):
    """A member's star on a run (each member stars for themselves)."""

    __tablename__ = "run_stars"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                         index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
