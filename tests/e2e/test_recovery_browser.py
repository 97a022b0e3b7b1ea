"""The run page in a real browser while its worker is lost and while the web process restarts.

A portal of its own (``harness.Portal``: gunicorn + one Celery worker on the
embedded SQLite default) with a stale timeout far longer than the test, so
what the page shows comes from the heartbeat and Celery's lost-worker report.
"""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
from browser_helpers import log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from harness import Portal, started_portal

pytestmark = pytest.mark.e2e

# A grid: progress moves batch by batch, and the retry resumes from the finished cells.
SLOW = {"model": "tiny-gpt2", "layer": 1, "size": 512, "spacing": 0.02, "plane": "random_projection", "seed": 3}
PASSWORD = "correct-horse-1"


@pytest.fixture
def portal(tmp_path, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    extra = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": "600", "ATLAS_SWEEP_EVERY": "1",
             "ATLAS_LIMITS__MAX_PROMPTS": "2000"}
    with started_portal(tmp_path, "sqlite", models, "tiny-gpt2", extra, password=PASSWORD) as live:
        yield live


def _text(driver, element_id: str) -> str:
    """The element's text read in one script (the page re-renders parts of itself every second)."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText.trim() : '';", element_id)


def _wait_for_status(driver, portal: Portal, run_id: str, status: str, timeout: float) -> None:
    """Wait until the page's badge shows ``status``; on timeout say what the API and the page show."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: _text(d, "run-status-badge") == status)
    except TimeoutException:
        record = portal.api("GET", f"/api/runs/{run_id}", portal.alice).json()
        raise AssertionError(
            f"page shows {_text(driver, 'run-status-badge')!r} ({_text(driver, 'run-stage')!r}); API: "
            f"{record.get('status')} {record.get('stage')} attempts={record.get('attempt_records')}\n"
            + portal.logs()) from None


def _attempt_cells(driver) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#run-attempts tbody tr'))"
        ".map(r => Array.from(r.querySelectorAll('td')).map(td => td.innerText.trim()));")


def test_the_run_page_shows_a_lost_worker_as_it_happens_and_lists_both_attempts(portal, browser):
    log_in(browser, SimpleNamespace(url=portal.url, username="alice", password=PASSWORD))
    run = portal.submit(portal.alice, SLOW, kind="grid")
    running = portal.wait_for(run["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0.05)
    child = running["attempt_records"][0]["pid"]
    browser.get(f"{portal.url}/runs/{run['id']}")
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda d: _text(d, "run-status-badge") == "running")
    assert _text(browser, "run-heartbeat-warning") == ""

    os.kill(child, signal.SIGSTOP)  # the page is not reloaded: its poll must notice
    try:
        wait.until(lambda d: _text(d, "run-heartbeat-warning").startswith("worker lost? no heartbeat for "))
    finally:
        os.kill(child, signal.SIGKILL)
    _wait_for_status(browser, portal, run["id"], "succeeded", 300)
    assert _text(browser, "run-heartbeat-warning") == ""
    cells = _attempt_cells(browser)
    assert [c[0] for c in cells] == ["1", "2"]
    assert cells[0][6] == "lost" and "SIGKILL" in cells[0][7] and cells[1][6] == "succeeded"


def test_an_open_run_page_survives_a_web_restart_and_shows_the_end(portal, browser):
    log_in(browser, SimpleNamespace(url=portal.url, username="alice", password=PASSWORD))
    run = portal.submit(portal.alice, SLOW, kind="grid")
    portal.wait_for(run["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0.05)
    browser.get(f"{portal.url}/runs/{run['id']}")
    wait = WebDriverWait(browser, 240, poll_frequency=0.2)
    wait.until(lambda d: _text(d, "run-status-badge") == "running")

    portal.kill(portal.web, signal.SIGKILL)  # gunicorn and its workers, while the page polls
    portal.web = portal._spawn("web", "web", "--port", str(portal.port), "--workers", "2")
    portal.wait_healthy()
    _wait_for_status(browser, portal, run["id"], "succeeded", 300)
    assert [c[0] for c in _attempt_cells(browser)] == ["1"]
    browser.get(f"{portal.url}/runs/{run['id']}")  # and a fresh load of the page, same session
    _wait_for_status(browser, portal, run["id"], "succeeded", 120)
