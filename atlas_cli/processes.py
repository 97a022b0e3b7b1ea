"""The processes ``latent-atlas`` starts: command lines for the web app and Celery workers, their
environment, the checks of ``--queues`` and ``--gpu-memory-fraction``, and the wait for ``/healthz``.

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


def worker_env(gpu_memory_fraction: float | None) -> dict[str, str]:
    """The environment of a worker process: ``ATLAS_GPU_MEMORY_FRACTION`` set when a fraction is given."""
    env = dict(os.environ)
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
