"""Fair-share order, holds, estimates and the queue plan (workers.fair_share, estimates, queue_plan).

The pure functions are checked on hand-made inputs; ``current_plan`` on a real
SQLite database migrated to head, with live worker rows and past attempts.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from harness import migrated_database
from workers.estimates import EstimateTable, run_size, size_bucket
from workers.fair_share import (
    MIN_REMAINING_S,
    QueuedRun,
    Span,
    decayed_usage,
    dispatch_order,
    hold_reason,
    simulate_starts,
    used_today,
)

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def _run(run_id: str, owner: int, minute: int, estimate: float = 30.0, priority: int = 0) -> QueuedRun:
    return QueuedRun(run_id, owner, NOW - timedelta(minutes=60 - minute), estimate, priority)


def _ids(runs) -> list[str]:
    return [r.run_id for r in runs]


def test_decayed_usage_weighs_each_second_by_its_age():
    half = 3600.0
    now_span = Span(1, NOW - timedelta(seconds=10), NOW)
    old_span = Span(2, NOW - timedelta(seconds=3610), NOW - timedelta(seconds=3600))
    usage = decayed_usage([now_span, old_span], NOW, half)
    assert usage[1] == pytest.approx(10.0, rel=1e-3)
    assert usage[2] == pytest.approx(5.0, rel=1e-2)  # an hour ago: half weight
    # Exact integral of 0.5 ** (age / half) over the span.
    rate = math.log(2) / half
    assert usage[2] == pytest.approx((math.exp(-rate * 3600) - math.exp(-rate * 3610)) / rate)
    # A span that has not ended is counted up to now only.
    assert decayed_usage([Span(3, NOW - timedelta(seconds=4), NOW + timedelta(hours=1))], NOW, half)[3] \
        == pytest.approx(4.0, rel=1e-3)


def test_least_decayed_usage_goes_first_and_members_alternate():
    runs = [_run(f"a{i}", 1, i) for i in range(1, 5)] + [_run("b1", 2, 10), _run("c1", 3, 20)]
    order = dispatch_order(runs, {1: 100.0, 2: 0.0, 3: 50.0}, {}, small_run_s=60)
    # B has used nothing, then C (50) ... A (100) last; after each pick usage grows by 30 s.
    assert _ids(order) == ["b1", "c1", "a1", "a2", "a3", "a4"]
    # Equal usage: the member whose next run came first, then they alternate.
    order = dispatch_order([_run("a1", 1, 1), _run("a2", 1, 2), _run("a3", 1, 3), _run("b1", 2, 5)],
                           {}, {}, small_run_s=60)
    assert _ids(order) == ["a1", "b1", "a2", "a3"]


def test_a_member_with_many_runs_does_not_block_a_newcomer():
    """The issue's scenario: A queued 6, A's first ran; B's one run is next."""
    a_runs = [_run(f"a{i}", 1, i) for i in range(2, 7)]
    order = dispatch_order([*a_runs, _run("b1", 2, 30)], {1: 20.0}, {}, small_run_s=60)
    assert _ids(order) == ["b1", "a2", "a3", "a4", "a5", "a6"]


def test_share_weight_divides_usage():
    runs = [_run("a1", 1, 1), _run("b1", 2, 2)]
    assert _ids(dispatch_order(runs, {1: 100.0, 2: 60.0}, {}, small_run_s=60)) == ["b1", "a1"]
    # Weight 2: A's 100 s count as 50, less than B's 60.
    assert _ids(dispatch_order(runs, {1: 100.0, 2: 60.0}, {1: 2.0}, small_run_s=60)) == ["a1", "b1"]
    # Over a long plan a weight-2 member gets about twice the picks.
    many = [_run(f"a{i}", 1, i) for i in range(12)] + [_run(f"b{i}", 2, i) for i in range(12)]
    first = _ids(dispatch_order(many, {}, {1: 2.0}, small_run_s=60))[:12]
    assert sum(r.startswith("a") for r in first) == 8


def test_small_runs_before_long_within_a_member_each_group_in_submission_order():
    runs = [_run("long1", 1, 1, 600), _run("small1", 1, 2, 20), _run("long2", 1, 3, 900),
            _run("small2", 1, 4, 60)]  # 60 s is still small (<= small_run_s)
    assert _ids(dispatch_order(runs, {}, {}, small_run_s=60)) == ["small1", "small2", "long1", "long2"]
    # Comparable runs keep the member's order whatever their ids.
    same = [_run("z", 1, 1), _run("y", 1, 2), _run("x", 1, 3)]
    assert _ids(dispatch_order(same, {}, {}, small_run_s=60)) == ["z", "y", "x"]


def test_admin_priority_comes_before_fair_share():
    runs = [_run("a1", 1, 1), _run("a2", 1, 2), _run("b1", 2, 3), _run("b2", 2, 4, priority=-1),
            _run("a3", 1, 5, priority=1)]
    # A has used far more, yet A's moved-up run goes first; B's moved-down run goes last.
    assert _ids(dispatch_order(runs, {1: 1000.0}, {}, small_run_s=60)) == ["a3", "b1", "a1", "a2", "b2"]
    assert _ids(dispatch_order(runs, {}, {}, small_run_s=60, order="fifo")) == ["a3", "a1", "a2", "b1", "b2"]


def test_fifo_is_submission_order_whatever_the_usage():
    runs = [_run("a1", 1, 1), _run("a2", 1, 2, 600), _run("b1", 2, 3)]
    assert _ids(dispatch_order(runs, {1: 1e6}, {2: 100.0}, small_run_s=60, order="fifo")) == ["a1", "a2", "b1"]
    with pytest.raises(ValueError, match="unknown order"):
        dispatch_order(runs, {}, {}, small_run_s=60, order="lifo")  # type: ignore[arg-type]


def test_daily_cap_counts_todays_gpu_seconds_only():
    midnight = NOW.replace(hour=0, minute=0)
    spans = [Span(1, midnight - timedelta(seconds=100), midnight + timedelta(seconds=50)),  # 50 s today
             Span(1, NOW - timedelta(seconds=30), NOW),
             Span(2, midnight - timedelta(hours=2), midnight - timedelta(hours=1))]  # yesterday only
    today = used_today(spans, NOW)
    assert today[1] == pytest.approx(80.0) and 2 not in today
    assert hold_reason(today[1], None) is None
    assert hold_reason(today[1], 81) is None
    assert hold_reason(today[1], 60) == "daily GPU cap reached (80 s of 60 s); resumes at 00:00 UTC"


def test_simulated_starts_fill_free_slots_then_wait_for_ends():
    starts = simulate_starts([10, 10, 10], running_remaining=[], slots=2, now=NOW)
    assert [(s - NOW).total_seconds() for s in starts] == [0, 0, 10]
    # One slot, a running run with 20 s left: queued runs start back to back after it.
    starts = simulate_starts([5, 7, 1], running_remaining=[20], slots=1, now=NOW)
    assert [(s - NOW).total_seconds() for s in starts] == [20, 25, 32]
    # A run past its estimate is still expected to need a few seconds.
    starts = simulate_starts([5], running_remaining=[-100], slots=1, now=NOW)
    assert (starts[0] - NOW).total_seconds() == MIN_REMAINING_S
    # More runs in flight than slots (a worker went away): wait for enough of them to end.
    starts = simulate_starts([5], running_remaining=[10, 30, 20], slots=2, now=NOW)
    assert (starts[0] - NOW).total_seconds() == 20
    assert simulate_starts([5, 5], [], slots=0, now=NOW) == [None, None]


def test_estimates_take_the_median_of_the_same_kind_and_size():
    grid = {"size": 100}
    history = [("grid", {"size": 101}, 40.0), ("grid", {"size": 99}, 10.0), ("grid", {"size": 100}, 20.0),
               ("grid", {"size": 400}, 900.0), ("geometry", {"prompts": ["a"], "max_tokens": 8}, 3.0)]
    table = EstimateTable.from_history(history)
    estimate = table.estimate("grid", grid)
    assert estimate.duration_s == 20.0 and estimate.basis == "median of 3 past grid runs of this size"
    assert table.estimate("grid", {"size": 400}).basis == "median of 1 past grid run of this size"
    fallback = table.estimate("grid", {"size": 20})
    assert fallback.duration_s == 120.0 and "no past grid run of this size" in fallback.basis
    assert run_size("grid", {"size": 100}) == 10_000
    assert run_size("geometry", {"prompts": ["a", "b"], "max_tokens": 16}) == 32
    assert run_size("geometry", {"token_ids": [[1, 2, 3], [4]]}) == 4
    assert size_bucket(1) == 0 and size_bucket(1024) == 10


# -- the plan, on a real database --------------------------------------------------------


@pytest.fixture
def db(tmp_path, monkeypatch):
    from models.session import get_engine

    with migrated_database("sqlite", tmp_path, monkeypatch) as backend:
        with Session(get_engine(backend.database_url)) as session:
            yield session


def _seed(session: Session, now: datetime):
    from models import Run, User, WorkerSlot
    from models.run import RunAttempt

    users = {name: User(username=name, password_hash="x") for name in ("alice", "bob", "carol")}
    session.add_all(users.values())
    session.flush()
    a, b, c = (users[n].id for n in ("alice", "bob", "carol"))
    session.add(WorkerSlot(name="w1@host", queues=["gpu", "cpu"], concurrency=2, hostname="host",
                           started_at=now, heartbeat_at=now))
    session.add(WorkerSlot(name="dead@host", queues=["gpu"], concurrency=4, hostname="host",
                           started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(hours=1)))

    def run(run_id, owner, status, minute, size=50, **extra):
        session.add(Run(id=run_id, kind="grid", model="m", params={"size": size}, params_hash="h",
                        owner_id=owner, queue=extra.pop("queue", "gpu"), status=status,
                        created_at=now - timedelta(minutes=60 - minute), **extra))

    # History: three succeeded grids of size 50 took 10, 20 and 30 s (median 20).
    for i, seconds in enumerate((10, 20, 30)):
        run(f"past{i}", c, "succeeded", i, started_at=now - timedelta(minutes=50),
            finished_at=now - timedelta(minutes=50) + timedelta(seconds=seconds))
    session.flush()
    for i, seconds in enumerate((10, 20, 30)):
        started = now - timedelta(minutes=50)
        session.add(RunAttempt(run_id=f"past{i}", attempt=1, worker="w1@host", started_at=started,
                               finished_at=started + timedelta(seconds=seconds), outcome="succeeded"))
    # Alice is running one grid (started 15 s ago) and has 3 queued; Bob queues 1 after her.
    run("a-run", a, "running", 1, started_at=now - timedelta(seconds=15), heartbeat_at=now)
    session.flush()
    session.add(RunAttempt(run_id="a-run", attempt=1, worker="w1@host",
                           started_at=now - timedelta(seconds=15)))
    for i in range(1, 4):
        run(f"a{i}", a, "queued", 1 + i)
    run("b1", b, "queued", 10)
    run("cpu1", b, "queued", 11, queue="cpu")
    session.commit()
    return a, b, c


def test_current_plan_positions_estimates_and_holds(db):
    from models import User
    from workers.queue_plan import current_plan, gpu_queue

    now = NOW  # a fixed afternoon: "today's" GPU use is never cut by midnight
    alice, bob, carol = _seed(db, now)
    plan = current_plan(db, now)
    assert set(plan) == {"a1", "a2", "a3", "b1", "cpu1"}
    # Bob has used no GPU time: he goes first; then Alice's runs in her order.
    gpu = sorted((p for p in plan.values() if p.run_id != "cpu1"), key=lambda p: p.position)
    assert [p.run_id for p in gpu] == ["b1", "a1", "a2", "a3"]
    assert all(p.held_reason is None and p.estimated_duration_s == 20.0 for p in gpu)
    assert gpu[0].basis == "median of 3 past grid runs of this size"
    # Two live slots (the dead worker counts for nothing), one taken by Alice's run (5 s left).
    offsets = [(p.estimated_start - now).total_seconds() for p in gpu]
    assert offsets == [0.0, 5.0, 20.0, 25.0]
    assert plan["cpu1"].position == 1 and plan["cpu1"].estimated_start is not None

    state = gpu_queue(db, now)
    assert (state.slots, state.in_flight, state.free) == (2, 1, 1)

    # Bob reaches his daily cap: his run is held, with the reason; Alice's move up.
    from models import Run
    from models.run import RunAttempt

    db.get(User, bob).daily_gpu_cap_s = 60

    db.add(Run(id="b-done", kind="grid", model="m", params={"size": 50}, params_hash="h", owner_id=bob,
               queue="gpu", status="failed", created_at=now - timedelta(seconds=300)))
    db.flush()
    db.add(RunAttempt(run_id="b-done", attempt=1, worker="w1@host", outcome="failed",
                      started_at=now - timedelta(seconds=120), finished_at=now))
    db.commit()
    plan = current_plan(db, now)
    assert plan["b1"].position is None and plan["b1"].estimated_start is None
    assert plan["b1"].held_reason.startswith("daily GPU cap reached (") \
        and plan["b1"].held_reason.endswith(" s of 60 s); resumes at 00:00 UTC")
    assert [plan[r].position for r in ("a1", "a2", "a3")] == [1, 2, 3]

    # Admin move: Alice's last run to the top.
    db.get(Run, "a3").priority = 1
    db.commit()
    plan = current_plan(db, now)
    assert [plan[r].position for r in ("a3", "a1", "a2")] == [1, 2, 3]


def test_fifo_setting_gives_submission_order(db, monkeypatch):
    from latent_atlas.settings import get_settings
    from workers.queue_plan import current_plan

    now = NOW
    _seed(db, now)
    monkeypatch.setenv("ATLAS_FAIR_SHARE__ORDER", "fifo")
    get_settings.cache_clear()
    plan = current_plan(db, now)
    assert [plan[r].position for r in ("a1", "a2", "a3", "b1")] == [1, 2, 3, 4]


def test_fair_share_settings_are_bounded(monkeypatch):
    from pydantic import ValidationError

    from latent_atlas.settings import Settings

    monkeypatch.setenv("ATLAS_FAIR_SHARE__ORDER", "random")
    with pytest.raises(ValidationError, match="fair"):
        Settings()
    monkeypatch.setenv("ATLAS_FAIR_SHARE__ORDER", "fifo")
    monkeypatch.setenv("ATLAS_FAIR_SHARE__HALF_LIFE_S", "1")
    with pytest.raises(ValidationError, match="half_life_s"):
        Settings()
    monkeypatch.setenv("ATLAS_FAIR_SHARE__HALF_LIFE_S", "7200")
    assert Settings().fair_share.half_life_s == 7200 and Settings().fair_share.order == "fifo"
