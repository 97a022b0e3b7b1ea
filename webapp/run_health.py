"""Whether a running run's worker looks lost, from its status and last heartbeat (pure).

Invariant: the warning shows after three missed beats, always below
``stale_after`` (a settings invariant), so the page says "worker lost?" before
the sweeper takes the run over; a heartbeat cleared by the lost-worker path
(Celery reported the process dead) is stale at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from latent_atlas.settings import get_settings
from models import RunStatus
from models.base import utcnow

__all__ = ["HeartbeatState", "heartbeat_late_after", "heartbeat_state"]


def heartbeat_late_after() -> float:
    """Seconds without a heartbeat after which a running run is shown as possibly lost.

    Three missed beats: always below ``stale_after`` (a settings invariant), so
    the warning shows before the sweeper takes the run over.
    """
    return 3 * get_settings().heartbeat_every


@dataclass(frozen=True)
class HeartbeatState:
    age_s: float | None  # seconds since the last heartbeat; None when there is none
    stale: bool  # running, and the heartbeat is late or was cleared (worker reported dead)
    warning: str | None  # what the page says about it


def heartbeat_state(status: str, heartbeat_at: datetime | None, now: datetime | None = None,
                    late_after: float | None = None) -> HeartbeatState:
    """Whether a run's worker looks lost, from its status and last heartbeat (pure)."""
    now = now or utcnow()
    late_after = heartbeat_late_after() if late_after is None else late_after
    age = None if heartbeat_at is None else max(0.0, (now - heartbeat_at).total_seconds())
    if status != RunStatus.running.value:
        return HeartbeatState(age, False, None)
    if age is None:
        return HeartbeatState(None, True, "worker lost; retrying")
    if age > late_after:
        return HeartbeatState(age, True, f"worker lost? no heartbeat for {age:.0f} s; retrying")
    return HeartbeatState(age, False, None)
