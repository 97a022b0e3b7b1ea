"""The admin's queue page, a queued run's place on its page, and bulk actions in /runs, in a real browser.

Four large grids hold the live portal's one GPU slot (the first runs, the
others wait), three small grids queue behind them (7 runs: the per-member
limit is 8). The admin moves the last
run of the queue to the top on /admin/queue and sees it come before every
run still waiting; the run page of a waiting run says its place and estimated
start; two runs are cancelled at once from /runs after a confirmation naming
the count. Whatever the order fair share gives (small runs first or not), each
run the checks read is still waiting behind at least one whole large grid,
and a run moved to the top is sent next, so it is never behind a run still
waiting.
"""

from __future__ import annotations

import re

import pytest
from browser_helpers import api_session, log_in
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

PLACE = re.compile(r"\d+(st|nd|rd|th) in the GPU queue, estimated start ~(\d{4}-\d\d-\d\d )?\d\d:\d\d UTC "
                   r"\((now|in [^;]+); [^)]+\)")


def _submit(api, portal, size: int, title: str) -> str:
    """A grid run; the large ones inject at layer 0 (every block runs: ~30 s each on this machine)."""
    params = {"model": "tiny-gpt2", "layer": 0 if size > 64 else 1, "size": size}
    response = api.post(f"{portal.url}/api/runs", json={"kind": "grid", "title": title, "force": True,
                                                        "params": params}, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _table_order(driver) -> list[str]:
    """Run IDs of the queue table's rows, read in one script (the table is rebuilt every few seconds)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#admin-queue-table tbody tr')].map(r => r.dataset.run);")


def _row_text(driver, run_id: str) -> str:
    return driver.execute_script(
        "const r = document.querySelector(`#admin-queue-table tr[data-run='${arguments[0]}']`);"
        "return r ? r.innerText : '';", run_id)


def _clicked(driver, css: str) -> bool:
    """Click the first displayed element matching ``css``; False (try again) while there is none or
    it was replaced between finding and clicking (the page redraws on its own every few seconds)."""
    try:
        element = next((e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None)
        if element is None:
            return False
        element.click()
        return True
    except StaleElementReferenceException:
        return False


def _waiting(api, portal) -> list[str]:
    """Queued runs not yet sent to a worker, in dispatch order (the admin API)."""
    rows = api.get(f"{portal.url}/api/admin/queue", timeout=30).json()["runs"]
    return [r["id"] for r in rows if r["status"] == "queued" and not r["sent"]]


def test_admin_moves_a_run_to_the_top(live_portal, browser, artifacts_dir):
    portal, wait = live_portal, WebDriverWait(browser, 30)
    log_in(browser, portal)
    api = api_session(browser, portal)
    ours = [_submit(api, portal, 512, f"e2e queue blocker {n}") for n in (1, 2, 3, 4)]
    ours += [_submit(api, portal, 8, f"e2e queue small {n}") for n in (1, 2, 3)]
    try:
        # The worker takes the first grid once it is up (the portal may still be warming it).
        WebDriverWait(api, 240, poll_frequency=0.5).until(
            lambda s: s.get(f"{portal.url}/api/runs/{ours[0]}", timeout=30).json()["status"] == "running")
        browser.get(portal.url + "/admin/queue")
        wait.until(EC.presence_of_element_located((By.ID, "admin-queue-table")))
        browser.save_screenshot(str(artifacts_dir / "e2e-queue-before.png"))
        waiting = _waiting(api, portal)
        assert len(waiting) >= 3, waiting
        target = waiting[-1]  # the last run of the queue

        wait.until(lambda d: _clicked(d, f"tr[data-run='{target}'] button[id*='queue-top']"))
        alert = wait.until(EC.visibility_of_element_located((By.ID, "admin-queue-alert")))
        assert alert.text == f"Moved {target} to the top of its queue."

        def first_of_the_waiting(driver) -> bool:
            """The table shows the target before every other run still waiting (a refresh
            computed just before the move may paint the old order for one more tick)."""
            order, others = _table_order(driver), [r for r in _waiting(api, portal) if r != target]
            return bool(others) and target in order and all(
                r in order and order.index(target) < order.index(r) for r in others)

        wait.until(first_of_the_waiting)
        row = _row_text(browser, target)
        assert "e2e queue" in row and "grid" in row
        browser.save_screenshot(str(artifacts_dir / "e2e-queue-after-move.png"))
        assert portal.username in browser.execute_script(
            "const t = document.getElementById('admin-members-table'); t.scrollIntoView(); return t.innerText;")
        browser.save_screenshot(str(artifacts_dir / "e2e-queue-members.png"))
        history = api.get(f"{portal.url}/api/runs/{target}", timeout=30).json()["events"]
        assert [(e["action"], e["detail"]["where"]) for e in history] == [("move", "top")]

        # The run page of a run still waiting: its place, estimated start and the estimate's basis.
        last = _waiting(api, portal)[-1]
        browser.get(f"{portal.url}/runs/{last}")
        place = wait.until(EC.visibility_of_element_located((By.ID, "run-queue-position")))
        assert PLACE.fullmatch(place.text), place.text
        browser.save_screenshot(str(artifacts_dir / "e2e-queue-run-page.png"))
        browser.get(f"{portal.url}/runs/{target}")
        wait.until(EC.text_to_be_present_in_element((By.ID, "run-history"), "moved the run to the top"))

        # /runs: the Place column, then two waiting runs cancelled at once after a count confirmation.
        pick = _waiting(api, portal)[-2:]
        browser.get(portal.url + "/runs")
        for run_id in pick:
            wait.until(lambda d, r=run_id: _clicked(d, f".ag-row[row-id='{r}'] .ag-selection-checkbox"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "runs-bulk-count"), "2 runs selected"))
        Select(browser.find_element(By.ID, "runs-bulk-action")).select_by_value("cancel")
        browser.save_screenshot(str(artifacts_dir / "e2e-runs-bulk-selected.png"))
        browser.find_element(By.ID, "runs-bulk-apply").click()
        confirm = wait.until(EC.alert_is_present())
        assert confirm.text == "Cancel 2 runs?"
        confirm.accept()
        message = wait.until(EC.visibility_of_element_located((By.ID, "runs-bulk-message")))
        assert message.text == "2 runs cancelled."
        for run_id in pick:
            detail = api.get(f"{portal.url}/api/runs/{run_id}", timeout=30).json()
            assert detail["status"] == "cancelled" and detail["events"][-1]["action"] == "cancel"
        wait.until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f".ag-row[row-id='{pick[0]}'] [col-id='status']"), "cancelled"))
        browser.save_screenshot(str(artifacts_dir / "e2e-runs-bulk-done.png"))
    finally:
        for run_id in ours:
            api.post(f"{portal.url}/api/runs/{run_id}/cancel", timeout=30)


def test_admin_sets_a_members_share_on_the_users_page(live_portal, browser, artifacts_dir):
    portal, wait = live_portal, WebDriverWait(browser, 30)
    log_in(browser, portal)
    api = api_session(browser, portal)
    browser.get(portal.url + "/admin/users")
    chooser = wait.until(EC.element_to_be_clickable((By.ID, "users-share-username")))
    Select(chooser).select_by_value(portal.username)
    weight = browser.find_element(By.ID, "users-share-weight")
    wait.until(lambda d: weight.get_attribute("value") == "1")  # the member's current weight is filled in
    cap = browser.find_element(By.ID, "users-share-cap")
    try:
        weight.clear()
        weight.send_keys("0.01")
        browser.find_element(By.ID, "users-share-save").click()
        refused = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#users-share-result .alert")))
        assert "share_weight: must be between 0.1 and 100" in refused.text
        weight.clear()
        weight.send_keys("2.5")
        cap.send_keys("3600")
        browser.find_element(By.ID, "users-share-save").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "users-share-result"),
                                                    f"{portal.username}: weight 2.5, 3600 s a day."))
        wait.until(EC.text_to_be_present_in_element((By.ID, "users-grid"), "3600 s (1 h 00 min)"))
        browser.execute_script("document.getElementById('users-share-result').scrollIntoView()")
        browser.save_screenshot(str(artifacts_dir / "e2e-users-fair-share.png"))
        members = api.get(f"{portal.url}/api/admin/members", timeout=30).json()["members"]
        mine = next(m for m in members if m["username"] == portal.username)
        assert mine["share_weight"] == 2.5 and mine["daily_gpu_cap_s"] == 3600
    finally:
        reset = api.patch(f"{portal.url}/api/admin/members/{portal.username}",
                          json={"share_weight": 1, "daily_gpu_cap_s": None}, timeout=30)
        assert reset.status_code == 200, reset.text
