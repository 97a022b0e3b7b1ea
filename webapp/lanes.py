"""The queue a new run is inserted on: the facts the lane decision needs, read from the database.

``latent_atlas.analyses.lanes`` decides (pure); this module only supplies what
the params alone do not say: for a re-projection, the source run's point count
(``summary["n_points"]`` of the stored geometry run). A source that is unknown,
unfinished or has no count leaves the size unknown, so the run goes to its
kind's normal queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from latent_atlas.analyses.lanes import Lane, decide, source_run_of
from models import Run

__all__ = ["lane_of_new_run", "queue_for"]


def _source_points(session: Session, run_id: str) -> int | None:
    run = session.get(Run, run_id)
    if run is None:
        return None
    count = (run.summary or {}).get("n_points")
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def lane_of_new_run(session: Session, kind_name: str, params: Mapping[str, Any]) -> Lane:
    """The lane decision (queue and reason) for a new run of ``kind_name`` with validated ``params``."""
    source = source_run_of(kind_name, params)
    points = _source_points(session, source) if source is not None else None
    return decide(kind_name, params, source_points=points)


def queue_for(session: Session, kind_name: str, params: Mapping[str, Any]) -> str:
    """The queue name a new run is inserted with (``Run.queue``)."""
    return lane_of_new_run(session, kind_name, params).queue
