"""A live portal for integration tests and benchmarks: real processes, real services.

``Portal`` starts the web app (gunicorn) and Celery workers as subprocesses of
the ``latent-atlas`` CLI, with their own data directory, database and broker:

* ``sqlite`` backend: the embedded default (SQLite database + SQLite broker);
* ``postgres`` backend: a fresh PostgreSQL database on 127.0.0.1:5432 and a
  Redis database on 127.0.0.1:6379, both removed/flushed afterwards.

Each process logs to ``<data_dir>/logs``; ``Portal.logs()`` returns their tails
for assertion messages. ``started_portal`` is the fixture body most tests share:
backend, portal, workers and users, stopped and cleaned up however the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Skip without Debian's chromium + chromium-driver, or fail when ``ATLAS_REQUIRE_BROWSER`` is set.

    ``make test`` installs them first (``system-deps``) and sets ``ATLAS_REQUIRE_BROWSER=1``,
    so there (and in CI) a browser test never skips silently; ``make test-fast`` or a bare
    ``pytest`` on a machine without them skips.
    """
    import pytest

    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    message = "needs Debian's chromium and chromium-driver (make system-deps)"
    if os.environ.get("ATLAS_REQUIRE_BROWSER"):
        pytest.fail(f"{message}; ATLAS_REQUIRE_BROWSER is set")
    pytest.skip(message)
REDIS_HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Backend:
    name: str
    database_url: str
    broker_url: str
    cleanups: list = field(default_factory=list)

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            fn()


REDIS_DBS = range(1, 16)  # db 0 holds the claims
CLAIM_TTL_S = 3 * 3600


def _claim_redis_db(redis, timeout: float = 600.0):
    """A Redis database no other live portal uses (several test sessions share one Redis).

    Each database is claimed by an atomic ``SET NX`` of a key in db 0 (with a TTL,
    so a crashed session's claim expires); ``release()`` frees it. Waits while
    all are taken.
    """
    claims = redis.Redis(host=REDIS_HOST, port=6379, db=0)
    me = f"{os.getpid()}-{uuid.uuid4().hex}"
    deadline = time.monotonic() + timeout
    while True:
        for db in REDIS_DBS:
            key = f"atlas-it:db:{db}"
            if claims.set(key, me, nx=True, ex=CLAIM_TTL_S):
                def release(key: str = key) -> None:
                    if claims.get(key) == me.encode():
                        claims.delete(key)

                return db, release
        if time.monotonic() > deadline:
            raise TimeoutError("every Redis test database is claimed by another test session")
        time.sleep(1.0)


def make_backend(name: str, data_dir: Path) -> Backend:
    if name == "sqlite":
        return Backend(
            "sqlite",
            f"sqlite:///{data_dir / 'atlas.sqlite'}",
            f"sqla+sqlite:///{data_dir / 'broker.sqlite'}",
        )
    if name != "postgres":
        raise ValueError(name)
    import psycopg
    import redis

    db_name = f"atlas_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis_db, release = _claim_redis_db(redis)
    client = redis.Redis(host=REDIS_HOST, port=6379, db=redis_db)
    client.flushdb()
    backend = Backend(
        "postgres",
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
        f"redis://{REDIS_HOST}:6379/{redis_db}",
    )

    def drop() -> None:
        client.flushdb()
        release()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    backend.cleanups.append(drop)
    return backend


@contextmanager
def migrated_database(name: str, data_dir: Path, monkeypatch: Any, env: dict[str, str] | None = None,
                      broker: bool = False) -> Iterator[Backend]:
    """A migrated database of backend ``name`` that this process's settings point at, for in-process tests.

    Sets ``ATLAS_DATA_DIR``, ``ATLAS_DATABASE_URL`` (and ``ATLAS_BROKER_URL`` when ``broker``) plus
    ``env`` through ``monkeypatch``; afterwards disposes the engine, clears the settings and session
    caches and removes the backend, however the block ends.
    """
    from latent_atlas.settings import get_settings
    from migrations.runner import upgrade
    from models.session import get_engine, get_sessionmaker

    backend = make_backend(name, data_dir)
    variables = {"ATLAS_DATA_DIR": str(data_dir), "ATLAS_DATABASE_URL": backend.database_url,
                 **({"ATLAS_BROKER_URL": backend.broker_url} if broker else {}), **(env or {})}
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        upgrade(backend.database_url)
        yield backend
    finally:
        get_engine(backend.database_url).dispose()
        get_sessionmaker.cache_clear()
        get_engine.cache_clear()
        get_settings.cache_clear()
        backend.cleanup()


class Portal:
    def __init__(
        self,
        data_dir: Path,
        backend: Backend,
        models: dict[str, dict[str, Any]],
        default_model: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "ATLAS_DATA_DIR": str(data_dir),
            "ATLAS_DATABASE_URL": backend.database_url,
            "ATLAS_BROKER_URL": backend.broker_url,
            "ATLAS_MODELS": json.dumps(models),
            "ATLAS_DEFAULT_MODEL": default_model,
            "ATLAS_PORT": str(self.port),
            # No UMAP warm-up: these workers are started and killed many times and run no UMAP;
            # the e2e portal (``latent-atlas up``) keeps the default, on.
            "ATLAS_UMAP_WARMUP": "false",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._log_index = 0

    # -- processes ------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "atlas_cli", *args],
            env=self.env, capture_output=True, text=True, check=check, timeout=300,
        )

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        self._log_index += 1
        log = open(self.log_dir / f"{self._log_index:02d}-{name}.log", "w")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "atlas_cli", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start(self, workers: int = 1) -> Portal:
        self.cli("db", "upgrade")
        self.web = self._spawn("web", "web", "--port", str(self.port), "--workers", "2")
        for _ in range(workers):
            self.start_worker()
        self.wait_healthy()
        return self

    def start_worker(self, queues: str = "gpu,cpu,interactive") -> subprocess.Popen:
        """A Celery worker on ``queues`` (default: every queue, so one worker serves the interactive lane too)."""
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:4]}@%h"
        worker = self._spawn("worker", "worker", "--queues", queues, "--name", name,
                             "--loglevel", "INFO")
        self.workers.append(worker)
        return worker

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker and its pool children)."""
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.wait(timeout=60)

    def wait_healthy(self, timeout: float = 300) -> None:
        """Wait for /healthz; building the Dash app takes ~10 s of CPU, minutes on a loaded 2-core machine."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web is not None and self.web.poll() is not None:
                raise RuntimeError("web process exited:\n" + self.logs())
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError("web app not healthy:\n" + self.logs())

    def stop(self) -> None:
        for process in [*self.workers, *([self.web] if self.web else [])]:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def logs(self, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # -- users and API ----------------------------------------------------------
    def create_user(self, username: str, password: str = "correct-horse-1", admin: bool = False) -> str:
        """Create a user and return an API token for it."""
        args = ["users", "create", username, "--password", password]
        self.cli(*args, *(["--admin"] if admin else []))
        return self.cli("users", "token", username).stdout.strip().splitlines()[-1]

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def submit(self, token: str, params: dict[str, Any], kind: str = "geometry",
               force: bool = True) -> dict[str, Any]:
        """Submit and expect a new queued run (``force``: an identical earlier run is not reused)."""
        response = self.api("POST", "/api/runs", token,
                            json={"kind": kind, "params": params, "force": force})
        assert response.status_code == 201, response.text
        return response.json()

    def wait_for(self, run_id: str, token: str, statuses: set[str], timeout: float = 180,
                 predicate=None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.api("GET", f"/api/runs/{run_id}", token).json()
            if run.get("status") in statuses and (predicate is None or predicate(run)):
                return run
            time.sleep(0.25)
        raise TimeoutError(f"run {run_id} stuck at {run.get('status')} "
                           f"({run.get('stage')}):\n{self.logs()}")


@contextmanager
def started_portal(
    data_dir: Path,
    backend_name: str,
    models: dict[str, dict[str, Any]],
    default_model: str,
    extra: dict[str, str] | None = None,
    workers: int | Sequence[str] = 1,
    users: Sequence[str] = ("alice",),
    admins: Sequence[str] = (),
    password: str = "correct-horse-1",
    broker_url: str | None = None,
) -> Iterator[Portal]:
    """A started portal on a fresh ``backend_name`` backend, with its users' API tokens as attributes.

    ``workers``: a count of default workers (every queue) started with the web
    app, or one queue list per worker (e.g. ``("gpu,cpu", "interactive")``),
    started in that order once the web app is healthy. ``users`` and then
    ``admins`` are created with ``password``; each token is the portal's
    attribute of the user's name (``portal.alice``). ``broker_url`` replaces the
    backend's broker (a private Redis, say); the backend is still cleaned up.

    Invariant: however the block ends (a failed start included), every process
    started is stopped and then the backend is removed.
    """
    names = [*users, *admins]
    backend = make_backend(backend_name, data_dir)
    if broker_url is not None:
        backend.broker_url = broker_url
    live: Portal | None = None
    try:
        live = Portal(data_dir, backend, models, default_model, extra)
        for name in names:
            if not name.isidentifier() or hasattr(live, name) or names.count(name) > 1:
                raise ValueError(f"user name {name!r} cannot be a distinct Portal attribute")
        if isinstance(workers, int):
            live.start(workers=workers)
        else:
            live.start(workers=0)
            for queues in workers:
                live.start_worker(queues)
        for name in names:
            setattr(live, name, live.create_user(name, password, admin=name in admins))
        yield live
    finally:
        if live is not None:
            live.stop()
        backend.cleanup()
