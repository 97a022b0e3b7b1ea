"""A lost worker is visible: heartbeat staleness, the attempts table, Celery's lost-worker report.

Pure functions and components on in-memory runs (no database, no worker).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError

from models.run import Run, RunAttempt
from webapp import components
from webapp.run_health import heartbeat_state
from workers.worker_lost import lost_worker_reason

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _texts(component) -> list[str]:
    """Every string child in a Dash component tree."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, list | tuple):
        return [t for child in component for t in _texts(child)]
    children = getattr(component, "children", None)
    return _texts(children) if children is not None else []


def test_a_late_heartbeat_of_a_running_run_is_a_warning_with_its_age():
    late = heartbeat_state("running", NOW - timedelta(seconds=27.4), NOW, late_after=15)
    assert late.stale and late.age_s == 27.4
    assert late.warning == "worker lost? no heartbeat for 27 s; retrying"
    fresh = heartbeat_state("running", NOW - timedelta(seconds=3), NOW, late_after=15)
    assert not fresh.stale and fresh.warning is None
    cleared = heartbeat_state("running", None, NOW, late_after=15)  # Celery reported the process dead
    assert cleared.stale and cleared.warning == "worker lost; retrying"
    for status in ("queued", "succeeded", "failed", "cancelled"):
        done = heartbeat_state(status, NOW - timedelta(hours=1), NOW, late_after=15)
        assert not done.stale and done.warning is None


def _run(**values) -> Run:
    base = dict(id="abcdefghijkl", kind="grid", model="tiny", params={}, params_hash="0" * 64,
                owner_id=1, title="", tags=[], queue="gpu", status="running", progress=0.27,
                stage="cells", cancel_requested=False, attempts=1, created_at=NOW,
                started_at=NOW, heartbeat_at=NOW, timings={}, environment={}, summary={})
    return Run(**{**base, **values})


def test_the_run_page_and_the_runs_table_say_when_the_worker_looks_lost():
    stale = heartbeat_state("running", NOW - timedelta(seconds=120), NOW, late_after=15)
    note = components.heartbeat_warning(stale.warning)
    assert note.id == "run-heartbeat-warning" and _texts(note) == ["worker lost? no heartbeat for 120 s; retrying"]
    assert components.heartbeat_warning(heartbeat_state("running", NOW, NOW, late_after=15).warning) is None
    row = components.run_row({"id": "abcdefghijkl", "status": "running",
                              "warning": "worker lost; retrying"})
    assert row["warning"] == "worker lost; retrying"


def test_the_run_page_lists_every_attempt_with_its_outcome():
    run = _run(attempts=2)
    run.attempt_records = [
        RunAttempt(attempt=1, worker="w0@host", pid=4242, device="cpu", started_at=NOW,
                   finished_at=NOW + timedelta(seconds=30), outcome="lost",
                   error="Worker exited prematurely: signal 9 (SIGKILL). (pid 4242)"),
        RunAttempt(attempt=2, worker="w1@host", pid=4343, device="cpu",
                   started_at=NOW + timedelta(seconds=32)),
    ]
    table = components.attempts_table(run.attempt_records)
    rows = table.children[1].children
    assert [_texts(row)[:3] for row in rows] == [["1", "w0@host (pid 4242)", "cpu"],
                                                 ["2", "w1@host (pid 4343)", "cpu"]]
    assert "lost" in _texts(rows[0]) and "30.0 s" in _texts(rows[0])
    assert any("SIGKILL" in t for t in _texts(rows[0]))
    assert "running" in _texts(rows[1])
    assert _texts(components.attempts_table([])) == ["No attempt yet."]


def test_celery_reports_a_dead_pool_child_as_a_lost_worker():
    lost = WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 3.")
    assert "signal 9" in lost_worker_reason(lost, cancelled=False)
    assert "signal 9" in lost_worker_reason(ExceptionWithTraceback(lost, "tb"), cancelled=False)
    assert lost_worker_reason(SystemExit(1), cancelled=False).startswith("worker process exited")
    assert lost_worker_reason(SystemExit(1), cancelled=True) is None  # Celery stopped it itself
    assert lost_worker_reason(ValueError("a task error"), cancelled=False) is None
