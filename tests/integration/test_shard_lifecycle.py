"""A sharded run's state changes on real databases (SQLite, PostgreSQL): plan, claim, progress, merge once, end.

``dispatch_pending`` with two live gpu slots cuts a big grid into two shards
(and then has no slot left for the next run); a shard is claimed once; the
run's progress is the work-unit-weighted mean; the merge is taken by exactly
one of several concurrent callers, and only when every shard succeeded; a
cancel ends every shard, after which a shard's worker learns it lost.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from harness import migrated_database
from latent_atlas.analyses import Cancelled
from latent_atlas.settings import DEMO_MODEL_NAME, Settings, get_settings
from models import Run, RunShard, RunStatus, User, WorkerSlot, session_scope
from models.base import utcnow

pytestmark = pytest.mark.integration

GRID = {"model": DEMO_MODEL_NAME, "layer": 1, "size": 512, "spacing": 0.02, "plane": "random_projection",
        "seed": 3, "top_k": 3}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path, monkeypatch):
    from workers import celery_app, dispatch

    with migrated_database(request.param, tmp_path, monkeypatch, broker=True) as backend:
        app = celery_app.make_celery()
        monkeypatch.setattr(dispatch, "app", app)
        monkeypatch.setattr(celery_app, "app", app)  # send_shards sends to this backend's broker
        now = utcnow()
        with session_scope() as session:
            session.add(User(username="alice", password_hash="x"))
            session.add(WorkerSlot(name="w1@host", queues=["gpu"], concurrency=1, hostname="host",
                                   started_at=now, heartbeat_at=now))
            session.add(WorkerSlot(name="w2@host", queues=["gpu"], concurrency=1, hostname="host",
                                   started_at=now, heartbeat_at=now))
        try:
            yield backend
        finally:
            app.close()


def _queue(params: dict, kind: str = "grid", offset_ms: int = 0) -> str:
    with session_scope() as session:
        owner = session.scalar(select(User.id))
        run = Run(kind=kind, model=params["model"], params=params, params_hash="0" * 64, owner_id=owner,
                  status=RunStatus.queued.value, queue="gpu", created_at=utcnow() + timedelta(milliseconds=offset_ms))
        session.add(run)
        session.flush()
        return run.id


def _run(run_id: str) -> Run:
    with session_scope() as session:
        run = session.get(Run, run_id)
        session.expunge(run)
        return run


def test_a_big_grid_becomes_two_shards_merged_once(database):
    from workers import shards
    from workers.dispatch import dispatch_pending
    from workers.lifecycle import LostOwnership

    big = _queue(GRID)
    small = _queue({**GRID, "size": 64}, offset_ms=5)
    assert dispatch_pending() == [big]  # both slots go to the big run's shards
    assert dispatch_pending() == []  # in flight: 2 shards = 2 slots
    run = _run(big)
    assert run.status == "running" and run.worker == "2 shards"
    with session_scope() as session:
        rows = shards.shard_rows(session, big)
        assert [(r.idx, r.count, r.units, r.status) for r in rows] == [
            (0, 2, 131072, "queued"), (1, 2, 131072, "queued")]
        assert rows[0].spec == {"index": 0, "count": 2, "begin": 0, "end": 131072}
    assert _run(small).dispatched_at is None

    one = shards.claim(big, 0, "w1@host", pid=1)
    assert one is not None and one.attempt == 1 and one.spec["end"] == 131072
    assert shards.claim(big, 0, "w2@host") is None  # claimed once
    two = shards.claim(big, 1, "w2@host", pid=2)
    shards.report_progress(big, 0, 1, 0.5, "cells")
    assert _run(big).progress == pytest.approx(0.25)
    with pytest.raises(LostOwnership):  # not ours: attempt 2 does not exist
        shards.report_progress(big, 0, 2, 0.5, "cells")

    assert shards.succeed(big, 0, 1, "shards/x/0.1") is False
    assert shards.claim_merge(big) is None  # shard 1 still running
    assert shards.succeed(big, 1, two.attempt, "shards/x/1.1") is True

    taken: list = []
    barrier = threading.Barrier(4)

    def merger() -> None:
        barrier.wait()
        taken.append(shards.claim_merge(big))

    threads = [threading.Thread(target=merger) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [t for t in taken if t is not None]
    assert len(winners) == 1 and winners[0][0] == 2  # the merge attempt (dispatch was 1)
    assert _run(big).stage == shards.MERGING
    assert dispatch_pending() == [small]  # the shards ended: a slot is free again


def test_cancel_ends_every_shard_and_their_workers_learn_it(database):
    from workers import shards
    from workers.dispatch import dispatch_pending
    from workers.lifecycle import LostOwnership, claim

    big = _queue(GRID)
    assert dispatch_pending() == [big]
    assert claim(big, "w1@host") is None  # a sharded run is never claimed whole
    first = shards.claim(big, 0, "w1@host")
    with session_scope() as session:
        session.get(Run, big).cancel_requested = True
    with pytest.raises(Cancelled):
        shards.report_progress(big, 0, first.attempt, 0.1, "cells")
    assert shards.claim(big, 1, "w2@host") is None  # no new shard starts once cancel was asked
    assert shards.end_run(big, RunStatus.cancelled.value, shard=(0, first.attempt))
    assert _run(big).status == "cancelled"
    with session_scope() as session:
        assert {r.status for r in shards.shard_rows(session, big)} == {"cancelled"}
    with session_scope() as session:
        session.get(Run, big).cancel_requested = False  # even then the ended shard's worker is refused
    with pytest.raises(LostOwnership):
        shards.report_progress(big, 0, first.attempt, 0.2, "cells")


def test_a_lost_shard_is_claimable_again_and_sharding_can_be_turned_off(database, monkeypatch):
    from workers import shards
    from workers.dispatch import dispatch_pending

    big = _queue(GRID)
    assert dispatch_pending() == [big]
    first = shards.claim(big, 1, "w1@host", pid=11)
    assert shards.claim(big, 1, "w2@host") is None
    assert shards.mark_lost(big, 1, "w1@host", 11, "SIGKILL") == "running"
    again = shards.claim(big, 1, "w2@host", pid=12)
    assert again is not None and again.attempt == first.attempt + 1
    with session_scope() as session:
        assert session.scalar(select(RunShard.status).where(RunShard.run_id == big, RunShard.idx == 0)) == "queued"

    monkeypatch.setenv("ATLAS_SHARDING__ENABLED", "false")
    get_settings.cache_clear()
    with session_scope() as session:
        session.get(Run, big).status = RunStatus.succeeded.value
    whole = _queue({**GRID, "seed": 4})
    assert dispatch_pending() == [whole]
    assert _run(whole).status == "queued" and _run(whole).dispatched_at is not None
    with session_scope() as session:
        assert not shards.shard_rows(session, whole)


def test_sharding_settings_are_checked():
    assert Settings(sharding={"min_units_per_shard": {"grid": 65536}}).sharding.min_units_per_shard == {"grid": 65536}
    with pytest.raises(ValueError, match="min_units_per_shard"):
        Settings(sharding={"min_units_per_shard": {"grid": 0}})
    with pytest.raises(ValueError):
        Settings(sharding={"min_units_per_shard": {"scan": 10}})
    with pytest.raises(ValueError):
        Settings(sharding={"enabled": True, "other": 1})
