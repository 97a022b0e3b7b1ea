"""Time from submit to rendered view: 3 prompts x 32 tokens on the demo model.

With a warm worker (the model already loaded by a first run), a run is
submitted through the API and headless Chromium opens its page at once; the
clock stops when the layer-evolution plot is drawn. Reported next to the
worker's own analysis time (the baseline: what the model work alone costs).
"""

from __future__ import annotations

import statistics
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from _portal import demo_portal
from latent_atlas.settings import DEMO_MODEL_NAME

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch and "
    "the sun sets slowly behind the hills of the quiet valley below",
    "In the beginning the universe was created, which made a lot of people very angry and has "
    "been widely regarded as a bad move by almost everyone who thinks about it",
    "Language models map every token to a point in a high dimensional space, and the geometry "
    "of those points changes from one layer to the next in ways we can measure",
]


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main(repeats: int = 3) -> None:
    portal = demo_portal()
    driver = browser()
    try:
        token = portal.create_user("bench", "bench-password-1")
        params = {"model": DEMO_MODEL_NAME, "prompts": PROMPTS, "max_tokens": 32}
        warm = portal.submit(token, params)
        portal.wait_for(warm["id"], token, {"succeeded"}, timeout=300)
        driver.get(portal.url + "/login")
        driver.find_element(By.ID, "username").send_keys("bench")
        driver.find_element(By.ID, "password").send_keys("bench-password-1")
        driver.find_element(By.ID, "login-submit").click()
        totals, analyses = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            run = portal.submit(token, params)
            driver.get(f"{portal.url}/runs/{run['id']}")
            WebDriverWait(driver, 300).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "#geometry-layer-evolution .main-svg"))
            )
            totals.append(time.perf_counter() - started)
            detail = portal.api("GET", f"/api/runs/{run['id']}", token).json()
            analyses.append(detail["timings"]["analysis_s"])
            tokens = detail["summary"]["n_tokens"]
        total, analysis = statistics.median(totals), statistics.median(analyses)
        print(f"tokens per prompt: {tokens}")
        print(f"submit -> rendered view: median {total:.2f} s over {repeats} "
              f"(runs: {', '.join(f'{t:.2f}' for t in totals)})")
        print(f"worker analysis alone: median {analysis:.2f} s; portal overhead "
              f"{total - analysis:.2f} s ({total / analysis:.2f}x the analysis)")
    finally:
        driver.quit()
        portal.stop()
        portal.backend.cleanup()


if __name__ == "__main__":
    main()
