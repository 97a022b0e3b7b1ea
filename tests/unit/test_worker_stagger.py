"""`latent-atlas up` starts its workers one by one: the next once the last has entered the registry.

Real processes and the real registry (``workers.worker_registry.register`` on a
migrated SQLite database); the "workers" are small Python programs that register
the way a Celery worker's ``worker_ready`` handler does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atlas_cli import processes
from harness import migrated_database

# Writes its start time, registers after DELAY seconds (unless DELAY < 0: never), then lives on.
FAKE_WORKER = """
import os, sys, time
start = time.time()
delay, stamp = float(sys.argv[1]), sys.argv[2]
from workers.worker_registry import WorkerInfo, register
if delay >= 0:
    time.sleep(delay)
    register(WorkerInfo(name=f"fake-{os.getpid()}", queues=("gpu",), concurrency=1, hostname="h", pid=os.getpid()))
open(stamp, "w").write(f"{start} {time.time()}")
time.sleep(120)
"""


@pytest.fixture
def registry(tmp_path, monkeypatch):
    started: list[subprocess.Popen] = []
    with migrated_database("sqlite", tmp_path, monkeypatch):
        try:
            yield started
        finally:
            for process in started:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=30)


def _worker(delay: float, stamp: Path) -> tuple[list[str], dict[str, str]]:
    import os

    root = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-c", FAKE_WORKER, str(delay), str(stamp)], {**os.environ, "PYTHONPATH": root}


def _times(stamp: Path, timeout: float = 120) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while not (stamp.exists() and stamp.read_text().strip()):
        assert time.monotonic() < deadline, f"{stamp} never written"
        time.sleep(0.1)
    start, registered = stamp.read_text().split()
    return float(start), float(registered)


def test_the_second_worker_starts_after_the_first_registered(registry, tmp_path):
    logged: list[str] = []
    workers = [_worker(1.0, tmp_path / "a"), _worker(0.0, tmp_path / "b")]
    assert processes.start_workers_one_by_one(workers, registry, 120, logged.append)
    assert len(registry) == 2 and logged == []
    _, first_registered = _times(tmp_path / "a")
    second_started, _ = _times(tmp_path / "b")
    assert second_started >= first_registered


def test_a_worker_that_exits_at_start_stops_the_sequence(registry, tmp_path):
    import os

    workers = [([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ)), _worker(0.0, tmp_path / "b")]
    assert not processes.start_workers_one_by_one(workers, registry, 120, print)
    assert len(registry) == 1  # the second was never started


def test_a_worker_that_never_registers_delays_the_next_by_the_timeout_only(registry, tmp_path):
    logged: list[str] = []
    workers = [_worker(-1, tmp_path / "a"), _worker(0.0, tmp_path / "b")]
    begun = time.monotonic()
    assert processes.start_workers_one_by_one(workers, registry, 2.0, logged.append)
    assert time.monotonic() - begun >= 2.0 and len(registry) == 2
    assert logged == ["warning: worker 1 did not register within 2 s; starting the next anyway"]


def test_an_old_row_with_the_same_pid_does_not_count(registry):
    from workers.worker_registry import WorkerInfo, register

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry.append(sleeper)
    info = WorkerInfo(name="atlas@h", queues=("gpu",), concurrency=1, hostname="h", pid=sleeper.pid)
    register(info, now=datetime.now(UTC) - timedelta(minutes=5))  # a row left by an earlier run
    assert not processes.wait_worker_registered(sleeper, timeout=1.0, poll_s=0.2)
    register(info)
    assert processes.wait_worker_registered(sleeper, timeout=5.0, poll_s=0.2)
