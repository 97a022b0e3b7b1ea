"""The portal in a real browser: log in, submit a geometry run, watch it finish, find it again."""

from __future__ import annotations

import re

import pytest
from browser_helpers import log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "Once upon a time", "<b>escaped</b> & fine"]
RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")


def _plot_kind(driver) -> str | None:
    """The trace type of the layer-evolution figure once Plotly has drawn it."""
    return driver.execute_script(
        "const g = document.querySelector('#geometry-layer-evolution .js-plotly-plot');"
        "return g && g._fullData && g._fullData.length && g.querySelector('.gl-container canvas')"
        " ? g._fullData[0].type : null;"
    )


def test_submit_watch_and_browse(live_portal, browser, artifacts_dir):
    wait = WebDriverWait(browser, 30)
    log_in(browser, live_portal)

    browser.get(live_portal.url + "/new")
    submit = wait.until(EC.element_to_be_clickable((By.ID, "new-submit")))
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("geometry")

    # An empty form is refused with a danger alert.
    submit.click()
    alert = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#new-errors .alert-danger")))
    assert "prompt" in alert.text

    prompts = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#new-kind-form textarea")))
    prompts.send_keys("\n".join(PROMPTS))
    browser.find_element(By.ID, "new-title").send_keys("e2e geometry")
    submit.click()

    wait.until(EC.url_matches(RUN_URL.pattern))
    run_id = RUN_URL.search(browser.current_url).group(1)
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-id-text"), run_id))

    try:
        WebDriverWait(browser, 120, poll_frequency=0.5).until(lambda d: _plot_kind(d) is not None)
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-run-page-timeout.png"))
        raise AssertionError("the 3D plot did not appear:\n" + live_portal.log_tail()) from exc
    assert _plot_kind(browser) == "scatter3d"
    browser.save_screenshot(str(artifacts_dir / "e2e-run-page.png"))

    assert "succeeded" in browser.find_element(By.ID, "run-status").text
    page = browser.find_element(By.ID, "run-page").text
    assert "e2e geometry" in page
    assert "<b>escaped</b> & fine" in browser.find_element(By.ID, "run-prompts").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#run-prompts b")

    browser.get(live_portal.url + "/runs")
    link = wait.until(EC.element_to_be_clickable((By.LINK_TEXT, run_id)))
    browser.save_screenshot(str(artifacts_dir / "e2e-runs-page.png"))
    link.click()
    wait.until(EC.url_matches(RUN_URL.pattern))
    assert RUN_URL.search(browser.current_url).group(1) == run_id
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-id-text"), run_id))
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-status"), "succeeded"))
