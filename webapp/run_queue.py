"""A queued run's place in its queue, for the run page, ``/runs`` and the JSON API.

Everything comes from ``workers.queue_plan.current_plan`` (the dispatcher's own
order and a simulation of it), so the position shown is the order in which
the run will really be sent to a worker. Fields (``queue_fields``):

* ``queue_position``: 1-based place in the run's queue; None when the run is
  not queued or is held;
* ``estimated_start`` (ISO 8601 UTC) and ``estimated_duration_s``; the start
  is None when held or when no worker serves the queue;
* ``estimate_basis``: how the estimate was made ("median of 5 past grid runs
  of this size");
* ``held_reason``: why a queued run is not being dispatched (a daily GPU cap).
"""

from __future__ import annotations

from typing import Any

from models import Run, RunStatus, session_scope
from workers.queue_plan import Planned, current_plan

EMPTY: dict[str, Any] = {"queue_position": None, "estimated_start": None, "estimated_duration_s": None,
                         "estimate_basis": None, "held_reason": None}


def plan() -> dict[str, Planned]:
    """The plan of every queued run now."""
    with session_scope() as session:
        return current_plan(session)


def fields(planned: Planned | None) -> dict[str, Any]:
    if planned is None:
        return dict(EMPTY)
    start = planned.estimated_start
    return {
        "queue_position": planned.position,
        "estimated_start": start.isoformat() if start is not None else None,
        "estimated_duration_s": round(planned.estimated_duration_s, 1),
        "estimate_basis": planned.basis,
        "held_reason": planned.held_reason,
    }


def planned_run(run: Run) -> Planned | None:
    """The plan entry of ``run``; None when it is not queued."""
    if run.status != RunStatus.queued.value:
        return None
    return plan().get(run.id)


def queue_fields(run: Run) -> dict[str, Any]:
    """The queue fields of one run (all None unless it is queued)."""
    return fields(planned_run(run))


def queue_position(run: Run) -> int | None:
    """1-based place in the run's queue's dispatch order (None if not queued, or held)."""
    planned = planned_run(run)
    return planned.position if planned is not None else None


def add_queue_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the queue fields to run rows (``runs_service.run_summary``); one plan for all of them."""
    current = plan() if any(row.get("status") == RunStatus.queued.value for row in rows) else {}
    for row in rows:
        row.update(fields(current.get(row["id"])))
    return rows
