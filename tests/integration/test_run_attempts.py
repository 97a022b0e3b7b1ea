"""Attempt records and the lost-worker path of the run lifecycle, on real databases.

SQLite and PostgreSQL, schema by the Alembic migrations; the lifecycle
functions are called directly (no broker, no worker process), as a worker's
pool child and its main process call them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from harness import migrated_database
from models import Run, RunStatus, User, session_scope
from models.base import utcnow
from models.run import RunAttempt
from workers import lifecycle

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path, monkeypatch):
    env = {"ATLAS_STALE_AFTER": "60", "ATLAS_MAX_ATTEMPTS": "2"}
    with migrated_database(request.param, tmp_path, monkeypatch, env) as backend:
        with session_scope() as session:
            session.add(User(username="alice", password_hash="x", is_admin=False, is_active=True))
        yield backend


def _queued_run(**values) -> str:
    with session_scope() as session:
        owner = session.scalar(select(User.id))
        run = Run(kind="geometry", model="tiny", params={"model": "tiny"}, params_hash="0" * 64,
                  owner_id=owner, status=RunStatus.queued.value, **values)
        session.add(run)
        session.flush()
        return run.id


def _attempts(run_id: str) -> list[RunAttempt]:
    with session_scope() as session:
        return list(session.scalars(select(RunAttempt).where(RunAttempt.run_id == run_id)
                                    .order_by(RunAttempt.attempt)))


def _run(run_id: str) -> Run:
    with session_scope() as session:
        return session.get(Run, run_id)


def test_each_attempt_is_recorded_and_a_retry_keeps_the_first_start(database):
    run_id = _queued_run()
    first = lifecycle.claim(run_id, "w0@host", pid=101)
    assert first is not None and first.attempt == 1
    lifecycle.set_device(run_id, 1, "cpu")
    started = _run(run_id).started_at
    # Attempt 1 stops beating; a minute later another worker takes the run over.
    later = utcnow() + timedelta(seconds=61)
    second = lifecycle.claim(run_id, "w1@host", now=later, pid=202)
    assert second is not None and second.attempt == 2
    assert not lifecycle.heartbeat(run_id, 1)  # the first worker lost the run
    assert lifecycle.finish(run_id, 2, {}, {}, {}, {})
    run = _run(run_id)
    assert run.status == "succeeded" and run.started_at == started  # not the retry's start
    one, two = _attempts(run_id)
    assert (one.attempt, one.worker, one.pid, one.device, one.outcome) == (1, "w0@host", 101, "cpu", "lost")
    assert "no heartbeat" in one.error and one.finished_at == later
    assert (two.attempt, two.worker, two.pid, two.outcome) == (2, "w1@host", 202, "succeeded")
    assert two.started_at == later and two.finished_at is not None


def test_failure_and_cancel_close_the_attempt(database):
    failed, cancelled = _queued_run(), _queued_run()
    lifecycle.claim(failed, "w0@host", pid=1)
    lifecycle.claim(cancelled, "w0@host", pid=1)
    assert lifecycle.fail(failed, 1, "ValueError: bad", "Traceback ...")
    assert lifecycle.mark_cancelled(cancelled, 1)
    assert [(a.outcome, a.error) for a in _attempts(failed)] == [("failed", "ValueError: bad")]
    assert [a.outcome for a in _attempts(cancelled)] == ["cancelled"]


def test_a_dead_worker_process_makes_its_run_claimable_at_once(database):
    run_id = _queued_run()
    assert lifecycle.claim(run_id, "w0@host", pid=101).attempt == 1
    # While the worker beats, nobody else can take the run.
    assert lifecycle.claim(run_id, "w1@host", pid=202) is None
    # Another process of the same worker, or another worker, is not the one that died.
    assert lifecycle.mark_worker_lost(run_id, "w0@host", 999, "lost") is None
    assert lifecycle.mark_worker_lost(run_id, "w9@host", 101, "lost") is None
    assert lifecycle.mark_worker_lost(run_id, "w0@host", 101, "signal 9 (pid 101)") == "running"
    run = _run(run_id)
    assert run.heartbeat_at is None and run.stage == lifecycle.WORKER_LOST_STAGE
    # Claimable now, not after stale_after: the redelivered message retries it.
    retry = lifecycle.claim(run_id, "w1@host", pid=202)
    assert retry is not None and retry.attempt == 2
    one, two = _attempts(run_id)
    assert (one.outcome, one.error) == ("lost", "signal 9 (pid 101)") and two.outcome is None
    # A second report of the same death changes nothing.
    assert lifecycle.mark_worker_lost(run_id, "w0@host", 101, "again") is None
    assert _run(run_id).heartbeat_at is not None


def test_a_dead_worker_process_ends_a_run_out_of_attempts_or_cancelled(database):
    exhausted, cancelling = _queued_run(), _queued_run()
    for run_id in (exhausted, cancelling):
        lifecycle.claim(run_id, "w0@host", pid=1)
    lifecycle.mark_worker_lost(exhausted, "w0@host", 1, "first death")
    lifecycle.claim(exhausted, "w0@host", pid=2)
    assert lifecycle.mark_worker_lost(exhausted, "w0@host", 2, "second death") == "failed"  # max 2
    run = _run(exhausted)
    assert run.status == "failed" and "lost 2 times" in run.error and "second death" in run.error
    assert [a.outcome for a in _attempts(exhausted)] == ["lost", "lost"]

    with session_scope() as session:
        session.execute(update(Run).where(Run.id == cancelling).values(cancel_requested=True))
    assert lifecycle.mark_worker_lost(cancelling, "w0@host", 1, "died") == "cancelled"
    assert _run(cancelling).status == "cancelled"


def test_the_sweeper_ends_a_stale_run_out_of_attempts_and_drops_its_saved_pieces(database):
    import numpy as np

    from workers.checkpoints import StoreCheckpoint
    from workers.sweeper import sweep

    run_id = _queued_run()
    lifecycle.claim(run_id, "w0@host", pid=1)
    lifecycle.claim(run_id, "w1@host", now=utcnow() + timedelta(seconds=61), pid=2)  # attempt 2 of 2
    StoreCheckpoint(run_id).save("grid-direct-cpu.0", {"ids": np.zeros(4, dtype=np.int32)})
    report = sweep(now=utcnow() + timedelta(seconds=200))
    assert report.failed == [run_id] and not report.redispatched
    run = _run(run_id)
    assert run.status == "failed" and "lost 2 times" in run.error
    assert [(a.attempt, a.outcome) for a in _attempts(run_id)] == [(1, "lost"), (2, "lost")]
    assert StoreCheckpoint(run_id).keys() == []
