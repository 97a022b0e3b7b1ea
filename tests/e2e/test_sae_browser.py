"""An SAE harvest in a real browser: submitted from the New-run form (a random sae-lens SAE on disk
for the tiny GPT-2), then the latent browser's keys, a UMAP click opening examples, and adding and
removing latents in the cluster point cloud (checked against the run's own CSC arrays)."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from browser_helpers import api_session, log_in
from sae_fake import save_random_sae
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

RUN_URL = re.compile(r"/runs/([A-Za-z0-9_-]+)$")
TERMINAL = ("succeeded", "failed", "cancelled")
D_SAE = 64
TEXT = ["Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
        "January, February, March, April, May and June.", "<b>one</b> two & three four five six seven.",
        "The quick brown fox jumps over the lazy dog again and again."]


def _field(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[id*='\"kind\":\"sae\"'][id*='\"name\":\"{name}\"']")


def _set(driver, name: str, value) -> None:
    element = _field(driver, name)
    element.clear()
    element.send_keys(str(value))


def _choose(driver, name: str, label: str) -> None:
    group = _field(driver, name)
    option = group.find_element(By.XPATH, f".//label[normalize-space()='{label}']")
    _click(driver, option)


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def _text(driver, element_id: str) -> str:
    """The element's text read in one script call (a redraw between find and read cannot go stale)."""
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
                                 element_id)


def _press(driver, key: str) -> None:
    ActionChains(driver).send_keys(key).perform()


def _latent_shown(driver) -> int | None:
    match = re.fullmatch(r"Latent (\d+)", _text(driver, "sae-latent-title"))
    return int(match.group(1)) if match else None


def _cloud_shown(driver) -> int | None:
    """Tokens in the cloud the page reports (``data-tokens`` of its update line), read in one call."""
    value = driver.execute_script(
        "const e = document.getElementById('sae-cloud-update'); return e ? e.dataset.tokens : null;")
    return None if value is None else int(value)


def _cloud_tokens(npz, picked: list[int]) -> int:
    ptr, tokens = npz["lat_ptr"], npz["lat_token"]
    return len(np.unique(np.concatenate([tokens[ptr[j]:ptr[j + 1]] for j in picked])))


def test_sae_views_in_the_browser(live_portal, browser, artifacts_dir):
    portal, wait = live_portal, WebDriverWait(browser, 30)
    save_random_sae(portal.data_dir / "saes" / "e2e-sae")
    log_in(browser, portal)
    api = api_session(browser, portal)

    # --- submit from the form: a disk SAE, typed corpus
    browser.get(portal.url + "/new")
    wait.until(EC.element_to_be_clickable((By.ID, "new-submit")))
    Select(browser.find_element(By.ID, "new-kind")).select_by_value("sae")
    wait.until(lambda d: _field(d, "sae_kind"))
    _choose(browser, "sae_kind", "a directory saved by sae-lens")
    wait.until(lambda d: _field(d, "sae_path").is_displayed())
    _set(browser, "sae_path", "e2e-sae")
    _choose(browser, "corpus_kind", "typed text")
    wait.until(lambda d: _field(d, "prompts").is_displayed())
    _field(browser, "prompts").send_keys("\n".join(TEXT))
    for name, value in (("n_tokens", 2000), ("context_len", 64), ("top_k", 5), ("window", 3), ("edges_k", 4)):
        _set(browser, name, value)
    browser.find_element(By.ID, "new-title").send_keys("e2e sae")
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-form.png"))
    _click(browser, browser.find_element(By.ID, "new-submit"))
    try:
        wait.until(EC.url_matches(RUN_URL.pattern))
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-sae-form-error.png"))
        raise AssertionError("not submitted: " + _text(browser, "new-errors")) from exc
    run_id = RUN_URL.search(browser.current_url).group(1)
    # The harvest (then UMAP and spectral clustering) runs in the portal's worker; on a shared
    # 2-core box it takes minutes. Wait for its end through the API, then for the view.
    deadline = time.monotonic() + 900
    while (detail := api.get(f"{portal.url}/api/runs/{run_id}", timeout=30).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run_id} is still {detail['status']}:\n{portal.log_tail()}"
        time.sleep(1)
    assert detail["status"] == "succeeded", (detail["error"], portal.log_tail())
    try:
        WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda d: _latent_shown(d) == 0)
    except TimeoutException as exc:
        browser.save_screenshot(str(artifacts_dir / "e2e-sae-timeout.png"))
        raise AssertionError("the latent browser did not appear:\n" + portal.log_tail()) from exc
    response = api.get(f"{portal.url}/api/runs/{run_id}/export?format=npz", timeout=60)
    npz = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert npz["lat_ptr"].shape == (D_SAE + 1,)

    # --- keys: -> and <- step (wrapping), g jumps, a bad id is a clear error
    assert re.fullmatch(r"server \d+ ms", _text(browser, "sae-latent-timing"))
    _press(browser, Keys.ARROW_RIGHT)
    wait.until(lambda d: _latent_shown(d) == 1)
    _press(browser, Keys.ARROW_LEFT)
    wait.until(lambda d: _latent_shown(d) == 0)
    _press(browser, Keys.ARROW_LEFT)
    wait.until(lambda d: _latent_shown(d) == D_SAE - 1)
    fired = int(np.argmax(np.diff(npz["lat_ptr"])))
    _press(browser, "g")
    assert browser.switch_to.active_element.get_attribute("id") == "sae-goto"
    _press(browser, f"{fired}\n")
    wait.until(lambda d: _latent_shown(d) == fired)
    document = api.get(f"{portal.url}/api/runs/{run_id}/latents/{fired}.json", timeout=30).json()
    examples = browser.find_elements(By.CSS_SELECTOR, "#sae-top-examples .sae-example")
    assert len(examples) == len(document["top_examples"]) > 0
    shaded = browser.find_elements(By.CSS_SELECTOR, "#sae-top-examples .sae-token[style*='outline']")
    assert len(shaded) == len(examples)  # each example's own token is outlined
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-browser.png"))
    goto = browser.find_element(By.ID, "sae-goto")
    goto.clear()
    goto.send_keys(f"{D_SAE + 5}\n")
    error = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sae-latent-error .alert")))
    assert f"latent {D_SAE + 5} does not exist" in error.text and f"0 to {D_SAE - 1}" in error.text
    assert _latent_shown(browser) == fired
    browser.get(f"{portal.url}/runs/{run_id}?latent=999")
    error = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sae-latent-error .alert")))
    assert "latent 999 does not exist" in error.text
    browser.get(f"{portal.url}/runs/{run_id}?latent={fired}")
    wait.until(lambda d: _latent_shown(d) == fired)

    # --- UMAP: a click on a latent shows its examples beside the map
    _click(browser, wait.until(EC.presence_of_element_located((By.LINK_TEXT, "UMAP explorer"))))
    graph = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sae-umap .js-plotly-plot")))
    wait.until(lambda d: d.execute_script("return !!(arguments[0]._fullData && arguments[0]._fullData.length)", graph))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", graph)
    time.sleep(0.3)
    # Click the sparsest latent that fired (so another latent can add tokens to its cloud below).
    counts = np.diff(npz["lat_ptr"])
    target = int(np.flatnonzero(counts > 0)[np.argmin(counts[counts > 0])])
    x, y, latent = browser.execute_script(
        "const g = arguments[0], l = g._fullLayout;"
        "for (const t of g._fullData.slice(0, 2)) { const i = (t.customdata || []).indexOf(arguments[1]);"
        "  if (i >= 0) { return [l.xaxis._offset + l.xaxis.d2p(t.x[i]), l.yaxis._offset + l.yaxis.d2p(t.y[i]),"
        "                 t.customdata[i]]; } }"
        "return null;", graph, target)
    ActionChains(browser).move_to_element_with_offset(
        graph, int(x - graph.size["width"] / 2), int(y - graph.size["height"] / 2)).pause(0.3).click().perform()
    body = wait.until(EC.presence_of_element_located((By.ID, "sae-umap-examples-body")))
    clicked = int(body.get_attribute("data-latent"))
    assert clicked == latent or np.hypot(*(npz["umap"][clicked] - npz["umap"][latent])) < 0.05
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-umap.png"))

    # --- cloud: add the clicked latent from the map, then another by id; remove it again
    _click(browser, browser.find_element(By.ID, "sae-umap-add"))
    _click(browser, browser.find_element(By.LINK_TEXT, "Point cloud"))
    first = [clicked]
    wait.until(lambda d: _cloud_shown(d) == _cloud_tokens(npz, first))
    # The second latent adds the most tokens the first lacks, so the two clouds differ in size.
    base = _cloud_tokens(npz, first)
    second = max((j for j in range(D_SAE) if j != clicked), key=lambda j: _cloud_tokens(npz, [clicked, j]))
    assert _cloud_tokens(npz, [clicked, second]) > base
    box = browser.find_element(By.ID, "sae-cloud-input")
    box.send_keys(f"{second}\n")
    both = [clicked, second]
    wait.until(lambda d: _cloud_shown(d) == _cloud_tokens(npz, both))
    text = _text(browser, "sae-cloud-update")
    # Each gunicorn worker keeps the clouds it served: the answer names what changed in its copy.
    change = re.search(r"^(incremental update|new cloud in this web process) ([^:]*):", text)
    assert change and change.group(2) in (f"+{second}", f"+{clicked}, {second}"), text
    assert re.search(r"in \d+\.\d ms", text)
    points = browser.execute_script("return document.querySelector('#sae-cloud .js-plotly-plot')._fullData[0].x.length")
    assert points == _cloud_tokens(npz, both)
    time.sleep(0.5)
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-cloud-two.png"))
    _click(browser, browser.find_element(By.CSS_SELECTOR, f"#sae-cloud-chip-{second} .sae-cloud-remove"))
    wait.until(lambda d: _cloud_shown(d) == base and not d.find_elements(By.ID, f"sae-cloud-chip-{second}"))
    change = re.search(r"^(incremental update|new cloud in this web process) ([^:]*):",
                       _text(browser, "sae-cloud-update"))
    assert change and change.group(2) in (f"−{second}", f"+{clicked}"), _text(browser, "sae-cloud-update")
    browser.save_screenshot(str(artifacts_dir / "e2e-sae-cloud-one.png"))
