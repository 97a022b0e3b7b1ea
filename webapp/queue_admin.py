"""The admin's queue and fair-share settings: the service behind ``/admin/queue``, the Users page and
``/api/admin/...`` (``webapp.queue_api``).

Invariants:

* Every function that changes something takes the acting user and refuses
  (``NotAllowed``) anyone but an admin; values are checked against the bounds
  of ``models.user`` (``SHARE_WEIGHT_BOUNDS``, ``DAILY_CAP_BOUNDS``) with strict
  types before anything is written (``ShareError``, a ``SubmissionError``).
* The order shown is the dispatcher's own (``workers.queue_plan.current_plan``):
  per queue, running runs, then queued runs by their place in the plan, then
  held runs. Nothing here orders runs by itself.
* A move sets ``runs.priority`` in one UPDATE (top: max+1, bottom: min-1 over
  the queued runs of the same queue), so the fair-share order takes it first
  (or last); a run already sent to the broker keeps its place (its message is
  out) and is refused. A move and an admin cancel are each recorded in the
  run's change log (``RunEvent`` ``move`` / ``cancel``), and the dispatcher is
  called after them (a freed slot is filled at once).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update

from latent_atlas.settings import get_settings
from models import Run, RunStatus, User, session_scope
from models.base import utcnow
from models.user import DAILY_CAP_BOUNDS, SHARE_WEIGHT_BOUNDS
from webapp import run_management
from webapp.queue_text import place_text, start_text
from webapp.run_queue import fields as plan_fields
from webapp.runs_service import NotAllowed, RunNotFound, SubmissionError
from workers.estimates import run_size
from workers.fair_share import decayed_usage, used_today, utc_midnight
from workers.queue_plan import GATED_QUEUE, USAGE_HALF_LIVES, current_plan, gpu_spans

__all__ = ["MemberNotFound", "ShareError", "cancel_any", "dispatch_now", "member_rows", "move_run",
           "queue_rows", "require_admin", "set_member_share", "size_text"]

SIZE_UNITS = {"geometry": "tokens", "geometry_lens": "points", "sae": "tokens", "sae_train": "tokens",
              "anatomy": "token-steps", "scan": "tokens"}
_QUEUE_ORDER = {GATED_QUEUE: 0, "interactive": 1, "cpu": 2}


class ShareError(SubmissionError):
    """A share weight or daily cap out of bounds or of the wrong type (400)."""


class MemberNotFound(LookupError):
    """No user of that name (404)."""


def require_admin(user: Any, what: str) -> None:
    if user is None or not getattr(user, "is_admin", False):
        raise NotAllowed(f"only an admin may {what}")


def dispatch_now() -> None:
    """Let the dispatcher fill free GPU slots (after a move, a cancel, a delete); never raises."""
    from workers.dispatch import dispatch_pending_quietly

    dispatch_pending_quietly()


# --------------------------------------------------------------------------- sizes and plan


def size_text(kind: str, params: dict[str, Any]) -> str:
    """``200×200`` for a grid; ``1,024 tokens`` and the like for the other kinds."""
    size = run_size(kind, params or {})
    if kind == "grid":
        side = math.isqrt(size)
        return f"{side}×{side}"
    return f"{size:,} {SIZE_UNITS.get(kind, 'units')}"


def queue_rows(now: datetime | None = None) -> list[dict[str, Any]]:
    """Every queued and running run, in dispatch order per queue (gpu first), with its plan."""
    now = now or utcnow()
    with session_scope() as session:
        plan = current_plan(session, now)
        runs = session.execute(
            select(Run.id, Run.title, Run.kind, Run.params, Run.queue, Run.status, Run.priority,
                   Run.created_at, Run.started_at, Run.dispatched_at, Run.cancel_requested,
                   User.username)
            .join(User, User.id == Run.owner_id)
            .where(Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
        ).all()
    far = float("inf")

    def key(row) -> tuple:
        planned = plan.get(row.id)
        if row.status == RunStatus.running.value:
            stage, place = 0, (row.started_at or row.created_at).timestamp()
        elif planned is not None and planned.position is not None:
            stage, place = 1, float(planned.position)
        else:
            stage, place = 2, far
        return (_QUEUE_ORDER.get(row.queue, 9), row.queue, stage, place, row.created_at, row.id)

    rows = []
    for order, row in enumerate(sorted(runs, key=key), start=1):
        planned = plan.get(row.id) if row.status == RunStatus.queued.value else None
        rows.append({
            "order": order, "id": row.id, "title": row.title or "", "owner": row.username,
            "kind": row.kind, "size": size_text(row.kind, row.params or {}), "queue": row.queue,
            "status": row.status, "priority": row.priority or 0,
            "sent": row.status == RunStatus.queued.value and row.dispatched_at is not None,
            "cancel_requested": bool(row.cancel_requested),
            "created_at": row.created_at.isoformat(),
            "started_at": row.started_at.isoformat() if row.started_at else None,
            **plan_fields(planned),
        })
        last = rows[-1]
        last["estimated_start_text"] = "" if last["held_reason"] else start_text(last["estimated_start"], now)
        last["place_text"] = place_text(last["queue_position"], last["estimated_start"], last["estimate_basis"],
                                        last["held_reason"], row.queue, now) if planned else ""
    return rows


# --------------------------------------------------------------------------- moves and cancels


def move_run(actor: User, run_id: str, where: Literal["top", "bottom"]) -> bool:
    """Move a queued run to the top or bottom of its queue; False when it already is there."""
    require_admin(actor, "move runs in the queue")
    if where not in ("top", "bottom"):
        raise SubmissionError(["to: must be 'top' or 'bottom'"])
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None or run.deleted_at is not None:
            raise RunNotFound(run_id)
        if run.status != RunStatus.queued.value:
            raise SubmissionError([f"run {run_id} is {run.status}; only a queued run can be moved"])
        if run.dispatched_at is not None:
            raise SubmissionError([f"run {run_id} was already sent to a worker (it starts next); "
                                   "it cannot be moved"])
        others = (select(func.max(Run.priority) if where == "top" else func.min(Run.priority))
                  .where(Run.status == RunStatus.queued.value, Run.queue == run.queue,
                         Run.dispatched_at.is_(None), Run.id != run_id))
        extreme = session.scalar(others)
        old = run.priority or 0
        if extreme is None or (old > extreme if where == "top" else old < extreme):
            return False  # alone, or already strictly first (last) by priority
        new = extreme + 1 if where == "top" else extreme - 1
        session.execute(update(Run).where(Run.id == run_id).values(priority=new)
                        .execution_options(synchronize_session=False))
        queue = run.queue
    run_management.record_event(actor, run_id, "move", {"where": where, "queue": queue, "from": old,
                                                         "to": new})
    dispatch_now()
    return True


def cancel_any(actor: User, run_id: str) -> bool:
    """An admin cancels any queued or running run (recorded); False when it had already ended."""
    require_admin(actor, "cancel other members' runs from the queue")
    changed = run_management.cancel_recorded(actor, run_id)
    if changed:
        dispatch_now()
    return changed


# --------------------------------------------------------------------------- members


def _check_share(body: Any) -> dict[str, Any]:
    """``{"share_weight"?, "daily_gpu_cap_s"?}`` checked strictly; the keys present only."""
    if not isinstance(body, dict):
        raise ShareError(["the body must be a JSON object"])
    unknown = sorted(set(body) - {"share_weight", "daily_gpu_cap_s"})
    if unknown:
        raise ShareError([f"{key}: unknown field (share_weight, daily_gpu_cap_s)" for key in unknown])
    if not body:
        raise ShareError(["give share_weight and/or daily_gpu_cap_s"])
    clean: dict[str, Any] = {}
    low, high = SHARE_WEIGHT_BOUNDS
    if "share_weight" in body:
        weight = body["share_weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ShareError(["share_weight: must be a number"])
        if not low <= weight <= high:
            raise ShareError([f"share_weight: must be between {low:g} and {high:g} (1 is the default; "
                              "2 gets twice the GPU time of 1)"])
        clean["share_weight"] = float(weight)
    low_cap, high_cap = DAILY_CAP_BOUNDS
    if "daily_gpu_cap_s" in body:
        cap = body["daily_gpu_cap_s"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
            raise ShareError(["daily_gpu_cap_s: must be a whole number of seconds, or null for no cap"])
        if cap is not None and not low_cap <= cap <= high_cap:
            raise ShareError([f"daily_gpu_cap_s: must be between {low_cap} and {high_cap} seconds "
                              "(a UTC day), or null for no cap"])
        clean["daily_gpu_cap_s"] = cap
    return clean


def set_member_share(actor: User, username: str, body: Any) -> dict[str, Any]:
    """Set a member's share weight and/or daily GPU-seconds cap; returns the member's row."""
    require_admin(actor, "change share weights and daily caps")
    clean = _check_share(body)
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise MemberNotFound(username)
        for field, value in clean.items():
            setattr(user, field, value)
    dispatch_now()  # a raised cap or weight may let a held run go now
    return next(m for m in member_rows() if m["username"] == username)


def member_rows(now: datetime | None = None) -> list[dict[str, Any]]:
    """Every active member: weight, cap, GPU-seconds today, decayed recent usage, runs waiting and running."""
    now = now or utcnow()
    half_life = get_settings().fair_share.half_life_s
    since = min(utc_midnight(now), now - timedelta(seconds=USAGE_HALF_LIVES * half_life))
    with session_scope() as session:
        users = session.execute(select(User.id, User.username, User.share_weight, User.daily_gpu_cap_s,
                                       User.is_active).order_by(User.username)).all()
        spans = gpu_spans(session, [u.id for u in users], now, since)  # as the dispatcher counts GPU time
        counts = session.execute(
            select(Run.owner_id, Run.status, func.count()).where(
                Run.status.in_([RunStatus.queued.value, RunStatus.running.value])
            ).group_by(Run.owner_id, Run.status)
        ).all()
    today, recent = used_today(spans, now), decayed_usage(spans, now, half_life)
    waiting = {(owner, status): n for owner, status, n in counts}
    return [{
        "username": u.username,
        "active": bool(u.is_active),
        "share_weight": float(u.share_weight if u.share_weight is not None else 1.0),
        "daily_gpu_cap_s": u.daily_gpu_cap_s,
        "gpu_s_today": round(today.get(u.id, 0.0), 1),
        "recent_gpu_s": round(recent.get(u.id, 0.0), 1),
        "weighted_usage": round(recent.get(u.id, 0.0) / float(u.share_weight or 1.0), 1),
        "queued": int(waiting.get((u.id, RunStatus.queued.value), 0)),
        "running": int(waiting.get((u.id, RunStatus.running.value), 0)),
    } for u in users]
