"""The six linked geometry views in a real browser: a click in one view highlights the point in
another and fills the details panel; a re-projection runs as a child run without the model."""

from __future__ import annotations

import re

import pytest
from browser_helpers import api_session, log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "Once upon a time", "<i>tags</i> & more"]
RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")
VIEWS = ["layer-evolution", "attention-mlp", "position0", "positional", "layer-norms", "animation"]


def _drawn(driver, graph_id: str) -> bool:
    return bool(driver.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "return !!(g && g._fullLayout && g._fullData && g._fullData.length);", graph_id))


def _highlighted(driver, graph_id: str) -> int:
    """Points in the figure's highlight trace (``layout.meta.highlight_trace``)."""
    return int(driver.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "if (!g || !g.layout.meta) return -1;"
        "const t = g.data[g.layout.meta.highlight_trace]; return t && t.x ? t.x.length : 0;", graph_id))


def _show_tab(driver, wait, label: str) -> None:
    tab = wait.until(EC.presence_of_element_located((By.LINK_TEXT, label)))
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'}); arguments[0].click();", tab)


def _click_first_point(driver, graph_id: str) -> None:
    """A real mouse click on the first point of the figure's first trace (2D)."""
    x, y = driver.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "const t = g._fullData[0]; const xa = g._fullLayout[t.xaxis === 'x' ? 'xaxis' : 'xaxis' + t.xaxis.slice(1)];"
        "const ya = g._fullLayout[t.yaxis === 'y' ? 'yaxis' : 'yaxis' + t.yaxis.slice(1)];"
        "const r = g.getBoundingClientRect();"
        "return [xa._offset + xa.d2p(t.x[0]), ya._offset + ya.d2p(t.y[0])];", graph_id)
    drag = driver.find_element(By.CSS_SELECTOR, f"#{graph_id} .nsewdrag")
    plot = driver.find_element(By.CSS_SELECTOR, f"#{graph_id} .js-plotly-plot")
    # Offsets are from the centre of the element in Selenium 4.
    ActionChains(driver).move_to_element_with_offset(
        plot, int(x - plot.size["width"] / 2), int(y - plot.size["height"] / 2)).pause(0.5).click().perform()
    assert drag is not None


def test_linked_views_details_and_reprojection(live_portal, browser, artifacts_dir):
    wait = WebDriverWait(browser, 30)
    log_in(browser, live_portal)
    browser.get(live_portal.url + "/new")
    Select(wait.until(EC.presence_of_element_located((By.ID, "new-kind")))).select_by_value("geometry")
    prompts = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#new-kind-form textarea")))
    prompts.send_keys("\n".join(PROMPTS))
    browser.find_element(By.ID, "new-title").send_keys("e2e linked views")
    browser.save_screenshot(str(artifacts_dir / "e2e-geometry-form.png"))
    submit = browser.find_element(By.ID, "new-submit")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", submit)
    wait.until(EC.url_matches(RUN_URL.pattern))
    run_id = RUN_URL.search(browser.current_url).group(1)
    try:
        WebDriverWait(browser, 180, poll_frequency=0.5).until(
            lambda d: _drawn(d, "geometry-layer-evolution"))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-geometry-timeout.png"))
        raise AssertionError("the geometry view did not appear:\n" + live_portal.log_tail()) from exc

    # Every view draws; screenshots of all six.
    labels = ["Layer evolution", "Attention vs MLP", "Position-0 norm", "Positional structure",
              "Layer norms", "Animation"]
    for label, view in zip(labels, VIEWS, strict=True):
        _show_tab(browser, wait, label)
        WebDriverWait(browser, 30).until(lambda d, v=view: _drawn(d, f"geometry-{v}"))
        browser.save_screenshot(str(artifacts_dir / f"e2e-geometry-{view}.png"))
    assert "learned position embeddings" in browser.page_source  # tiny GPT-2: learned positions

    # Click a point in the 2D attention-vs-MLP view ...
    _show_tab(browser, wait, "Attention vs MLP")
    WebDriverWait(browser, 30).until(lambda d: _drawn(d, "geometry-attention-mlp"))
    _click_first_point(browser, "geometry-attention-mlp")
    details = WebDriverWait(browser, 30).until(
        EC.presence_of_element_located((By.ID, "geometry-details-table")))
    text = browser.find_element(By.ID, "geometry-point-details").text
    assert "decodes to (logit lens)" in text and "component" in text and "attn_out" in text
    assert any(p in text for p in PROMPTS)
    assert browser.find_elements(By.CSS_SELECTOR, "#geometry-lens-table tr")
    assert not browser.find_elements(By.CSS_SELECTOR, "#geometry-point-details i")  # escaped
    # ... and it is highlighted in the other views.
    WebDriverWait(browser, 30).until(lambda d: _highlighted(d, "geometry-layer-evolution") >= 1)
    assert _highlighted(browser, "geometry-layer-norms") >= 1
    assert _highlighted(browser, "geometry-attention-mlp") >= 1
    _show_tab(browser, wait, "Layer evolution")
    browser.save_screenshot(str(artifacts_dir / "e2e-geometry-linked.png"))
    assert details.is_displayed() and "decodes to" in browser.find_element(By.ID, "geometry-point-details").text

    # Colour by component without re-running anything: still the same run, highlight kept.
    Select(browser.find_element(By.ID, "geometry-color-by")).select_by_value("component")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const g = document.querySelector('#geometry-layer-evolution .js-plotly-plot');"
        "return g && g.data[0].marker.color === '#1f77b4';"))
    assert _highlighted(browser, "geometry-layer-evolution") >= 1

    # A 2D re-projection is a child run on the cpu queue; its page draws the same views.
    for element in (browser.find_element(By.CSS_SELECTOR, "#geometry-rp-dims input[value='2']"),
                    browser.find_element(By.ID, "geometry-rp-submit")):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();",
                               element)
    WebDriverWait(browser, 30).until(lambda d: (m := RUN_URL.search(d.current_url)) and m.group(1) != run_id)
    child_id = RUN_URL.search(browser.current_url).group(1)

    def child_drawn(d) -> bool:
        # The URL changes before the child's page replaces the parent's (client-side routing), so
        # the parent's drawn figure must not count: the page must name the child first.
        return d.execute_script(
            "const e = document.getElementById('run-id-text'); return e ? e.textContent : '';"
        ) == child_id and _drawn(d, "geometry-layer-evolution")

    try:
        WebDriverWait(browser, 180, poll_frequency=0.5).until(child_drawn)
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-geometry-reproject-timeout.png"))
        raise AssertionError("the re-projection did not draw:\n" + live_portal.log_tail()) from exc
    assert "succeeded" in browser.find_element(By.ID, "run-status").text
    assert run_id in browser.find_element(By.ID, "geometry-view").text  # "re-projection of <id>"
    kind = browser.execute_script(
        "return document.querySelector('#geometry-layer-evolution .js-plotly-plot')._fullData[0].type;")
    assert kind == "scattergl"
    browser.save_screenshot(str(artifacts_dir / "e2e-geometry-reprojection.png"))


def test_a_point_without_a_lens_is_decoded_on_demand(live_portal, browser, artifacts_dir):
    """A run whose worker computed no lens: "Decode on the model" runs a child and fills the panel."""
    wait = WebDriverWait(browser, 30)
    log_in(browser, live_portal)
    response = api_session(browser, live_portal).post(live_portal.url + "/api/runs", timeout=30, json={
        "kind": "geometry", "title": "e2e lens on demand",
        "params": {"model": "tiny-gpt2", "prompts": ["Once upon a time"], "lens_max_points": 0}})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    browser.get(f"{live_portal.url}/runs/{run_id}")
    WebDriverWait(browser, 180, poll_frequency=0.5).until(lambda d: _drawn(d, "geometry-layer-evolution"))
    _show_tab(browser, wait, "Attention vs MLP")
    WebDriverWait(browser, 30).until(lambda d: _drawn(d, "geometry-attention-mlp"))
    _click_first_point(browser, "geometry-attention-mlp")
    button = WebDriverWait(browser, 30).until(EC.element_to_be_clickable((By.ID, "geometry-lens-decode")))
    assert "not computed" in browser.find_element(By.ID, "geometry-point-details").text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", button)
    try:
        WebDriverWait(browser, 120, poll_frequency=0.5).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#geometry-lens-table tr"))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-geometry-decode-timeout.png"))
        raise AssertionError("the decoded lens did not appear:\n" + live_portal.log_tail()) from exc
    assert "Decoded by run" in browser.find_element(By.ID, "geometry-lens-status").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#geometry-lens-table tr")) == 5
    browser.save_screenshot(str(artifacts_dir / "e2e-geometry-decoded.png"))
    # The decoded point stays decoded: a reload shows it without another run.
    browser.refresh()
    WebDriverWait(browser, 60).until(lambda d: _drawn(d, "geometry-attention-mlp"))
    _show_tab(browser, wait, "Attention vs MLP")
    _click_first_point(browser, "geometry-attention-mlp")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#geometry-lens-table tr"))
    assert not browser.find_elements(By.ID, "geometry-lens-decode")
