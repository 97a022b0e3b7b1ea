"""Grid runs in a real browser: submit, hover and click a cell, zoom to read tokens, exports,
side by side with linked zoom, and a queued run's position."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
import requests
from browser_helpers import api_session, log_in
from PIL import Image
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")
MAP = ".atlas-grid-map .js-plotly-plot"
TERMINAL = ("succeeded", "failed", "cancelled")
MAP_DRAWN = ("return [...document.querySelectorAll(arguments[0])]"
             ".filter(g => g._fullData && g._fullData.length && g.querySelector('.nsewdrag')).length")


def _field(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[id*='\"kind\":\"grid\"'][id*='\"name\":\"{name}\"']")


def _set(driver, name: str, value) -> None:
    element = _field(driver, name)
    element.clear()
    element.send_keys(str(value))


def _click(driver, element) -> None:
    """Scroll ``element`` to the middle at once, then click: Bootstrap's smooth scrolling
    would still be moving the page when Selenium clicks."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def _wait_maps(driver, count: int, portal, artifacts_dir, name: str) -> list:
    try:
        WebDriverWait(driver, 120, poll_frequency=0.5).until(
            lambda d: d.execute_script(MAP_DRAWN, MAP) >= count)
    except TimeoutException as exc:
        driver.save_screenshot(str(artifacts_dir / f"{name}-timeout.png"))
        raise AssertionError("the token map did not appear:\n" + portal.log_tail()) from exc
    return driver.find_elements(By.CSS_SELECTOR, MAP)


def _wait_run(api: requests.Session, portal, run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        detail = api.get(f"{portal.url}/api/runs/{run_id}", timeout=30).json()
        if detail["status"] in TERMINAL:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {detail['status']}:\n" + portal.log_tail())
        time.sleep(0.5)


def _submit(api: requests.Session, portal, params: dict, title: str) -> str:
    response = api.post(f"{portal.url}/api/runs", json={"kind": "grid", "title": title,
                                                        "params": {"model": "tiny-gpt2", **params}},
                        timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _number(text: str) -> float:
    return float(text.replace("−", "-"))  # d3 writes a real minus sign


def _cell_of(doc: dict, x: float, y: float) -> tuple[int, int]:
    i = int(np.argmin(np.abs(np.asarray(doc["x"]) - x)))
    j = int(np.argmin(np.abs(np.asarray(doc["y"]) - y)))
    assert doc["x"][i] == pytest.approx(x, abs=1e-6) and doc["y"][j] == pytest.approx(y, abs=1e-6)
    return j, i


def _ranges(driver, graph) -> list:
    return driver.execute_script(
        "const l = arguments[0]._fullLayout; return [l.xaxis.range, l.yaxis.range];", graph)


def _text_count(driver, graph) -> int:
    return driver.execute_script("return (arguments[0]._fullData[1].text || []).length;", graph)


def test_grid_map_in_the_browser(live_portal, browser, artifacts_dir):
    portal, wait = live_portal, WebDriverWait(browser, 30)
    log_in(browser, portal)
    api = api_session(browser, portal)
    runs_before = len(api.get(portal.url + "/api/runs", timeout=30).json()["runs"])

    # --- the form: a layer past the model's blocks is refused before anything is queued
    browser.get(portal.url + "/new")
    wait.until(EC.element_to_be_clickable((By.ID, "new-submit")))
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("grid")
    wait.until(lambda d: _field(d, "layer"))
    _set(browser, "layer", 9)
    _click(browser, browser.find_element(By.ID, "new-submit"))
    alert = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#new-errors .alert-danger")))
    assert "layer 9 is out of range for this model (0..3)" in alert.text
    assert len(api.get(portal.url + "/api/runs", timeout=30).json()["runs"]) == runs_before
    # another kind has no layer field: the rejection of the grid form goes with it
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("geometry")
    wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, "#new-errors .alert-danger")))
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("grid")
    wait.until(lambda d: _field(d, "layer"))

    _set(browser, "layer", 2)
    assert _field(browser, "size").get_attribute("value") == "64"
    browser.find_element(By.ID, "new-title").send_keys("e2e grid layer 2")
    _click(browser, browser.find_element(By.ID, "new-submit"))
    wait.until(EC.url_matches(RUN_URL.pattern))
    run_id = RUN_URL.search(browser.current_url).group(1)

    graph = _wait_maps(browser, 1, portal, artifacts_dir, "e2e-grid")[0]
    assert "succeeded" in browser.find_element(By.ID, "run-status").text
    doc = api.get(f"{portal.url}/api/runs/{run_id}/grid.json", timeout=60).json()
    assert doc["size"] == 64 and doc["layer"] == 2 and doc["config"]["layer"] == 2
    assert np.asarray(doc["top_ids"]).shape == (64, 64, 5)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", graph)
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-map.png"))

    # --- hover a cell: the label names the cell and its top token, as stored
    drag = graph.find_element(By.CSS_SELECTOR, ".nsewdrag")
    ActionChains(browser).move_to_element_with_offset(drag, 63, -47).perform()
    lines = WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return [...arguments[0].querySelectorAll('.hoverlayer .hovertext tspan.line')]"
        ".map(t => t.textContent);", graph))
    coords = re.fullmatch(r"x (\S+) · y (\S+)", lines[0])
    assert coords, lines
    j, i = _cell_of(doc, _number(coords.group(1)), _number(coords.group(2)))
    top = doc["top_ids"][j][i][0]
    assert re.search(r" #(\d+) ", lines[1]).group(1) == str(top)
    assert lines[1].endswith(f"{100 * doc['top_probs'][j][i][0]:.1f}%")
    token = doc["tokens"][str(top)]
    if token.strip() == token and token.isprintable():
        assert lines[1].startswith(repr(token))
    assert len(lines) == 1 + 5 + 1  # coordinates, the top-5, entropy
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-hover.png"))

    # --- click it: the panel lists the top-k with probabilities
    ActionChains(browser).click().perform()
    panel = browser.find_element(By.CSS_SELECTOR, "[id*='\"type\":\"grid-cell\"']")
    wait.until(lambda d: f"#{top}" in panel.text)
    assert f"{i}, {j}" in panel.text
    assert f"{100 * doc['top_probs'][j][i][0]:.2f}%" in panel.text
    for rank in range(5):
        assert f"#{doc['top_ids'][j][i][rank]}" in panel.text

    # --- zoom with a drag box: the tokens are written on the visible cells
    assert _text_count(browser, graph) == 0
    ActionChains(browser).move_to_element_with_offset(drag, -60, -60).click_and_hold() \
        .move_by_offset(60, 40).move_by_offset(60, 80).release().perform()
    WebDriverWait(browser, 20).until(lambda d: _text_count(d, graph) > 0)
    (x0, x1), (y0, y1) = _ranges(browser, graph)
    xs, ys = np.asarray(doc["x"]), np.asarray(doc["y"])
    visible = int(((xs >= min(x0, x1)) & (xs <= max(x0, x1))).sum() * ((ys >= min(y0, y1)) & (ys <= max(y0, y1))).sum())
    assert 0 < visible <= 40 * 40
    assert _text_count(browser, graph) == visible
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-zoom.png"))

    # --- colour by probability keeps the zoom
    _click(browser, browser.find_element(By.CSS_SELECTOR, "[id*='grid-mode'] input[value='probability']"))
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return arguments[0]._fullData[0].showscale;", graph))
    assert _ranges(browser, graph) == [[x0, x1], [y0, y1]]
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-probability.png"))

    # --- PNG export: one 32-pixel block per cell, token colours
    response = api.get(f"{portal.url}/api/runs/{run_id}/grid.png", timeout=120)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    (artifacts_dir / "e2e-grid-export.png").write_bytes(response.content)
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (64 * 32, 64 * 32)
    Image.open(io.BytesIO(response.content)).crop((0, 0, 640, 640)).save(artifacts_dir / "e2e-grid-export-crop.png")
    assert api.get(f"{portal.url}/api/runs/{run_id}/grid.png?cell=2", timeout=30).status_code == 400

    # --- side by side with the same plane at the last layer, linked zoom
    other = _submit(api, portal, {"layer": 3, "size": 64}, "e2e grid layer 3")
    assert _wait_run(api, portal, other)["status"] == "succeeded"
    # Slow answers (as under load) and a zoom as soon as the maps are drawn: the maps' first
    # {"autosize": true} relayout then comes after the zoom. Before the fix of issue 12 the
    # renderer kept that later request's answer ("no axis changed") and dropped the zoom's
    # text on both maps; it failed this way every time with 200 or 800 ms of latency.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 400, "downloadThroughput": -1, "uploadThroughput": -1})
    browser.get(f"{portal.url}/compare?runs={run_id},{other}")
    maps = _wait_maps(browser, 2, portal, artifacts_dir, "e2e-grid-compare")
    browser.execute_script("Plotly.relayout(arguments[0], {'xaxis.range[0]': -8.5, 'xaxis.range[1]': 8.5,"
                           " 'yaxis.range[0]': -6.5, 'yaxis.range[1]': 6.5});", maps[0])
    labels = browser.find_element(By.ID, "compare-page").text
    assert "layer 2 of 3" in labels and "layer 3 of 3" in labels
    WebDriverWait(browser, 20).until(lambda d: _ranges(d, maps[1]) == [[-8.5, 8.5], [-6.5, 6.5]])
    try:  # each map's text arrives from its own server callback
        WebDriverWait(browser, 60).until(lambda d: _text_count(d, maps[1]) == 17 * 13 == _text_count(d, maps[0]))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-grid-compare-text-timeout.png"))
        raise AssertionError(f"zoomed text counts {_text_count(browser, maps[0])}, "
                             f"{_text_count(browser, maps[1])} (want {17 * 13} each), ranges "
                             f"{_ranges(browser, maps[0])}, {_ranges(browser, maps[1])}") from exc
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    browser.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'})", maps[0])
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-compare.png"))

    # --- /compare says why it shows no map for what it was given
    browser.get(f"{portal.url}/compare?runs={run_id},{other},zzzzzzzzzzzz")
    notes = wait.until(EC.visibility_of_element_located((By.ID, "compare-notes")))
    assert "Only 2 runs can be shown side by side; ignored: zzzzzzzzzzzz." in notes.text
    _wait_maps(browser, 2, portal, artifacts_dir, "e2e-grid-compare-notes")
    browser.get(f"{portal.url}/compare?runs={run_id},nosuchrun123")
    notes = wait.until(EC.visibility_of_element_located((By.ID, "compare-notes")))
    assert "nosuchrun123: no run with this ID." in notes.text
    browser.save_screenshot(str(artifacts_dir / "e2e-grid-compare-notes.png"))

    # --- queueing: behind a large run, a run page shows its queue position
    blocker = _submit(api, portal, {"layer": 0, "size": 512}, "e2e grid blocker")
    queued = [_submit(api, portal, {"layer": 1, "size": 8}, f"e2e grid queued {n}") for n in (1, 2)]
    try:
        detail = api.get(f"{portal.url}/api/runs/{queued[1]}", timeout=30).json()
        assert detail["status"] == "queued" and detail["queue_position"] >= 2
        browser.get(f"{portal.url}/runs/{queued[1]}")
        position = WebDriverWait(browser, 30).until(
            EC.visibility_of_element_located((By.ID, "run-queue-position")))
        assert re.fullmatch(r"\d+(st|nd|rd|th) in the GPU queue, estimated start ~(\d{4}-\d\d-\d\d )?\d\d:\d\d UTC "
                            r"\((now|in [^;]+); [^)]+\)", position.text), position.text
        browser.save_screenshot(str(artifacts_dir / "e2e-grid-queued.png"))
    finally:
        for rid in [*queued, blocker]:
            api.post(f"{portal.url}/api/runs/{rid}/cancel", timeout=30)
        for rid in [*queued, blocker]:
            assert _wait_run(api, portal, rid, timeout=90)["status"] in TERMINAL
