"""Web responsiveness while a worker is busy vs idle (same portal, same run).

Measures the run page (the HTML shell a browser loads), the run's JSON (what
the page polls) and ``/api/runs`` (the runs table) with the worker idle, then
while it runs a long geometry job on the demo model. Target: p95 < 300 ms busy.
The web process never does model work, so the ratio shows only CPU contention.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from _portal import demo_portal, percentile
from latent_atlas.settings import DEMO_MODEL_NAME


def sample(portal, token: str, session: requests.Session, run_id: str, n: int) -> dict[str, list[float]]:
    paths = {
        "run page": (session, f"/runs/{run_id}"),
        "run JSON": (None, f"/api/runs/{run_id}"),
        "/api/runs": (None, "/api/runs"),
    }
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, (sess, path) in paths.items():
            started = time.perf_counter()
            if sess is not None:
                response = sess.get(portal.url + path, timeout=30)
            else:
                response = portal.api("GET", path, token)
            response.raise_for_status()
            timings[name].append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()
    portal = demo_portal()
    try:
        token = portal.create_user("bench", "bench-password-1")
        session = requests.Session()
        session.post(portal.url + "/login", data={"username": "bench", "password": "bench-password-1"})
        small = portal.submit(token, {"model": DEMO_MODEL_NAME, "prompts": ["Hello world"]})
        portal.wait_for(small["id"], token, {"succeeded"}, timeout=300)  # model loaded: warm
        idle = sample(portal, token, session, small["id"], args.requests)
        prompts = [f"Sentence {i}: the model reads this text and we watch its states." for i in range(256)]
        busy_run = portal.submit(token, {"model": DEMO_MODEL_NAME, "prompts": prompts,
                                         "max_tokens": 32, "batch_size": 8})
        portal.wait_for(busy_run["id"], token, {"running"}, predicate=lambda r: r["progress"] > 0)
        busy = sample(portal, token, session, small["id"], args.requests)
        still_running = portal.api("GET", f"/api/runs/{busy_run['id']}", token).json()["status"]
        print(f"worker busy during the whole busy sample: {still_running == 'running'}")
        print(f"{'endpoint':<12} {'idle p50':>9} {'idle p95':>9} {'busy p50':>9} {'busy p95':>9} {'p95 ratio':>9}")
        worst = 0.0
        for name in idle:
            i50, i95 = statistics.median(idle[name]), percentile(idle[name], 0.95)
            b50, b95 = statistics.median(busy[name]), percentile(busy[name], 0.95)
            worst = max(worst, b95)
            print(f"{name:<12} {i50:9.1f} {i95:9.1f} {b50:9.1f} {b95:9.1f} {b95 / i95:8.2f}x")
        print(f"web latency: worst busy p95 {worst:.1f} ms (target < 300 ms): "
              f"{'OK' if worst < 300 else 'MISSED'}")
        portal.api("POST", f"/api/runs/{busy_run['id']}/cancel", token)
    finally:
        portal.stop()
        portal.backend.cleanup()


if __name__ == "__main__":
    main()
