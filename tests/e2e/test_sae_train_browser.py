"""Training an SAE from the UI alone: New run -> sae_train with the demo corpus -> the run page
(held-out metrics, loss curve) -> its ZIP and the way into a harvest.

The portal runs with ``--no-fetch``, so the test lays a small demo corpus where ``make up``
would put it (``<data>/corpora/demo-english.jsonl``) before submitting."""

from __future__ import annotations

import io
import json
import random
import re
import time
import zipfile

import pytest
from browser_helpers import api_session, log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")
TERMINAL = ("succeeded", "failed", "cancelled")
SMALL = {"layer": 1, "d_sae": 32, "k": 4, "training_tokens": 4000, "eval_tokens": 600, "context_len": 32,
         "batch_size": 256}


def _field(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[id*='\"kind\":\"sae_train\"'][id*='\"name\":\"{name}\"']")


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def test_train_an_sae_from_the_ui(live_portal, browser, artifacts_dir):
    portal, wait = live_portal, WebDriverWait(browser, 30)
    rng = random.Random(0)
    corpora = portal.data_dir / "corpora"
    corpora.mkdir(exist_ok=True)
    words = "the a cat dog ran sat on mat hill river day night".split()
    (corpora / "demo-english.jsonl").write_text("".join(
        json.dumps({"text": " ".join(rng.choice(words) for _ in range(40))}) + "\n" for _ in range(200)))
    log_in(browser, portal)
    api = api_session(browser, portal)

    browser.get(portal.url + "/new")
    wait.until(EC.element_to_be_clickable((By.ID, "new-submit")))
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("sae_train")
    wait.until(lambda d: _field(d, "d_sae"))
    assert _field(browser, "layer").get_attribute("value") == "12"  # the demo model's default
    for name, value in SMALL.items():
        element = _field(browser, name)
        element.clear()
        element.send_keys(str(value))
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-train-form.png"))
    _click(browser, browser.find_element(By.ID, "new-submit"))
    try:
        wait.until(EC.url_matches(RUN_URL.pattern))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-sae-train-form-error.png"))
        raise AssertionError("not submitted: " + browser.find_element(By.ID, "new-errors").text) from exc
    run_id = RUN_URL.search(browser.current_url).group(1)

    deadline = time.monotonic() + 600
    while (detail := api.get(f"{portal.url}/api/runs/{run_id}", timeout=30).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run_id} is still {detail['status']}:\n{portal.log_tail()}"
        time.sleep(1)
    assert detail["status"] == "succeeded", (detail["error"], portal.log_tail())
    try:
        WebDriverWait(browser, 60, poll_frequency=0.5).until(
            lambda d: d.find_elements(By.ID, "sae-train-page") and d.find_elements(By.CSS_SELECTOR, "#sae-train-loss .main-svg"))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-sae-train-timeout.png"))
        raise AssertionError("the run page did not appear:\n" + portal.log_tail()) from exc
    page = browser.find_element(By.ID, "sae-train-page").text
    ve = detail["summary"]["metrics"]["variance_explained"]
    assert "variance explained (held-out)" in page and f"{100 * ve:.1f}%" in page
    assert "blocks.1.hook_resid_post" in page and "the demo corpus" in page
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-train-page.png"))

    href = browser.find_element(By.ID, "sae-train-download").get_attribute("href")
    response = api.get(href, timeout=60)
    assert response.status_code == 200
    assert sorted(zipfile.ZipFile(io.BytesIO(response.content)).namelist()) == [
        "sae/cfg.json", "sae/sae_weights.safetensors"]
    _click(browser, browser.find_element(By.ID, "sae-train-use"))
    wait.until(EC.url_contains("/new"))
    wait.until(lambda d: Select(d.find_element(By.ID, "new-kind")).first_selected_option.get_attribute("value") == "sae")
    # the harvest form arrives prefilled: "trained by a portal run", this run's ID, its model
    sae_field = "[id*='\"kind\":\"sae\"'][id*='\"name\":\"%s\"']"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, sae_field % "sae_run_id").is_displayed())
    assert browser.find_element(By.CSS_SELECTOR, sae_field % "sae_run_id").get_attribute("value") == run_id
    checked = browser.find_element(By.CSS_SELECTOR, (sae_field % "sae_kind") + " input:checked")
    assert checked.get_attribute("value") == "run"
    assert detail["model"] in browser.find_element(By.ID, "new-model").text
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-train-use-in-harvest.png"))
