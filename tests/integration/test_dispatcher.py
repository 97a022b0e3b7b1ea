"""The gated dispatcher on real databases and brokers (SQLite + SQLite broker, PostgreSQL + Redis).

``dispatch_pending`` is called directly, as the web process, a worker and the
sweeper call it, with a real Celery app sending to the backend's broker; no
worker process consumes the messages, so what was sent stays countable.
Concurrent dispatchers never over-fill the live slots (the dispatch lock).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from harness import migrated_database
from models import Run, RunStatus, User, WorkerSlot, session_scope
from models.base import utcnow
from models.run import RunAttempt

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path, monkeypatch):
    from workers import celery_app, dispatch

    with migrated_database(request.param, tmp_path, monkeypatch, broker=True) as backend:
        monkeypatch.setattr(dispatch, "app", celery_app.make_celery())  # sends to this backend's broker
        with session_scope() as session:
            session.add_all([User(username="alice", password_hash="x"), User(username="bob", password_hash="x")])
        try:
            yield backend
        finally:
            dispatch.app.close()


def _queue(owner: str, n: int) -> list[str]:
    ids = []
    with session_scope() as session:
        owner_id = session.scalar(select(User.id).where(User.username == owner))
        for i in range(n):
            run = Run(kind="geometry", model="tiny", params={"model": "tiny", "seed": i}, params_hash="0" * 64,
                      owner_id=owner_id, status=RunStatus.queued.value, queue="gpu",
                      created_at=utcnow() + timedelta(milliseconds=i))
            session.add(run)
            session.flush()
            ids.append(run.id)
    return ids


def _sent() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(Run.id).where(Run.dispatched_at.is_not(None))))


def test_concurrent_dispatchers_fill_the_live_slots_exactly(database):
    from workers.dispatch import dispatch_pending

    now = utcnow()
    alice = _queue("alice", 4)
    bob = _queue("bob", 2)
    assert dispatch_pending() == []  # no live worker: nothing is sent
    with session_scope() as session:
        session.add(WorkerSlot(name="w1@host", queues=["gpu", "cpu"], concurrency=2, hostname="host",
                               started_at=now, heartbeat_at=now))
        session.add(WorkerSlot(name="gone@host", queues=["gpu"], concurrency=5, hostname="host",
                               started_at=now - timedelta(hours=2), heartbeat_at=now - timedelta(hours=2)))

    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def dispatcher() -> None:
        try:
            start.wait()
            results.append(dispatch_pending())
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    sent = [run_id for result in results for run_id in result]
    # Two live slots: exactly two runs sent, once each; equal usage, so the first of each member.
    assert sorted(sent) == sorted(_sent()) and len(sent) == 2
    assert set(sent) == {alice[0], bob[0]}
    assert dispatch_pending() == []  # full

    # Alice's run ran 30 s and ended: its slot goes to Bob, who has used no GPU time.
    with session_scope() as session:
        session.execute(update(Run).where(Run.id == alice[0])
                        .values(status=RunStatus.succeeded.value, started_at=now, finished_at=utcnow()))
        session.add(RunAttempt(run_id=alice[0], attempt=1, worker="w1@host", outcome="succeeded",
                               started_at=now - timedelta(seconds=30), finished_at=now))
    assert dispatch_pending() == [bob[1]]
    with session_scope() as session:  # Bob's first is cancelled while still queued: its slot frees
        session.execute(update(Run).where(Run.id == bob[0]).values(status=RunStatus.cancelled.value))
    assert dispatch_pending() == [alice[1]]
    assert _sent() == {alice[0], alice[1], bob[0], bob[1]}
