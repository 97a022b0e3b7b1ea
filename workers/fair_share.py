"""Fair-share order of the gated ``gpu`` queue: pure functions, no database, no Celery.

Invariants (``order == "fair"``):

* Admin priority comes first: runs are taken level by level, highest
  ``priority`` first (an admin's "move to top" / "move to bottom"); within a
  level, fair share decides.
* Fair share: repeatedly, among members with runs left at this level, the one
  with the least ``usage / share_weight`` goes next (ties: the member whose
  next run was submitted first). ``usage`` is the member's GPU-seconds, each
  second weighted by ``0.5 ** (age / half_life_s)`` (``decayed_usage``); after a
  pick the member's usage grows by that run's estimated duration, so a long
  plan stays fair and a member with many runs alternates with the others.
* Within a member: higher priority first, then runs estimated at most
  ``small_run_s`` before longer ones, each group in submission order: a
  member's own order among comparable runs is kept.
* Held runs (``hold_reason``: the member's daily GPU cap) never enter the order.

``order == "fifo"``: priority, then submission order (the baseline of
``bench/fair_share.py``); held runs are still held.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

Order = Literal["fair", "fifo"]

# A running run is never expected to end sooner than this (its estimate may be exceeded).
MIN_REMAINING_S = 5.0


@dataclass(frozen=True)
class QueuedRun:
    """A queued run as the order sees it."""

    run_id: str
    owner_id: int
    created_at: datetime
    estimate_s: float
    priority: int = 0


@dataclass(frozen=True)
class Span:
    """GPU time of one attempt: ``start`` .. ``end`` (a running attempt ends now)."""

    owner_id: int
    start: datetime
    end: datetime


def decayed_usage(spans: Iterable[Span], now: datetime, half_life_s: float) -> dict[int, float]:
    """Per member: the integral over their GPU time of ``0.5 ** (age / half_life_s)``.

    A second used just now counts 1, one used ``half_life_s`` ago counts 0.5.
    """
    rate = math.log(2.0) / half_life_s
    usage: dict[int, float] = defaultdict(float)
    for span in spans:
        end = min(span.end, now)
        if end <= span.start:
            continue
        young = (now - end).total_seconds()  # age of the span's newest second
        old = (now - span.start).total_seconds()
        usage[span.owner_id] += (math.exp(-rate * young) - math.exp(-rate * old)) / rate
    return dict(usage)


def utc_midnight(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def used_today(spans: Iterable[Span], now: datetime) -> dict[int, float]:
    """Per member: GPU-seconds since 00:00 UTC today (spans clipped to the day)."""
    midnight = utc_midnight(now)
    used: dict[int, float] = defaultdict(float)
    for span in spans:
        start, end = max(span.start, midnight), min(span.end, now)
        if end > start:
            used[span.owner_id] += (end - start).total_seconds()
    return dict(used)


def hold_reason(used_today_s: float, daily_cap_s: int | None) -> str | None:
    """Why a member's gpu runs are held, or None: the daily GPU cap (UTC day)."""
    if daily_cap_s is None or used_today_s < daily_cap_s:
        return None
    return (f"daily GPU cap reached ({used_today_s:.0f} s of {daily_cap_s} s); "
            "resumes at 00:00 UTC")


def _member_key(run: QueuedRun, small_run_s: float) -> tuple:
    return (-run.priority, run.estimate_s > small_run_s, run.created_at, run.run_id)


def dispatch_order(
    runs: Sequence[QueuedRun],
    usage: Mapping[int, float],
    weights: Mapping[int, float],
    *,
    small_run_s: float,
    order: Order = "fair",
) -> list[QueuedRun]:
    """``runs`` (none of them held) in the order the dispatcher sends them."""
    if order == "fifo":
        return sorted(runs, key=lambda r: (-r.priority, r.created_at, r.run_id))
    if order != "fair":
        raise ValueError(f"unknown order {order!r} (fair or fifo)")
    spent = {owner: float(usage.get(owner, 0.0)) for owner in {r.owner_id for r in runs}}
    levels: dict[int, dict[int, list[QueuedRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        levels[run.priority][run.owner_id].append(run)
    result: list[QueuedRun] = []
    for priority in sorted(levels, reverse=True):
        members = levels[priority]
        for queue in members.values():
            queue.sort(key=lambda r: _member_key(r, small_run_s))
        heads = {owner: 0 for owner in members}
        while heads:
            owner = min(heads, key=lambda o, level=members, at=heads: (
                spent[o] / max(float(weights.get(o, 1.0)), 1e-9), level[o][at[o]].created_at, o))
            run = members[owner][heads[owner]]
            result.append(run)
            spent[owner] += max(run.estimate_s, 0.0)
            heads[owner] += 1
            if heads[owner] == len(members[owner]):
                del heads[owner]
    return result


def simulate_starts(
    durations: Sequence[float],
    running_remaining: Sequence[float],
    slots: int,
    now: datetime,
) -> list[datetime | None]:
    """Estimated start of each of ``durations`` (runs in dispatch order) on ``slots`` slots.

    ``running_remaining``: seconds left of the runs already in flight (each at
    least ``MIN_REMAINING_S``). A run starts when fewer than ``slots`` runs are
    in flight. No slot (no live worker): every start is unknown (None).
    """
    if slots <= 0:
        return [None] * len(durations)
    ends = [max(float(r), MIN_REMAINING_S) for r in running_remaining]
    heapq.heapify(ends)
    clock = 0.0
    starts: list[datetime | None] = []
    for duration in durations:
        while len(ends) >= slots:
            clock = max(clock, heapq.heappop(ends))
        starts.append(now + timedelta(seconds=clock))
        heapq.heappush(ends, clock + max(float(duration), 0.0))
    return starts
