"""Fair-share dispatch with real workers, on SQLite (database + broker) and on PostgreSQL + Redis.

* The issue's test: member A queues 6 runs, then B queues 1; B's run starts as
  soon as A's current run ends, and A's runs all succeed, in A's order. To be
  sure that every submission lands while A's first run is still running
  (whatever the machine's load), that run's worker process is paused
  (SIGSTOP, outside any database write) for the submissions and resumed
  (SIGCONT) after them; the stale timeout (600 s) is far longer, so nothing
  is taken over meanwhile.
* A member over their daily GPU cap has their runs held, with the reason in
  the API; lifting the cap lets the next sweep dispatch them.
* ``fair_share.order = fifo`` gives submission order; there the worker starts
  after the submissions, so the worker's start is what dispatches them.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

# A short real run on the tiny model (one batch).
SHORT = {"model": "tiny-gpt2", "prompts": ["p0", "p1", "p2"], "max_tokens": 8}
# A's first run: many one-prompt batches, so it is caught running (then paused while the others are submitted).
FIRST = {**SHORT, "prompts": [f"p{i}" for i in range(40)], "batch_size": 1}
DONE = {"succeeded", "failed", "cancelled"}


def _portal(request, tmp_path_factory, tiny_gpt2_dir, prefix: str, extra: dict[str, str], workers: int):
    """A started portal (alice and bob) on the backend ``request.param``."""
    data_dir = tmp_path_factory.mktemp(f"{prefix}-{request.param}")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    env = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": "600", "ATLAS_SWEEP_EVERY": "1", **extra}
    return started_portal(data_dir, request.param, models, "tiny-gpt2", env, workers=workers,
                          users=("alice", "bob"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def portal(request, tmp_path_factory, tiny_gpt2_dir):
    with _portal(request, tmp_path_factory, tiny_gpt2_dir, "fair", {}, workers=1) as live:
        yield live


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fifo_portal(request, tmp_path_factory, tiny_gpt2_dir):
    # workers=0: the worker starts after the submissions, in the test
    with _portal(request, tmp_path_factory, tiny_gpt2_dir, "fifo", {"ATLAS_FAIR_SHARE__ORDER": "fifo"},
                 workers=0) as live:
        yield live


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _get(portal: Portal, run_id: str, token: str) -> dict:
    response = portal.api("GET", f"/api/runs/{run_id}", token)
    assert response.status_code == 200, response.text
    return response.json()


def _dispatched(portal: Portal, run_ids: list[str]) -> dict[str, bool]:
    with create_engine(portal.backend.database_url).connect() as conn:
        rows = conn.execute(text("SELECT id, dispatched_at FROM runs")).all()
    return {run_id: at is not None for run_id, at in rows if run_id in run_ids}


def _pause(portal: Portal, pid: int) -> None:
    """SIGSTOP ``pid`` at a moment it holds no SQLite write lock (else every writer would wait on it).

    On PostgreSQL a paused process's row locks block nobody here (the
    dispatcher never writes a running run's row), so the first stop will do.
    """
    for _ in range(1000):
        os.kill(pid, signal.SIGSTOP)
        if portal.backend.name != "sqlite":
            return
        probe = sqlite3.connect(portal.backend.database_url.split("///", 1)[1], timeout=0.2,
                                isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")  # the write lock is free: the paused process holds none
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)  # caught inside a write: let it finish, stop it again
        finally:
            probe.close()
    raise AssertionError(f"could not pause process {pid} outside a database write")


def test_a_newcomer_runs_as_soon_as_the_current_run_ends(portal):
    a_first = portal.submit(portal.alice, FIRST)
    running = portal.wait_for(a_first["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0)
    child = running["attempt_records"][0]["pid"]
    _pause(portal, child)  # A's first run stays running until every submission is in
    try:
        a_rest = [portal.submit(portal.alice, {**SHORT, "seed": i}) for i in range(1, 6)]
        b_run = portal.submit(portal.bob, SHORT)
        # Nothing more is in the broker: one slot, taken. The order is decided when it frees.
        waiting = [r["id"] for r in [*a_rest, b_run]]
        assert _dispatched(portal, waiting) == {run_id: False for run_id in waiting}
        # The plan shows it: B has used no GPU time, so B is next, then A in A's order.
        b_view = _get(portal, b_run["id"], portal.bob)
        assert b_view["queue_position"] == 1 and b_view["held_reason"] is None
        assert b_view["estimate_basis"] and b_view["estimated_start"] is not None
        assert [_get(portal, r["id"], portal.alice)["queue_position"] for r in a_rest] == [2, 3, 4, 5, 6]
        listed = {r["id"]: r for r in portal.api("GET", "/api/runs", portal.alice).json()["runs"]}
        assert listed[b_run["id"]]["queue_position"] == 1
    finally:
        os.kill(child, signal.SIGCONT)

    a_runs = [a_first, *a_rest]
    done_a = [portal.wait_for(r["id"], portal.alice, DONE) for r in a_runs]
    done_b = portal.wait_for(b_run["id"], portal.bob, DONE)
    assert [r["status"] for r in done_a] == ["succeeded"] * 6, [r.get("error") for r in done_a]
    assert done_b["status"] == "succeeded", done_b.get("error")
    a_starts = [_time(r["started_at"]) for r in done_a]
    assert a_starts == sorted(a_starts), "A's runs started out of A's order"
    b_start = _time(done_b["started_at"])
    assert _time(done_a[0]["finished_at"]) <= b_start < a_starts[1]
    assert all(r["attempts"] == 1 for r in [*done_a, done_b])
    # Finished runs have no place in the queue.
    assert done_b["queue_position"] is None and done_b["estimated_start"] is None


def test_a_member_over_the_daily_cap_is_held_until_it_is_lifted(portal):
    from models import Run, User
    from models.run import RunAttempt

    now = datetime.now(UTC)
    since_midnight = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    if since_midnight < 200:  # the live dispatcher counts from 00:00 UTC: let 120 s of "today" exist first
        time.sleep(200 - since_midnight)
        now = datetime.now(UTC)
    engine = create_engine(portal.backend.database_url)
    with Session(engine) as session:  # 120 s of GPU time today, a cap of 60 s
        bob = session.query(User).filter_by(username="bob").one()
        past = Run(id=uuid.uuid4().hex[:12], kind="geometry", model="tiny-gpt2", params=SHORT,
                   params_hash="x" * 64, owner_id=bob.id, queue="gpu", status="failed", stage="failed",
                   created_at=now - timedelta(seconds=150), started_at=now - timedelta(seconds=130),
                   finished_at=now - timedelta(seconds=10))
        session.add(past)
        session.flush()
        session.add(RunAttempt(run_id=past.id, attempt=1, worker="elsewhere", outcome="failed",
                               started_at=now - timedelta(seconds=130), finished_at=now - timedelta(seconds=10)))
        bob.daily_gpu_cap_s = 60
        session.commit()
        bob_id = bob.id

    held = portal.submit(portal.bob, SHORT)
    view = _get(portal, held["id"], portal.bob)
    assert view["status"] == "queued" and view["queue_position"] is None and view["estimated_start"] is None
    # 120 s from the record above, plus Bob's run of the first test.
    reason = re.fullmatch(r"daily GPU cap reached \((\d+) s of 60 s\); resumes at 00:00 UTC", view["held_reason"])
    assert reason is not None and int(reason.group(1)) >= 120, view["held_reason"]
    listed = {r["id"]: r for r in portal.api("GET", "/api/runs?owner=bob", portal.bob).json()["runs"]}
    assert listed[held["id"]]["held_reason"] == view["held_reason"]

    # A's run, submitted after, goes past it; the dispatcher ran again after it ended.
    other = portal.wait_for(portal.submit(portal.alice, SHORT)["id"], portal.alice, DONE)
    assert other["status"] == "succeeded", other.get("error")
    still = _get(portal, held["id"], portal.bob)
    assert still["status"] == "queued" and still["held_reason"] and still["attempts"] == 0
    assert _dispatched(portal, [held["id"]]) == {held["id"]: False}

    with Session(engine) as session:  # an admin lifts the cap: the next sweep sends it
        session.execute(update(User).where(User.id == bob_id).values(daily_gpu_cap_s=None))
        session.commit()
    done = portal.wait_for(held["id"], portal.bob, DONE, 120)
    assert done["status"] == "succeeded", done.get("error")
    assert _time(done["started_at"]) > _time(other["finished_at"])


def test_fifo_order_and_a_worker_started_after_the_submissions(fifo_portal):
    portal = fifo_portal
    runs = [(portal.alice, portal.submit(portal.alice, {**SHORT, "seed": i})) for i in range(3)]
    runs.append((portal.bob, portal.submit(portal.bob, SHORT)))
    # No worker yet: positions in submission order, no start estimate, nothing sent.
    views = [_get(portal, run["id"], token) for token, run in runs]
    assert [v["queue_position"] for v in views] == [1, 2, 3, 4]
    assert all(v["estimated_start"] is None and v["estimate_basis"] for v in views)
    ids = [run["id"] for _, run in runs]
    assert _dispatched(portal, ids) == {run_id: False for run_id in ids}

    portal.start_worker()  # its start dispatches what its slot allows
    done = [portal.wait_for(run["id"], token, DONE) for token, run in runs]
    assert [r["status"] for r in done] == ["succeeded"] * 4, [r.get("error") for r in done]
    starts = [_time(r["started_at"]) for r in done]
    assert starts == sorted(starts), "runs did not start in submission order"
    for earlier, later in zip(done, done[1:], strict=False):
        assert _time(earlier["finished_at"]) <= _time(later["started_at"])  # one slot: one at a time
