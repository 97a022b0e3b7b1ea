"""The workload and the verdicts of ``bench/fair_share.py``: a lab's day, seeded, and its statistics.

Pure (no portal, no network): ``lab_day(seed, scale)`` gives the same jobs at
the same arrival times for the same arguments, so the FIFO and the fair run of
one benchmark see identical arrivals; ``member_stats`` and ``verdicts`` turn the
measured runs into the table and the issue's three targets.

The lab (six members, time scaled down; ``scale`` = 1 is a day of ``DAY_S``
seconds whose largest grid takes tens of seconds on a 2-core CPU):

* heavy (2): a burst of three grids of relative sizes 1, 0.7 and 0.5 (cells
  grow with the square, so about 1 : 0.5 : 0.25 of the work) early in the day,
  another grid of 0.7 around midday;
* medium (2): two geometry runs (4 prompts with every component, 8 prompts
  with the residual stream before and after the MLP) and one small grid,
  spread over the day;
* light (2): four short geometry runs (2-3 prompts of at most 24 tokens, the residual
  stream only, states stored, no lens: points are decoded on demand) and five
  lens decodes of clicked points of a run they made before the day (1 to 32
  points each: the interactive lane).

``scale`` multiplies the arrival times and, through the sizes, the durations:
grid sides by sqrt(scale) (time grows with cells), geometry prompts by scale.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DAY_S = 120.0  # seconds of arrivals at scale 1
GRID_N = 60  # the largest grid's side at scale 1 (tens of seconds on one loaded CPU thread)
GRID_LAYERS = (10, 15, 20)
LIGHT_SOURCE = {"prompt_count": 3, "max_tokens": 24}  # the run a light member decodes points of
# 12 to 17 tokens each on the demo model (a prompt longer than max_tokens is refused, not cut).
SENTENCES = (
    "The capital of France is Paris, a city on the Seine.",
    "She opened the window and let the cold morning air into the room.",
    "In 1969, two astronauts walked on the surface of the Moon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "My grandmother's recipe calls for two cups of flour and a pinch of salt.",
    "Quantum entanglement links the states of two particles across any distance.",
    "Once upon a time, a small dragon lived alone at the top of a mountain.",
    "The algorithm sorts the list in O(n log n) time using merge sort.",
    "Heavy rain is expected across the northern region tomorrow afternoon.",
    "He scored the winning goal in the final minute of the match.",
    "Mitochondria are often called the powerhouse of the cell.",
)
MEMBERS: tuple[tuple[str, str], ...] = (
    ("heavy_a", "heavy"), ("heavy_b", "heavy"),
    ("medium_a", "medium"), ("medium_b", "medium"),
    ("light_a", "light"), ("light_b", "light"),
)
LANE = "interactive"

# Targets of issue 13.
INTERACTIVE_P95_S = 10.0
MEDIAN_RATIO_MAX = 2.0
LIGHT_P95_RATIO_MAX = 0.5  # "far better": at most half the FIFO p95
# Waits below this are dispatch granularity (the SQLite broker polls every second), not queueing:
# a member whose FIFO median is under it is compared against it.
WAIT_FLOOR_S = 2.0


@dataclass(frozen=True)
class Job:
    """One submission of the day. ``params`` lack ``model`` (and, for a decode, ``source_run``)."""

    member: str
    tier: str
    kind: str
    label: str
    arrival_s: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def interactive(self) -> bool:
        return self.kind == "geometry_lens"


def _prompts(rng: np.random.Generator, count: int) -> list[str]:
    picks = rng.choice(len(SENTENCES), size=min(count, len(SENTENCES)), replace=False)
    return [SENTENCES[int(i)] for i in picks]


def _grid(rng: np.random.Generator, member: str, tier: str, at: float, side: int) -> Job:
    side = max(8, side)
    layer = int(rng.choice(GRID_LAYERS))
    plane = str(rng.choice(["direct", "random_projection"]))
    return Job(member, tier, "grid", f"grid {side}x{side} L{layer} {plane}", at,
               {"layer": layer, "size": side, "plane": plane, "seed": int(rng.integers(0, 1000))})


def _geometry(rng: np.random.Generator, member: str, tier: str, at: float, count: int, tokens: int,
              components: list[str] | None, store: bool) -> Job:
    params: dict[str, Any] = {"prompts": _prompts(rng, count), "max_tokens": tokens, "logit_lens": False,
                              "store_states": store}
    if components is not None:
        params["components"] = components
    what = "every component" if components is None else "+".join(components)
    return Job(member, tier, "geometry", f"geometry {count}x{tokens} {what}", at, params)


def light_source_params(scale: float = 1.0) -> dict[str, Any]:
    """The geometry run a light member made before the day (its points are decoded in the lane)."""
    count = max(2, round(LIGHT_SOURCE["prompt_count"] * scale))
    return {"prompts": list(SENTENCES[:count]), "max_tokens": LIGHT_SOURCE["max_tokens"],
            "components": ["resid_post"], "logit_lens": False, "store_states": True}


def lab_day(seed: int = 0, scale: float = 1.0) -> list[Job]:
    """The day's jobs in arrival order (same ``seed`` and ``scale``: same jobs, same times)."""
    if not 0.05 <= scale <= 20:
        raise ValueError(f"scale must be within 0.05..20, got {scale}")
    rng = np.random.default_rng(seed)
    day = DAY_S * scale
    n_max = round(GRID_N * math.sqrt(scale))
    jobs: list[Job] = []
    for member, tier in MEMBERS:
        if tier == "heavy":
            burst = float(rng.uniform(0.0, 0.15 * day))
            for i, rel in enumerate(rng.permutation([1.0, 0.7, 0.5])):
                jobs.append(_grid(rng, member, tier, burst + 3.0 * i * scale, round(n_max * rel)))
            jobs.append(_grid(rng, member, tier, float(rng.uniform(0.45, 0.65) * day), round(n_max * 0.7)))
        elif tier == "medium":
            times = np.sort(rng.uniform(0.05 * day, 0.75 * day, size=3))
            kinds = rng.permutation(["geometry4", "geometry8", "grid"])
            for at, what in zip(times, kinds, strict=True):
                if what == "grid":
                    jobs.append(_grid(rng, member, tier, float(at), round(n_max * 0.4)))
                else:
                    count = max(1, round(int(what[-1]) * scale))
                    components = None if what == "geometry4" else ["resid_mid", "resid_post"]
                    jobs.append(_geometry(rng, member, tier, float(at), count, 32, components, False))
        else:
            for at in np.sort(rng.uniform(0.1 * day, 0.9 * day, size=4)):
                count = max(1, round(int(rng.integers(2, 4)) * scale))
                jobs.append(_geometry(rng, member, tier, float(at), count, 24, ["resid_post"], True))
            for at in np.sort(rng.uniform(0.05 * day, 0.95 * day, size=5)):
                points = int(rng.choice([1, 4, 16, 32]))
                jobs.append(Job(member, tier, "geometry_lens", f"decode {points} clicked points", float(at),
                                {"points": points, "pick_seed": int(rng.integers(0, 2**31 - 1))}))
    return sorted(jobs, key=lambda job: job.arrival_s)


def lens_rows(job: Job, n_points: int) -> list[int]:
    """The clicked points of a decode job: distinct rows of a source run of ``n_points`` points."""
    rng = np.random.default_rng(job.params["pick_seed"])
    count = min(int(job.params["points"]), n_points)
    return sorted(int(r) for r in rng.choice(n_points, size=count, replace=False))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Waits:
    n: int
    median_s: float
    p95_s: float


def waits(records: list[dict[str, Any]], member: str) -> Waits | None:
    """Queue waits (``wait_s``) of a member's runs on the ordered (non-interactive) queues."""
    values = [r["wait_s"] for r in records if r["member"] == member and not r["interactive"]
              and r["wait_s"] is not None]
    if not values:
        return None
    return Waits(len(values), statistics.median(values), percentile(values, 0.95))


def interactive_latencies(records: list[dict[str, Any]]) -> list[float]:
    return [r["latency_s"] for r in records if r["interactive"] and r["latency_s"] is not None]


def ratio(fair: float, fifo: float, floor: float = WAIT_FLOOR_S) -> float:
    """fair / FIFO with FIFO floored at ``floor`` (a wait under it is dispatch noise, not queueing)."""
    return fair / max(fifo, floor)


def verdicts(fifo: list[dict[str, Any]], fair: list[dict[str, Any]]) -> dict[str, Any]:
    """Per member stats and the three targets of issue 13 (PASS/FAIL with the figures behind them)."""
    members: dict[str, Any] = {}
    for member, tier in MEMBERS:
        a, b = waits(fifo, member), waits(fair, member)
        members[member] = {
            "tier": tier,
            "fifo": None if a is None else a.__dict__,
            "fair": None if b is None else b.__dict__,
            "median_ratio": None if a is None or b is None else ratio(b.median_s, a.median_s),
            "p95_ratio": None if a is None or b is None else ratio(b.p95_s, a.p95_s),
        }
    lane = interactive_latencies(fair) + interactive_latencies(fifo)
    lane_p95 = percentile(lane, 0.95) if lane else None
    lane_queues = {r["queue"] for r in fair + fifo if r["interactive"]}
    worst_median = max((m["median_ratio"] for m in members.values() if m["median_ratio"] is not None),
                       default=None)
    light = [m["p95_ratio"] for m in members.values() if m["tier"] == "light" and m["p95_ratio"] is not None]
    targets = {
        "interactive_p95": {
            "value_s": lane_p95, "n": len(lane), "queues": sorted(lane_queues),
            "pass": lane_p95 is not None and lane_p95 < INTERACTIVE_P95_S and lane_queues == {LANE},
        },
        "median_not_worse_than_2x": {
            "worst_ratio": worst_median,
            "pass": worst_median is not None and worst_median <= MEDIAN_RATIO_MAX
            and all(m["median_ratio"] is not None for m in members.values()),
        },
        "light_p95_far_better": {
            "ratios": light,
            "pass": len(light) == 2 and max(light) <= LIGHT_P95_RATIO_MAX,
        },
    }
    return {"members": members, "targets": targets}
