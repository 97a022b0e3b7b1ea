"""The recoveries the design promises: the broker restarted empty, the web process restarted.

* Redis restarted with nothing persisted, while one run is running, two are
  queued and one is submitted during the outage: every run still ends in
  exactly one terminal state, each with a single attempt. The Redis here is a
  private ``redis-server`` on its own port (no RDB, no AOF), started and
  killed by the test; the database is a fresh PostgreSQL one.
* The web process killed and started again during a run: the run still ends,
  and the restarted web process serves it (API and page).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from harness import free_port, started_portal

pytestmark = pytest.mark.integration

SLOW = {"model": "tiny-gpt2", "prompts": [f"p{i}" for i in range(600)], "batch_size": 1, "max_tokens": 8}
QUICK = {"model": "tiny-gpt2", "prompts": ["The cat sat on the mat."], "max_tokens": 32}
TERMINAL = {"succeeded", "failed", "cancelled"}
EXTRA = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": "4", "ATLAS_SWEEP_EVERY": "1",
         "ATLAS_REDISPATCH_AFTER": "3", "ATLAS_LIMITS__MAX_PROMPTS": "2000"}


class PrivateRedis:
    """A ``redis-server`` that keeps nothing on disk, on a port of its own."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        for _ in range(200):
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def redis_portal(tmp_path, tiny_gpt2_dir):
    server = PrivateRedis(tmp_path).start()
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    try:
        with started_portal(tmp_path, "postgres", models, "tiny-gpt2", EXTRA,
                            broker_url=f"redis://127.0.0.1:{server.port}/0") as live:
            live.redis = server
            yield live
    finally:
        server.kill()


def test_redis_restarted_empty_every_run_ends_in_exactly_one_terminal_state(redis_portal):
    portal = redis_portal
    running = portal.submit(portal.alice, SLOW)
    portal.wait_for(running["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0.05)
    queued = [portal.submit(portal.alice, QUICK)["id"] for _ in range(2)]
    assert all(portal.api("GET", f"/api/runs/{q}", portal.alice).json()["status"] == "queued"
               for q in queued)

    portal.redis.kill()  # nothing persisted: the queued messages are gone
    assert portal.api("GET", f"/api/runs/{running['id']}", portal.alice).json()["status"] == "running"
    during = portal.submit(portal.alice, QUICK)  # accepted into the database while the broker is down
    assert during["status"] == "queued"
    portal.redis.start()

    runs = [running["id"], *queued, during["id"]]
    finished = {r: portal.wait_for(r, portal.alice, TERMINAL, 240) for r in runs}
    for run_id, run in finished.items():
        assert run["status"] == "succeeded", (run_id, run.get("error"), portal.logs())
        assert run["attempts"] == 1, run
        assert [a["outcome"] for a in run["attempt_records"]] == ["succeeded"]
    # Nothing runs again afterwards: one more run goes through and the others stay as they are.
    after = portal.wait_for(portal.submit(portal.alice, QUICK)["id"], portal.alice, TERMINAL, 120)
    assert after["status"] == "succeeded"
    for run_id in runs:
        again = portal.api("GET", f"/api/runs/{run_id}", portal.alice).json()
        assert (again["status"], again["attempts"]) == ("succeeded", 1)


@pytest.fixture
def sqlite_portal(tmp_path, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with started_portal(tmp_path, "sqlite", models, "tiny-gpt2", EXTRA) as live:
        yield live


def test_web_process_restarted_during_a_run_the_run_ends_and_is_served(sqlite_portal):
    portal = sqlite_portal
    browser = requests.Session()  # a logged-in user, as a browser would be
    form = browser.get(portal.url + "/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    fields = {"username": "alice", "password": "correct-horse-1", **({"csrf_token": csrf[1]} if csrf else {})}
    login = browser.post(portal.url + "/login", data=fields, timeout=30, allow_redirects=False)
    assert login.status_code in (302, 303), login.text
    run = portal.submit(portal.alice, SLOW)
    portal.wait_for(run["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0.05)

    portal.kill(portal.web, signal.SIGKILL)  # gunicorn and all its workers, mid-run
    with pytest.raises(requests.ConnectionError):
        requests.get(portal.url + "/healthz", timeout=5)
    portal.web = portal._spawn("web", "web", "--port", str(portal.port), "--workers", "2")
    portal.wait_healthy()

    done = portal.wait_for(run["id"], portal.alice, TERMINAL, 240)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done.get("error")
    # The same login still works against the new process, and the run page is served.
    page = browser.get(portal.url + f"/runs/{run['id']}", timeout=30, allow_redirects=False)
    assert page.status_code == 200 and "_dash-config" in page.text
    detail = browser.get(portal.url + f"/api/runs/{run['id']}", timeout=30)
    assert detail.status_code == 200 and detail.json()["status"] == "succeeded"
