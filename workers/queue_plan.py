"""The queue as users and admins see it: each queued run's place and estimated start.

``current_plan(session)`` answers for every queued run of every queue; the
dispatcher (``workers.dispatcher``) reads the same ``gpu_queue`` state, so the
positions shown are the order in which runs will really be sent.

Invariants:

* gpu queue (gated): runs already sent to the broker (``dispatched_at`` set)
  come first, in the order they were sent; then the runs not yet sent, in
  fair-share order (``workers.fair_share.dispatch_order``). A held run (its
  member's daily GPU cap) has no position and no estimated start, and says why.
* Other queues (not gated): FIFO place among that queue's queued runs.
* ``estimated_start`` simulates the dispatcher on the live workers' slots: a
  slot frees when a running run ends (its estimate minus its elapsed time, at
  least ``fair_share.MIN_REMAINING_S``), then runs start in plan order. No live
  worker for the queue: start unknown (None), position still given.
* Pure reads: nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from latent_atlas.settings import get_settings
from models.base import utcnow
from models.dispatch import WorkerSlot
from models.run import Run, RunAttempt, RunStatus
from models.shard import SHARD_ACTIVE, RunShard
from models.user import User
from workers.estimates import Estimate, EstimateTable
from workers.fair_share import (
    QueuedRun,
    Span,
    decayed_usage,
    dispatch_order,
    hold_reason,
    simulate_starts,
    used_today,
    utc_midnight,
)
from workers.worker_registry import live_window

GATED_QUEUE = "gpu"
# Usage older than this many half-lives weighs under 0.1 % and is not read.
USAGE_HALF_LIVES = 10


@dataclass(frozen=True)
class Planned:
    run_id: str
    position: int | None  # 1-based place in its queue's dispatch order (None when held)
    estimated_start: datetime | None  # UTC; None when held or unknown (no live worker)
    estimated_duration_s: float
    basis: str  # how the estimate was made, shown to users
    held_reason: str | None  # e.g. the daily cap; None when not held


@dataclass
class GpuQueue:
    """The gated queue now: what the dispatcher may send and what is already out."""

    slots: int
    in_flight: int
    sent: list[QueuedRun] = field(default_factory=list)  # queued, dispatched, not yet claimed
    ready: list[QueuedRun] = field(default_factory=list)  # not dispatched, not held, in dispatch order
    held: dict[str, str] = field(default_factory=dict)  # run id -> reason
    estimates: dict[str, Estimate] = field(default_factory=dict)  # every queued and running run
    running_remaining: list[float] = field(default_factory=list)

    @property
    def free(self) -> int:
        return max(self.slots - self.in_flight, 0)


def live_slots(session: Session, now: datetime) -> dict[str, int]:
    """Per queue: the summed concurrency of live workers (``worker_registry.live_window``)."""
    fresh_after = now - timedelta(seconds=live_window())
    slots: dict[str, int] = defaultdict(int)
    for queues, concurrency in session.execute(
        select(WorkerSlot.queues, WorkerSlot.concurrency).where(WorkerSlot.heartbeat_at >= fresh_after)
    ):
        for queue in queues or []:
            slots[queue] += int(concurrency or 0)
    return dict(slots)


def gpu_spans(session: Session, owners: Iterable[int], now: datetime, since: datetime) -> list[Span]:
    """GPU time of ``owners`` since ``since``: ended attempts, running ones up to now, and shards' device time."""
    owners = list(owners)
    if not owners:
        return []
    rows = session.execute(
        select(Run.owner_id, Run.status, RunAttempt.started_at, RunAttempt.finished_at)
        .join(RunAttempt, RunAttempt.run_id == Run.id)
        .where(Run.queue == GATED_QUEUE, Run.owner_id.in_(owners),
               or_(RunAttempt.finished_at.is_(None), RunAttempt.finished_at >= since))
    ).all()
    spans = []
    for row in rows:
        if row.finished_at is not None:
            end = row.finished_at
        elif row.status == RunStatus.running.value:
            end = now  # the attempt is running: its GPU time so far
        else:
            continue  # an attempt left open by a run that ended elsewhere: no known GPU time
        spans.append(Span(row.owner_id, row.started_at, end))
    # Shards: each ended attempt's device time (gpu_s, laid out before its end) and a running attempt's so far.
    for row in session.execute(
        select(Run.owner_id, RunShard.status, RunShard.started_at, RunShard.finished_at, RunShard.gpu_s)
        .join(Run, Run.id == RunShard.run_id)
        .where(Run.owner_id.in_(owners), or_(RunShard.finished_at.is_(None), RunShard.finished_at >= since))
    ).all():
        if row.gpu_s:
            end = row.finished_at or row.started_at or now
            spans.append(Span(row.owner_id, end - timedelta(seconds=row.gpu_s), end))
        if row.status == "running" and row.started_at is not None:
            spans.append(Span(row.owner_id, row.started_at, now))
    return spans


def _queued(run, table: EstimateTable, estimates: dict[str, Estimate]) -> QueuedRun:
    estimate = table.estimate(run.kind, run.params or {})
    estimates[run.id] = estimate
    return QueuedRun(run.id, run.owner_id, run.created_at, estimate.duration_s, run.priority or 0)


def gpu_queue(session: Session, now: datetime | None = None,
              table: EstimateTable | None = None) -> GpuQueue:
    """The gated queue's state: slots, runs in flight, and the dispatch order of the rest."""
    now = now or utcnow()
    settings = get_settings()
    table = table if table is not None else EstimateTable.load(session)
    rows = session.execute(
        select(Run.id, Run.owner_id, Run.kind, Run.params, Run.created_at, Run.priority,
               Run.status, Run.dispatched_at, Run.started_at)
        .where(Run.queue == GATED_QUEUE,
               Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
    ).all()
    state = GpuQueue(slots=live_slots(session, now).get(GATED_QUEUE, 0), in_flight=0)
    waiting = []
    sent = []
    active_shards = dict(session.execute(
        select(RunShard.run_id, func.count()).join(Run, Run.id == RunShard.run_id)
        .where(Run.status == RunStatus.running.value, RunShard.status.in_(SHARD_ACTIVE))
        .group_by(RunShard.run_id)
    ).all())
    for row in rows:
        if row.status == RunStatus.running.value:
            estimate = table.estimate(row.kind, row.params or {})
            state.estimates[row.id] = estimate
            elapsed = (now - row.started_at).total_seconds() if row.started_at else 0.0
            state.running_remaining.append(estimate.duration_s - elapsed)
            state.in_flight += max(1, active_shards.get(row.id, 0))  # a sharded run holds a slot per shard
        elif row.dispatched_at is not None:
            sent.append((row.dispatched_at, row.created_at, row.id, _queued(row, table, state.estimates)))
            state.in_flight += 1
        else:
            waiting.append(_queued(row, table, state.estimates))
    state.sent = [item[-1] for item in sorted(sent, key=lambda item: item[:3])]
    if not waiting:
        return state
    owners = {run.owner_id for run in waiting}
    users = session.execute(
        select(User.id, User.share_weight, User.daily_gpu_cap_s).where(User.id.in_(owners))
    ).all()
    weights = {u.id: float(u.share_weight or 1.0) for u in users}
    caps = {u.id: u.daily_gpu_cap_s for u in users}
    midnight = utc_midnight(now)
    horizon = now - timedelta(seconds=USAGE_HALF_LIVES * settings.fair_share.half_life_s)
    spans = gpu_spans(session, owners, now, min(midnight, horizon))
    today = used_today(spans, now)
    held_owners = {owner: reason for owner in owners
                   if (reason := hold_reason(today.get(owner, 0.0), caps.get(owner))) is not None}
    ready = [run for run in waiting if run.owner_id not in held_owners]
    state.held = {run.run_id: held_owners[run.owner_id] for run in waiting if run.owner_id in held_owners}
    usage = decayed_usage([s for s in spans if s.end >= horizon], now, settings.fair_share.half_life_s)
    state.ready = dispatch_order(ready, usage, weights, small_run_s=settings.fair_share.small_run_s,
                                 order=settings.fair_share.order)
    return state


def _plan_fifo(session: Session, queue: str, slots: int, table: EstimateTable,
               now: datetime) -> dict[str, Planned]:
    rows = session.execute(
        select(Run.id, Run.kind, Run.params, Run.status, Run.started_at, Run.created_at)
        .where(Run.queue == queue, Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
        .order_by(Run.created_at, Run.id)
    ).all()
    remaining, queued = [], []
    for row in rows:
        estimate = table.estimate(row.kind, row.params or {})
        if row.status == RunStatus.running.value:
            elapsed = (now - row.started_at).total_seconds() if row.started_at else 0.0
            remaining.append(estimate.duration_s - elapsed)
        else:
            queued.append((row.id, estimate))
    starts = simulate_starts([e.duration_s for _, e in queued], remaining, slots, now)
    return {run_id: Planned(run_id, place, start, e.duration_s, e.basis, None)
            for place, ((run_id, e), start) in enumerate(zip(queued, starts, strict=True), start=1)}


def current_plan(session: Session, now: datetime | None = None) -> dict[str, Planned]:
    """Every queued run of every queue: position, estimated start and duration, basis, hold."""
    now = now or utcnow()
    table = EstimateTable.load(session)
    state = gpu_queue(session, now, table)
    order = [*state.sent, *state.ready]
    starts = simulate_starts([run.estimate_s for run in order], state.running_remaining, state.slots, now)
    plan: dict[str, Planned] = {}
    for place, (run, start) in enumerate(zip(order, starts, strict=True), start=1):
        estimate = state.estimates[run.run_id]
        plan[run.run_id] = Planned(run.run_id, place, start, estimate.duration_s, estimate.basis, None)
    for run_id, reason in state.held.items():
        estimate = state.estimates[run_id]
        plan[run_id] = Planned(run_id, None, None, estimate.duration_s, estimate.basis, reason)
    slots = live_slots(session, now)
    other_queues = session.execute(
        select(Run.queue).where(and_(Run.status == RunStatus.queued.value, Run.queue != GATED_QUEUE))
        .distinct()
    ).scalars().all()
    for queue in other_queues:
        plan.update(_plan_fifo(session, queue, slots.get(queue, 0), table, now))
    return plan
