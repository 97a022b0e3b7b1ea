"""Time from submit to rendered view: 3 prompts x 32 tokens on the demo model.

With a warm worker (the model already loaded by a first run), a run is
submitted through the API and headless Chromium opens its page at once; the
clock stops when the layer-evolution plot is drawn. Reported next to the
worker's own analysis time (the baseline: what the model work alone costs).
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
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


# The layer-evolution plot counts as rendered once Plotly has drawn its traces.
DRAWN = ("const g = document.querySelector('#geometry-layer-evolution .js-plotly-plot');"
         "return Boolean(g && g._fullData && g._fullData.length);")


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
        rows = []
        for _ in range(repeats):
            started = time.time()
            run = portal.submit(token, params)
            driver.get(f"{portal.url}/runs/{run['id']}")
            try:
                WebDriverWait(driver, 300, poll_frequency=0.2).until(lambda d: d.execute_script(DRAWN))
            except Exception:
                driver.save_screenshot("/tmp/submit_to_view-timeout.png")
                raise
            drawn = time.time()
            detail = portal.api("GET", f"/api/runs/{run['id']}", token).json()
            claimed = datetime.fromisoformat(detail["started_at"]).timestamp()
            finished = datetime.fromisoformat(detail["finished_at"]).timestamp()
            rows.append({
                "total": drawn - started,
                "queue": claimed - started,  # submit + broker delivery + claim
                "worker": finished - claimed,
                "analysis": detail["timings"]["analysis_s"],
                "page": drawn - finished,  # poll interval + load arrays + figure + WebGL draw
            })
            tokens = detail["summary"]["n_tokens"]
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"tokens per prompt: {tokens}; medians over {repeats} runs (seconds)")
        print(f"  submit -> rendered view   {med['total']:.2f}")
        print(f"    queue (submit, deliver, claim) {med['queue']:.2f}")
        print(f"    worker (claim -> succeeded)    {med['worker']:.2f}  of which analysis {med['analysis']:.2f}")
        print(f"    page (poll, arrays, figure, draw) {med['page']:.2f}")
        print(f"portal overhead beyond the analysis: {med['total'] - med['analysis']:.2f} s "
              f"({med['total'] / med['analysis']:.2f}x the analysis alone)")
    finally:
        driver.quit()
        portal.stop()
        portal.backend.cleanup()


if __name__ == "__main__":
    main()
