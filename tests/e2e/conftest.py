"""Fixtures for browser tests: a live portal started like ``make up`` and headless Chromium.

The portal is ``latent-atlas up --port PORT --no-fetch`` (migrations, first
admin, gunicorn web app and one Celery worker on the embedded SQLite default)
with its own data directory and the tiny random GPT-2 as its only model. It
runs in its own process group, which the finalizer terminates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness import CHROMEDRIVER, CHROMIUM, require_chromium

CHROME_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--window-size=1400,1000",
)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@dataclass
class LivePortal:
    url: str
    data_dir: Path
    log_path: Path
    username: str
    password: str

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def live_portal(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[LivePortal]:
    data_dir = tmp_path_factory.mktemp("atlas-e2e")
    port = _free_port()
    env = {
        **os.environ,
        "ATLAS_DATA_DIR": str(data_dir),
        "ATLAS_MODELS": json.dumps({"tiny-gpt2": {"source": str(tiny_gpt2_dir),
                                                  "description": "tiny random GPT-2"}}),
        "ATLAS_DEFAULT_MODEL": "tiny-gpt2",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("ATLAS_DATABASE_URL", "ATLAS_BROKER_URL", "ATLAS_ARTIFACT_URL", "ATLAS_PORT"):
        env.pop(name, None)
    log_path = data_dir / "up.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finalizer
    process = subprocess.Popen(
        [sys.executable, "-m", "atlas_cli", "up", "--port", str(port), "--no-fetch"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError("latent-atlas up exited:\n" + log_path.read_text()[-6000:])
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the portal did not come up:\n" + log_path.read_text()[-6000:])
            time.sleep(0.5)
        username, password = (data_dir / "admin-password.txt").read_text().splitlines()[:2]
        yield LivePortal(url, data_dir, log_path, username, password)
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def browser():
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
