"""A scan run in a real browser: submit A and B through the form, play the animation, step with `]`,
read the frame label, click a layer on the divergence curve, and download the exports."""

from __future__ import annotations

import io
import re

import pytest
from browser_helpers import api_session, log_in
from PIL import Image
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")
A = "The capital of France is"
B = "The capital of <b>Spain</b> is"
DRAWN = ("const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
         "return !!(g && g._fullLayout && g._fullData && g._fullData.length);")


def _field(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[id*='\"kind\":\"scan\"'][id*='\"name\":\"{name}\"']")


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def _frame(driver) -> tuple[int, str]:
    label = driver.find_element(By.ID, "scan-frame-label")
    return int(label.get_attribute("data-frame")), label.text


def _wait_frame(driver, index: int, timeout: float = 15) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: _frame(d)[0] == index)


def test_play_step_and_jump_from_the_curve(live_portal, browser, artifacts_dir):
    wait = WebDriverWait(browser, 30)
    log_in(browser, live_portal)
    browser.get(live_portal.url + "/new")
    Select(wait.until(EC.presence_of_element_located((By.ID, "new-kind")))).select_by_value("scan")
    mode = wait.until(lambda d: _field(d, "mode"))
    Select(mode).select_by_value("diff")
    _field(browser, "prompt_a").send_keys(A)
    prompt_b = _field(browser, "prompt_b")
    WebDriverWait(browser, 10).until(lambda d: prompt_b.is_displayed())
    prompt_b.send_keys(B)
    browser.find_element(By.ID, "new-title").send_keys("e2e scan")
    browser.save_screenshot(str(artifacts_dir / "e2e-scan-form.png"))
    _click(browser, browser.find_element(By.ID, "new-submit"))
    wait.until(EC.url_matches(RUN_URL.pattern))
    run_id = RUN_URL.search(browser.current_url).group(1)
    try:
        WebDriverWait(browser, 180, poll_frequency=0.5).until(
            lambda d: d.execute_script(DRAWN, "scan-graph") and d.execute_script(DRAWN, "scan-curve"))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-scan-timeout.png"))
        raise AssertionError("the scan view did not appear:\n" + live_portal.log_tail()) from exc
    n_frames = browser.execute_script(
        "return document.querySelector('#scan-graph .js-plotly-plot').layout.meta.n_frames")
    assert n_frames == 4  # the tiny GPT-2: embeddings + 3 blocks
    assert _frame(browser) == (0, "embeddings")
    browser.save_screenshot(str(artifacts_dir / "e2e-scan-page.png"))

    # Play: the label shows every frame in turn up to the last (recorded in the page as it changes).
    browser.execute_script(
        "window.__labels = []; const el = document.getElementById('scan-frame-label');"
        "new MutationObserver(() => window.__labels.push(el.getAttribute('data-frame') + ':' + el.textContent))"
        ".observe(el, {attributes: true, childList: true, characterData: true, subtree: true});")
    _click(browser, browser.find_element(By.ID, "scan-play"))
    _wait_frame(browser, n_frames - 1)
    WebDriverWait(browser, 10).until(lambda d: not d.execute_script("return window.atlasScan.playing()"))
    labels = list(dict.fromkeys(browser.execute_script("return window.__labels")))
    assert labels == ["1:block 0", "2:block 1", "3:block 2"], labels
    assert _frame(browser) == (3, "block 2")

    # Keys: "[" steps back, "]" forward; space plays (and pauses).
    body = browser.find_element(By.TAG_NAME, "body")
    _click(browser, browser.find_element(By.ID, "scan-first"))
    _wait_frame(browser, 0)
    ActionChains(browser).send_keys_to_element(body, "]").perform()
    _wait_frame(browser, 1)
    assert _frame(browser) == (1, "block 0")
    ActionChains(browser).send_keys_to_element(body, "]").send_keys_to_element(body, "]").perform()
    _wait_frame(browser, 3)
    ActionChains(browser).send_keys_to_element(body, "[").perform()
    _wait_frame(browser, 2)
    assert _frame(browser)[1] == "block 1"
    slider = browser.execute_script("return document.querySelector('#scan-graph .js-plotly-plot')"
                                    "._fullLayout.sliders[0].active")
    assert slider == 2  # the slider follows the keys
    browser.save_screenshot(str(artifacts_dir / "e2e-scan-stepped.png"))

    # Click the curve's marker of frame 1: the animation jumps there, the current-layer line follows.
    x, y = browser.execute_script(
        "const g = document.querySelector('#scan-curve .js-plotly-plot');"
        "const t = g._fullData[0]; const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;"
        "return [xa._offset + xa.d2p(t.x[1]), ya._offset + ya.d2p(t.y[1])];")
    plot = browser.find_element(By.CSS_SELECTOR, "#scan-curve .js-plotly-plot")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", plot)
    ActionChains(browser).move_to_element_with_offset(
        plot, int(x - plot.size["width"] / 2), int(y - plot.size["height"] / 2)).pause(0.3).click().perform()
    _wait_frame(browser, 1)
    line = browser.execute_script(
        "return document.querySelector('#scan-curve .js-plotly-plot').layout.shapes[0].x0")
    assert line == 1
    browser.save_screenshot(str(artifacts_dir / "e2e-scan-curve-click.png"))

    # A redraw (colour by token) keeps the frame; space plays from there.
    Select(browser.find_element(By.ID, "scan-colour")).select_by_value("token")
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(
        "const g = document.querySelector('#scan-graph .js-plotly-plot');"
        "return Array.isArray(g.data[0].marker.color) && g.layout.sliders[0].active === 1;"))
    assert _frame(browser)[0] == 1
    ActionChains(browser).send_keys_to_element(body, Keys.SPACE).perform()
    _wait_frame(browser, n_frames - 1)

    # Hover text is escaped: B's "<b>" is shown as text, not markup.
    tokens_b = browser.execute_script(
        "return document.querySelector('#scan-graph .js-plotly-plot').data[1].customdata.map(r => r[1]).join('')")
    assert "&lt;b&gt;" in tokens_b

    # Exports: the HTML animation, the GIF and the arrays.
    api = api_session(browser, live_portal)
    page = api.get(f"{live_portal.url}/api/runs/{run_id}/scan.html", timeout=60)
    assert page.status_code == 200 and "Plotly.animate" in page.text and page.headers["Content-Type"].startswith(
        "text/html")
    gif = api.get(f"{live_portal.url}/api/runs/{run_id}/scan.gif", timeout=120)
    assert gif.status_code == 200, gif.text[:300]
    assert Image.open(io.BytesIO(gif.content)).n_frames == n_frames
    arrays = api.get(f"{live_portal.url}/api/runs/{run_id}/export?format=npz", timeout=60)
    assert arrays.status_code == 200 and arrays.content[:2] == b"PK"
    wrong = api.get(f"{live_portal.url}/api/runs/NO_SUCH_RUN_X/scan.gif", timeout=30)
    assert wrong.status_code == 404 and wrong.headers["Content-Type"].startswith("application/json")
