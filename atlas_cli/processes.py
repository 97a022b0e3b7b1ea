"""The processes ``latent-atlas`` starts: command lines for the web app and Celery workers, their
environment (GPU memory share, torch threads), the checks of ``--queues``, ``--concurrency`` and
``--gpu-memory-fraction``, and the waits for ``/healthz`` and for a worker's registration.

Pure builders (no process is started here); ``atlas_cli.main`` runs them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from latent_atlas.settings import get_settings


def web_command(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        "--threads", "4",
        "--timeout", "120",
        "--access-logfile", "-",
        "webapp.app:wsgi()",
    ]


def worker_command(queues: str, concurrency: int, loglevel: str, name: str) -> list[str]:
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--pool", "prefork",
        "--loglevel", loglevel, "--hostname", name,
    ]
    if queues == "interactive":
        # A lane-only worker runs nothing longer than the lane allows, even a message without limits.
        lane = get_settings().interactive
        command += ["--soft-time-limit", str(lane.soft_time_limit), "--time-limit", str(lane.hard_time_limit)]
    if get_settings().broker_url.startswith("sqla+"):
        # The SQL transport has no broadcast: no gossip, mingle or remote control.
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return command


def check_queues(queues: str) -> str:
    """``--queues``: comma-separated names from ``workers.celery_app.QUEUES``; SystemExit names them."""
    known = ("gpu", "cpu", "interactive")  # workers.celery_app.QUEUES (not imported: no Celery here)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in known]
    if not names or unknown:
        raise SystemExit(f"error: --queues {queues!r}: unknown queue(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(known)}")
    return ",".join(names)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fraction of the GPU's memory is in (0, 1], got {value:g}")
    return value


MAX_CONCURRENCY = 64


def concurrency(text: str) -> int:
    """``--concurrency``: a whole number of pool processes in 1..64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"a worker runs 1 to {MAX_CONCURRENCY} pool processes, got {value}")
    return value


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def default_torch_threads(cores: int, worker_processes: int) -> int:
    """Torch threads per worker process when ``worker_processes`` share ``cores``: ``cores // processes``, >= 1.

    Invariant: threads x processes <= cores whenever there are at least as
    many cores as processes (no oversubscription), and never 0 threads.
    """
    if cores < 1 or worker_processes < 1:
        raise ValueError(f"cores ({cores}) and worker processes ({worker_processes}) must be at least 1")
    return max(1, cores // worker_processes)


def torch_threads(worker_processes: int) -> int:
    """``settings.torch_threads`` (``ATLAS_TORCH_THREADS``) when set, else ``default_torch_threads``."""
    configured = get_settings().torch_threads
    if configured is not None:
        return configured
    return default_torch_threads(usable_cores(), worker_processes)


def worker_env(gpu_memory_fraction: float | None, threads: int) -> dict[str, str]:
    """The environment of a worker process: ``ATLAS_TORCH_THREADS`` (1..1024) and, when a fraction is
    given, ``ATLAS_GPU_MEMORY_FRACTION``."""
    if not 1 <= threads <= 1024:
        raise ValueError(f"torch threads must be in 1..1024, got {threads}")
    env = dict(os.environ)
    env["ATLAS_TORCH_THREADS"] = str(threads)
    if gpu_memory_fraction is not None:
        env["ATLAS_GPU_MEMORY_FRACTION"] = f"{gpu_memory_fraction:g}"
    return env


def wait_healthy(url: str, timeout: float, processes: list[subprocess.Popen]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def wait_worker_registered(process: subprocess.Popen, timeout: float, poll_s: float = 0.5) -> bool:
    """Wait until the Celery worker ``process`` has entered itself in the registry of live workers.

    True once a ``worker_slots`` row carries this process's pid with a heartbeat
    written after the wait began (its ``worker_ready`` handler wrote it: the
    worker has declared its queues and consumes); False when the process exits
    first or ``timeout`` seconds pass. A worker started after this returns does
    not declare queues at the same instant as this one: the SQL broker's
    declarations on its own table can fail when two race.
    """
    from sqlalchemy import select

    from models import WorkerSlot, session_scope
    from models.base import utcnow

    since = utcnow().replace(microsecond=0)  # a heartbeat stored without sub-seconds still counts
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return False
        with session_scope() as session:
            found = session.scalar(select(WorkerSlot.name).where(
                WorkerSlot.pid == process.pid, WorkerSlot.heartbeat_at >= since))
        if found is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def start_workers_one_by_one(workers: list[tuple[list[str], dict[str, str]]], processes: list[subprocess.Popen],
                             timeout: float, log: Callable[[str], None]) -> bool:
    """Start each ``(command, env)`` worker once the one before it has registered (``wait_worker_registered``).

    Each started process is appended to ``processes`` (the caller stops them).
    False when a worker exits before it registers; a worker that does not
    register within ``timeout`` seconds is logged and the next one starts anyway.
    Invariant: no two workers are started in the same instant.
    """
    for index, (command, env) in enumerate(workers):
        process = subprocess.Popen(command, env=env)
        processes.append(process)
        if index == len(workers) - 1:
            break
        if not wait_worker_registered(process, timeout):
            if process.poll() is not None:
                return False
            log(f"warning: worker {index + 1} did not register within {timeout:.0f} s; starting the next anyway")
    return True
