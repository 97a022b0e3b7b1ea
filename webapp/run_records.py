"""The JSON forms of runs: table rows and API lists (``run_summary``), the full record
(``run_detail``), attempts and shards, and the filtered listing (``list_runs``).

Invariants: read-only; deleted runs are never listed; a running run whose
heartbeat is late (or cleared because its worker process died) carries the
warning of ``webapp.run_health.heartbeat_state`` in every form; a queued run's
position, start estimate and hold come from one plan (``webapp.run_queue``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, select

from models import Run, RunShard, User, session_scope
from models.run import RunAttempt, RunStar
from webapp.run_health import heartbeat_state
from webapp.run_queue import add_queue_fields, queue_fields


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

