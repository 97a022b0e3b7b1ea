"""Which queue a new run goes to: the ``interactive`` lane, or its kind's normal queue.

Small on-demand work (a logit-lens decode of clicked points, a re-projection of
a run's stored states) must answer in seconds even while a 3-hour grid holds the
``gpu`` queue. Such runs go to the ``interactive`` queue, served by a worker of
its own (its own process, its own model cache), and carry the lane's short
soft/hard time limits. This module is the one place that decides; it is pure
(no database, no Celery), so the web process, the benchmarks and the tests ask
the same question the same way.

Invariants a reader must keep:

* Only kinds in ``ELIGIBLE`` may enter the lane, and only when their size is
  within the bound of ``Settings.interactive`` (``InteractiveLane``); anything
  larger, any other kind, and every run while the lane is disabled goes to
  ``get_kind(name).queue``. A lane that admitted unbounded work would become a
  second long-job queue.
* The size is measured from the validated params and, for a re-projection, the
  source run's point count (``source_points``, an upper bound of the states
  re-projected). An unknown size never enters the lane.
* A task on the lane carries the lane's soft/hard time limits
  (``workers.celery_app.lane_time_limits``, read from the same settings block).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from latent_atlas.analyses import get_kind
from latent_atlas.settings import InteractiveLane, Settings, get_settings

__all__ = ["ELIGIBLE", "INTERACTIVE", "Lane", "Sizer", "decide", "lane_for", "source_run_of"]

INTERACTIVE = "interactive"


@dataclass(frozen=True)
class Sizer:
    """How one interactive-capable kind is measured and bounded."""

    unit: str  # what the size counts, for messages ("points decoded")
    size: Callable[[Mapping[str, Any], int | None], int | None]  # (params, source_points) -> size
    bound: Callable[[Mapping[str, Any], InteractiveLane], int]  # (params, lane settings) -> max size
    needs_source: bool = False  # the size depends on the source run's point count


def _lens_size(params: Mapping[str, Any], _source_points: int | None) -> int:
    rows = params.get("rows")
    if not isinstance(rows, list | tuple):
        raise ValueError(f"geometry_lens params: 'rows' must be a list of point rows, got {type(rows).__name__}")
    return len(rows)


def _reproject_size(_params: Mapping[str, Any], source_points: int | None) -> int | None:
    return source_points


def _reproject_bound(params: Mapping[str, Any], lane: InteractiveLane) -> int:
    return lane.max_umap_states if params.get("reduction") == "umap" else lane.max_reproject_states


ELIGIBLE: dict[str, Sizer] = {
    "geometry_lens": Sizer("points decoded", _lens_size, lambda _p, lane: lane.max_lens_points),
    "geometry_reproject": Sizer("stored states re-projected", _reproject_size, _reproject_bound,
                                needs_source=True),
}


@dataclass(frozen=True)
class Lane:
    """The decision: the queue, and why (for logs, tests and the README's promise)."""

    queue: str
    reason: str

    @property
    def interactive(self) -> bool:
        return self.queue == INTERACTIVE


def source_run_of(kind_name: str, params: Mapping[str, Any]) -> str | None:
    """The run whose point count ``decide`` needs for this kind (None when it needs none)."""
    sizer = ELIGIBLE.get(kind_name)
    if sizer is None or not sizer.needs_source:
        return None
    source = params.get("source_run")
    return source if isinstance(source, str) and source else None


def decide(kind_name: str, params: Mapping[str, Any], *, source_points: int | None = None,
           settings: Settings | None = None) -> Lane:
    """The lane of a run of ``kind_name`` with validated ``params``; see the module docstring.

    Raises ``KeyError`` for an unknown kind (naming the known ones) and
    ``ValueError`` for params that cannot be measured or a negative ``source_points``.
    """
    normal = get_kind(kind_name).queue
    sizer = ELIGIBLE.get(kind_name)
    if sizer is None:
        return Lane(normal, f"{kind_name} runs are not interactive; they go to the {normal} queue")
    if not isinstance(params, Mapping):
        raise ValueError(f"{kind_name} params must be a mapping, got {type(params).__name__}")
    if source_points is not None and (isinstance(source_points, bool) or not isinstance(source_points, int)
                                      or source_points < 0):
        raise ValueError(f"source_points must be a count >= 0, got {source_points!r}")
    lane = (settings or get_settings()).interactive
    if not lane.enabled:
        return Lane(normal, f"the interactive lane is disabled; {kind_name} goes to the {normal} queue")
    size = sizer.size(params, source_points)
    bound = sizer.bound(params, lane)
    if size is None:
        return Lane(normal, f"the size of this {kind_name} run is unknown (its source run's point count); "
                            f"it goes to the {normal} queue")
    if size > bound:
        return Lane(normal, f"{size:,} {sizer.unit} exceed the interactive lane's bound of {bound:,}; "
                            f"it goes to the {normal} queue")
    return Lane(INTERACTIVE, f"{size:,} {sizer.unit} (bound {bound:,}): the interactive lane")


def lane_for(kind_name: str, params: Mapping[str, Any], *, source_points: int | None = None,
             settings: Settings | None = None) -> str:
    """The queue name for a new run: ``"interactive"`` when it fits the lane, else the kind's queue."""
    return decide(kind_name, params, source_points=source_points, settings=settings).queue

