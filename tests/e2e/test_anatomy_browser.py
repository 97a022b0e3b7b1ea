"""Anatomy runs in a real browser: bad input refused before queueing, a run's page with its
3D diagram, a head chosen by URL and input, a block and a thumbnail clicked, the saliency of
the first token read, and an out-of-range layer in the URL."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from browser_helpers import api_session, log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.e2e

PROMPT = "The <b>cat</b> sat on the mat & slept."
TERMINAL = ("succeeded", "failed", "cancelled")
HEAD_TITLE = ("const g = document.querySelector('#anatomy-head-figure .js-plotly-plot');"
              "return g && g.layout && g.layout.title ? g.layout.title.text : null;")


def _wait_run(api: requests.Session, portal, run_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        detail = api.get(f"{portal.url}/api/runs/{run_id}", timeout=30).json()
        if detail["status"] in TERMINAL:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {detail['status']}:\n" + portal.log_tail())
        time.sleep(0.5)


def _wait_title(driver, portal, artifacts_dir, expected: str, name: str) -> None:
    try:
        WebDriverWait(driver, 60, poll_frequency=0.3).until(
            lambda d: (d.execute_script(HEAD_TITLE) or "").startswith(expected))
    except TimeoutException as exc:
        driver.save_screenshot(str(artifacts_dir / f"anatomy-{name}-timeout.png"))
        raise AssertionError(f"head title is {driver.execute_script(HEAD_TITLE)!r}, expected {expected!r}:\n"
                             + portal.log_tail()) from exc


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def test_anatomy_run_page(live_portal, browser, artifacts_dir) -> None:
    portal, driver = live_portal, browser
    log_in(driver, portal)
    api = api_session(driver, portal)
    before = len(api.get(f"{portal.url}/api/runs", timeout=30).json()["runs"])
    for params, message in [({"prompt": "a" * 513}, "513 tokens; the limit is 512"),
                            ({"prompt": " \n "}, "empty"),
                            ({"prompt": "abc", "target": "ab"}, "exactly one token"),
                            ({"prompt": "abc", "ig_steps": 257}, "less than or equal to 256")]:
        response = api.post(f"{portal.url}/api/runs", timeout=60,
                            json={"kind": "anatomy", "params": {"model": "tiny-gpt2", **params}})
        assert response.status_code == 400 and message in response.text, response.text
    assert len(api.get(f"{portal.url}/api/runs", timeout=30).json()["runs"]) == before  # nothing queued

    response = api.post(f"{portal.url}/api/runs", timeout=60, json={
        "kind": "anatomy", "title": "anatomy e2e",
        "params": {"model": "tiny-gpt2", "prompt": PROMPT, "ig_steps": 8, "vocab_sample": 60}})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    detail = _wait_run(api, portal, run_id)
    assert detail["status"] == "succeeded", detail
    exported = np.load(io.BytesIO(api.get(f"{portal.url}/api/runs/{run_id}/export?format=npz",
                                          timeout=60).content))
    n_layers, n_heads = 3, 4
    assert exported["attention"].shape == (n_layers * n_heads, len(PROMPT), len(PROMPT))

    # A head chosen in the URL.
    started = time.monotonic()
    driver.get(f"{portal.url}/runs/{run_id}?layer=1&head=2")
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 1, head 2", "url")
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#anatomy-sheet .nsewdrag")))
    load_seconds = time.monotonic() - started
    driver.save_screenshot(str(artifacts_dir / "anatomy-page.png"))
    assert load_seconds < 30, load_seconds  # generous: the page's own budget is measured in bench/anatomy.py

    # A head typed into the head input.
    head_input = driver.find_element(By.ID, "anatomy-head")
    head_input.clear()
    head_input.send_keys("3\n")
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 1, head 3", "input")

    # Click a thumbnail: tile (layer 2, head 1) of the 3 x 4 sheet, with the real mouse.
    sheet = driver.find_element(By.CSS_SELECTOR, "#anatomy-sheet .nsewdrag")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", sheet)
    width, height = float(sheet.get_attribute("width")), float(sheet.get_attribute("height"))
    ActionChains(driver).move_to_element_with_offset(
        sheet, int((1.5 / n_heads - 0.5) * width), int((2.5 / n_layers - 0.5) * height)).click().perform()
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 2, head 1", "thumbnail")
    driver.save_screenshot(str(artifacts_dir / "anatomy-thumbnail-clicked.png"))

    # Click block 0 of the flat (SVG) diagram with the real mouse, at its marker's pixel position.
    diagram = driver.find_element(By.CSS_SELECTOR, "#anatomy-architecture .nsewdrag")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", diagram)
    dx, dy = driver.execute_script("""
        const g = document.querySelector('#anatomy-architecture .js-plotly-plot');
        const t = g._fullData.find(d => d.name === 'blocks');
        const i = t.customdata.indexOf(0), L = g._fullLayout;
        return [L.xaxis.l2p(t.x[i]) - L.xaxis._length / 2, L.yaxis.l2p(t.y[i]) - L.yaxis._length / 2];
    """)
    ActionChains(driver).move_to_element_with_offset(diagram, int(dx), int(dy)).click().perform()
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 0, head 1", "block")

    # The 3D diagram on request; click its block 1. The scene is WebGL, whose picking a headless
    # browser cannot aim at reliably, so the click is Plotly's own click event on that block's marker.
    _click(driver, driver.find_element(By.XPATH, "//*[@id='anatomy-arch-view']//label[contains(., '3D')]"))
    WebDriverWait(driver, 60, poll_frequency=0.2).until(lambda d: d.execute_script(
        "const g = document.querySelector('#anatomy-architecture .js-plotly-plot');"
        "return g && g._fullData && g._fullData.length && g._fullData[0].type === 'mesh3d';"))
    driver.save_screenshot(str(artifacts_dir / "anatomy-architecture-3d.png"))
    driver.execute_script("""
        const g = document.querySelector('#anatomy-architecture .js-plotly-plot');
        const c = g.data.findIndex(d => d.name === 'blocks'), t = g.data[c];
        const i = t.customdata.indexOf(1);
        g.emit('plotly_click', {points: [{curveNumber: c, pointNumber: i, customdata: 1,
            x: t.x[i], y: t.y[i], z: t.z[i], data: t, fullData: g._fullData[c]}]});
    """)
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 1, head 1", "block-3d")

    # The rollout, drawn on request, through the chosen layer (1).
    _click(driver, driver.find_element(By.ID, "anatomy-rollout-show"))
    rollout_title = ("const g = document.querySelector('#anatomy-rollout .js-plotly-plot');"
                     "return g && g.layout && g.layout.title ? g.layout.title.text : null;")
    WebDriverWait(driver, 60, poll_frequency=0.3).until(
        lambda d: d.execute_script(rollout_title) == "Attention rollout through block 1")

    # The saliency of the first token.
    _click(driver, driver.find_element(By.LINK_TEXT, "Saliency"))
    first = WebDriverWait(driver, 30).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, ".anatomy-sal-token")))
    assert first.text == "T"
    assert float(first.get_attribute("data-score")) == pytest.approx(
        float(exported["saliency_grad_input"][0]), rel=1e-5, abs=1e-9)
    tokens = driver.find_elements(By.CSS_SELECTOR, ".anatomy-sal-token")
    assert "".join(t.get_attribute("textContent") for t in tokens) == PROMPT  # escaped: '<b>' is text
    driver.save_screenshot(str(artifacts_dir / "anatomy-saliency.png"))

    # Activations: a click on a cell lists that token's top neurons.
    _click(driver, driver.find_element(By.LINK_TEXT, "Activations"))
    heat = WebDriverWait(driver, 30).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, "#anatomy-resid .nsewdrag")))
    # The tab was hidden: Plotly first lays the figure out at a default width, then resizes it to
    # its container. Aim only once that resize is done (its layout width is the container's).
    WebDriverWait(driver, 30, poll_frequency=0.1).until(lambda d: d.execute_script(
        "const g = document.querySelector('#anatomy-resid .js-plotly-plot');"
        "return g && g._fullLayout && Math.abs(g._fullLayout.width - g.getBoundingClientRect().width) < 2;"))
    heat = driver.find_element(By.CSS_SELECTOR, "#anatomy-resid .nsewdrag")
    width, height = float(heat.get_attribute("width")), float(heat.get_attribute("height"))
    # Column 0 of len(PROMPT), row 0 of 3 (layer 0 at the bottom).
    ActionChains(driver).move_to_element_with_offset(
        heat, int((0.5 / len(PROMPT) - 0.5) * width), int((2.5 / 3 - 0.5) * height)).click().perform()
    title = WebDriverWait(driver, 30).until(EC.visibility_of_element_located((By.ID, "anatomy-neurons-title")))
    assert title.text.startswith("Layer 0, token 0")
    driver.save_screenshot(str(artifacts_dir / "anatomy-neurons.png"))

    # The logit lens: the run decoded the last 32 positions (the default lens_positions); the page
    # says so, and from position 0 the first len(PROMPT) - 32 columns are blank.
    decoded_from = len(PROMPT) - 32
    assert detail["summary"]["lens_decoded_from"] == decoded_from > 0
    _click(driver, driver.find_element(By.LINK_TEXT, "Logit lens"))
    note = WebDriverWait(driver, 30).until(EC.visibility_of_element_located((By.ID, "anatomy-lens-window-note")))
    assert f"decoded positions {decoded_from}–{len(PROMPT) - 1}" in note.text
    start = driver.find_element(By.ID, "anatomy-lens-start")
    start.clear()
    start.send_keys("0\n")
    # the figure drawn from position 0 (its first column is labelled "0·..."), not the initial window
    lens_text = ("const g = document.querySelector('#anatomy-lens .js-plotly-plot');"
                 "return g && g.data && String(g.data[0].x[0]).startsWith('0·') ? g.data[0].text : null;")
    first_cols = WebDriverWait(driver, 30).until(lambda d: d.execute_script(lens_text))
    assert len(first_cols[0]) == 32
    assert all(row[:decoded_from] == [""] * decoded_from for row in first_cols)
    assert all(cell != "" for row in first_cols for cell in row[decoded_from:])
    driver.save_screenshot(str(artifacts_dir / "anatomy-lens.png"))

    # A layer out of range in the URL: a clear message, and the page still draws layer 0.
    driver.get(f"{portal.url}/runs/{run_id}?layer=99&head=0")
    alert = WebDriverWait(driver, 60).until(EC.visibility_of_element_located((By.ID, "anatomy-url-alert")))
    assert "layer 99 is out of range for this model (0..2)" in alert.text
    _wait_title(driver, portal, artifacts_dir, "Attention, layer 0, head 0", "bad-url")
