"""A simulated day of a 6-member lab through the real dispatcher: FIFO against fair share, same arrivals.

Usage::

    python bench/fair_share.py [--scale 1.0] [--seed 0] [--json out.json] [--backend sqlite|postgres]
                               [--half-life 60] [--small-run 5]

The day (``bench/_lab_day.py``: two heavy members queueing grids, two medium
ones with geometry runs and a small grid, two light ones with short geometry
runs and lens decodes of clicked points) is played twice on the offline demo
model, each time on a fresh portal (web + a ``gpu,cpu`` worker + an
``interactive`` worker): first with ``ATLAS_FAIR_SHARE__ORDER=fifo`` (the
baseline: submission order), then ``fair``. Before each day the light members'
decode sources are computed and both workers have loaded the model, so the
day measures queueing, not model loading; those warm-up runs are left out.

Measured from the API: a run's wait is ``started_at - created_at`` (runs on the
ordered queues; decodes excluded), a decode's latency ``finished_at -
created_at`` (submit to succeeded). Printed: per member n, median and p95 wait
under FIFO and fair and their ratio (fair / FIFO, FIFO floored at
``WAIT_FLOOR_S``), the lane's latencies, and the issue's three targets with
PASS/FAIL. The arrival clock is the bench's: a submission that lags its
arrival time (a loaded web process) shifts ``created_at`` in both runs alike.

Fair share's decay is set to ``--half-life`` seconds (the setting's minimum,
60, by default: with the production hour nothing would decay within a
two-minute day) and ``--small-run`` marks a run estimated at most that many
seconds as small; both apply to both runs (FIFO ignores them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _lab_day import (
    INTERACTIVE_P95_S,
    LANE,
    LIGHT_P95_RATIO_MAX,
    MEDIAN_RATIO_MAX,
    MEMBERS,
    WAIT_FLOOR_S,
    Job,
    interactive_latencies,
    lab_day,
    lens_rows,
    light_source_params,
    percentile,
    verdicts,
)

from _portal import demo_portal
from harness import Portal
from latent_atlas.settings import DEMO_MODEL_NAME

TERMINAL = {"succeeded", "failed", "cancelled"}


def lane_available() -> bool:
    from workers.celery_app import QUEUES

    return LANE in QUEUES


def fair_share_available() -> bool:
    """The fair_share setting exists and the gated dispatcher that reads it."""
    import workers.dispatch
    from latent_atlas.settings import Settings

    return "fair_share" in Settings.model_fields and hasattr(workers.dispatch, "dispatch_pending")


def _seconds(later: str | None, earlier: str | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _submit(portal: Portal, token: str, kind: str, params: dict[str, Any], title: str) -> dict[str, Any]:
    response = portal.api("POST", "/api/runs", token,
                          json={"kind": kind, "params": {"model": DEMO_MODEL_NAME, **params},
                                "force": True, "title": title})
    if response.status_code != 201:
        raise RuntimeError(f"{kind} {title!r} refused ({response.status_code}): {response.text[:300]}")
    return response.json()


def _wait_all(portal: Portal, token: str, ids: set[str], timeout: float) -> None:
    """Poll the runs list (one request a round) until every run of ``ids`` is terminal."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} runs not finished after {timeout:.0f} s:\n{portal.logs()}")
        listed = portal.api("GET", "/api/runs?limit=1000", token).json()["runs"]
        pending -= {row["id"] for row in listed if row["status"] in TERMINAL}
        if pending:
            time.sleep(1.0)


USERS_SCRIPT = """
import json, sys
from webapp import users_service
tokens = {}
for name, admin in json.loads(sys.argv[1]):
    users_service.create_user(name, "bench-password-1", is_admin=admin)
    tokens[name] = users_service.create_api_token(name, "bench")
print(json.dumps(tokens))
"""


def create_users(portal: Portal, users: list[tuple[str, bool]]) -> dict[str, str]:
    """Create the members in one process (what ``latent-atlas users create/token`` does, without a
    start-up per call); their API tokens by name."""
    done = subprocess.run([sys.executable, "-c", USERS_SCRIPT, json.dumps(users)], env=portal.env,
                          capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _finished(portal: Portal, token: str, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Wait for ``runs`` (by name) and return their details; every one must have succeeded."""
    _wait_all(portal, token, {run["id"] for run in runs.values()}, timeout=600)
    details = {name: portal.api("GET", f"/api/runs/{run['id']}", token).json() for name, run in runs.items()}
    for name, detail in details.items():
        if detail["status"] != "succeeded":
            raise RuntimeError(f"warm-up run {name} {detail['status']}: {detail.get('error')}\n{portal.logs()}")
    return details


def warm_up(portal: Portal, tokens: dict[str, str], scale: float, lane: bool) -> dict[str, dict[str, Any]]:
    """Both workers' models loaded, and each light member's decode source (a finished geometry run).

    The model loads are the admin's runs, so no member starts the day charged with them (a fair-share
    member's usage counts every second of its runs); a light member's own source is a ~2 s run.
    """
    admin = tokens["admin"]
    first = _finished(portal, admin, {"load": _submit(portal, admin, "geometry", light_source_params(scale),
                                                      "warm-up: the gpu worker loads the model")})["load"]
    runs = {member: _submit(portal, tokens[member], "geometry", light_source_params(scale),
                            "decode source (before the day)")
            for member, tier in MEMBERS if tier == "light"}
    if lane:  # the interactive worker loads the model on its first decode
        runs["lane"] = _submit(portal, admin, "geometry_lens", {"source_run": first["id"], "rows": [0]},
                               "warm-up: the interactive worker loads the model")
    details = _finished(portal, admin, runs)
    details.pop("lane", None)
    return details


def play_day(order: str, jobs: list[Job], args: argparse.Namespace, lane: bool) -> dict[str, Any]:
    """One fresh portal in ``order`` mode; the day's runs as records (member, times, queue, status)."""
    env = {
        "ATLAS_FAIR_SHARE__ORDER": order,
        "ATLAS_FAIR_SHARE__HALF_LIFE_S": str(args.half_life),
        "ATLAS_FAIR_SHARE__SMALL_RUN_S": str(args.small_run),
        # Per-member in-flight limit above the day's largest burst: the bench measures order, not refusals.
        "ATLAS_LIMITS__MAX_CONCURRENT_RUNS_PER_USER": "32",
        # One thread per process: two workers share two cores with the web process (and, here, other
        # engineers' jobs); per-op OpenMP parallelism on an oversubscribed CPU stalls every small op at
        # its barrier (a 2-prompt geometry run: 30 s with two threads at load 18, 1.3 s with one).
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    }
    queues = ("gpu,cpu", LANE) if lane else ("gpu,cpu",)
    started = time.monotonic()
    portal = demo_portal(args.backend, env, queues)
    try:
        tokens = create_users(portal, [("bench-admin", True), *((member, False) for member, _tier in MEMBERS)])
        tokens["admin"] = tokens.pop("bench-admin")
        sources = warm_up(portal, tokens, args.scale, lane)
        setup_s = time.monotonic() - started
        print(f"[{order}] portal, users and warm-up: {setup_s:.0f} s; playing {len(jobs)} submissions", flush=True)
        submitted: list[tuple[Job, str, float]] = []
        day_start = time.monotonic()
        for job in jobs:
            delay = day_start + job.arrival_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lag = time.monotonic() - day_start - job.arrival_s
            params = dict(job.params)
            if job.interactive:
                source = sources[job.member]
                params = {"source_run": source["id"], "rows": lens_rows(job, source["summary"]["n_points"])}
            run = _submit(portal, tokens[job.member], job.kind, params, job.label)
            submitted.append((job, run["id"], lag))
        arrivals_s = time.monotonic() - day_start
        _wait_all(portal, tokens["admin"], {run_id for _job, run_id, _lag in submitted}, timeout=args.drain_timeout)
        day_s = time.monotonic() - day_start
        records = []
        for job, run_id, lag in submitted:
            detail = portal.api("GET", f"/api/runs/{run_id}", tokens[job.member]).json()
            records.append({
                "member": job.member, "tier": job.tier, "kind": job.kind, "label": job.label,
                "arrival_s": round(job.arrival_s, 2), "submit_lag_s": round(lag, 2), "id": run_id,
                "queue": detail["queue"], "status": detail["status"], "interactive": job.interactive,
                "created_at": detail["created_at"], "started_at": detail["started_at"],
                "finished_at": detail["finished_at"],
                "wait_s": _seconds(detail["started_at"], detail["created_at"]),
                "latency_s": _seconds(detail["finished_at"], detail["created_at"])
                if detail["status"] == "succeeded" else None,
                "run_s": _seconds(detail["finished_at"], detail["started_at"]),
            })
        return {"order": order, "setup_s": setup_s, "arrivals_s": arrivals_s, "day_s": day_s,
                "records": records, "lane_overlaps": lane_overlaps(records)}
    finally:
        portal.stop()
        portal.backend.cleanup()


def lane_overlaps(records: list[dict[str, Any]]) -> int:
    """Decodes whose submit..finish overlapped a run of the ordered queues (the lane's case: the gpu busy)."""
    def span(r: dict[str, Any], a: str, b: str) -> tuple[datetime, datetime] | None:
        if r[a] is None or r[b] is None:
            return None
        return datetime.fromisoformat(r[a]), datetime.fromisoformat(r[b])

    busy = [s for r in records if not r["interactive"] and (s := span(r, "started_at", "finished_at"))]
    count = 0
    for r in records:
        if r["interactive"] and (s := span(r, "created_at", "finished_at")):
            count += any(b0 < s[1] and s[0] < b1 for b0, b1 in busy)
    return count


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def report(days: dict[str, dict[str, Any]], lane: bool, fair_share: bool) -> dict[str, Any]:
    fifo, fair = days["fifo"]["records"], days["fair"]["records"]
    result = verdicts(fifo, fair)
    print()
    print(f"{'member':<9} {'tier':<6} {'n':>2} {'FIFO med':>9} {'FIFO p95':>9} {'fair med':>9} {'fair p95':>9} "
          f"{'med ratio':>9} {'p95 ratio':>9}")
    for member, row in result["members"].items():
        a, b = row["fifo"] or {}, row["fair"] or {}
        print(f"{member:<9} {row['tier']:<6} {a.get('n', 0):>2} {_fmt(a.get('median_s')):>9} "
              f"{_fmt(a.get('p95_s')):>9} {_fmt(b.get('median_s')):>9} {_fmt(b.get('p95_s')):>9} "
              f"{_fmt(row['median_ratio'], 'x'):>9} {_fmt(row['p95_ratio'], 'x'):>9}")
    print(f"(waits in seconds, started_at - created_at; ratios fair / FIFO with FIFO floored at {WAIT_FLOOR_S:.0f} s)")
    for order in ("fifo", "fair"):
        day = days[order]
        lat = interactive_latencies(day["records"])
        busy = sum(r["run_s"] or 0 for r in day["records"] if not r["interactive"])
        lane_text = (f"decodes: n {len(lat)}, median {_fmt(percentile(lat, 0.5) if lat else None)} s, "
                     f"p95 {_fmt(percentile(lat, 0.95) if lat else None)} s, "
                     f"{day['lane_overlaps']} while a long run ran") if lat else "decodes: none succeeded"
        failed = [r["label"] for r in day["records"] if r["status"] != "succeeded"]
        print(f"[{order}] day {day['day_s']:.0f} s (arrivals {day['arrivals_s']:.0f} s), ordered-queue work "
              f"{busy:.0f} s; {lane_text}" + (f"; NOT succeeded: {failed}" if failed else ""))
    t = result["targets"]
    lane_t, med_t, light_t = t["interactive_p95"], t["median_not_worse_than_2x"], t["light_p95_far_better"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print()
    print(f"target 1, interactive p95 < {INTERACTIVE_P95_S:.0f} s while long jobs run: "
          f"{_fmt(lane_t['value_s'], ' s')} over {lane_t['n']} decodes on queue(s) {lane_t['queues']}: "
          f"{verdict(lane_t['pass'])}" + ("" if lane else " (no interactive lane in this tree)"))
    print(f"target 2, no member's median wait worse than {MEDIAN_RATIO_MAX:.0f}x FIFO: worst "
          f"{_fmt(med_t['worst_ratio'], 'x')}: {verdict(med_t['pass'])}")
    light_text = ", ".join(f"{r:.2f}x" for r in light_t["ratios"]) or "-"
    print(f"target 3, light members' p95 far better (fair / FIFO <= {LIGHT_P95_RATIO_MAX}): {light_text}: "
          f"{verdict(light_t['pass'])}")
    if not fair_share:
        print("NOTE: this tree has no fair-share dispatcher (setting + dispatch_pending): both days ran the "
              "same dispatch, so targets 2-3 compare it with itself")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="time scale of the day (arrivals and job sizes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and job sizes")
    parser.add_argument("--json", type=Path, default=None, help="write every run's record and the verdicts here")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--half-life", type=float, default=60.0, help="fair_share.half_life_s (>= 60)")
    parser.add_argument("--small-run", type=float, default=5.0, help="fair_share.small_run_s (>= 1)")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for a day's runs")
    args = parser.parse_args()
    if args.half_life < 60 or args.small_run < 1:
        parser.error("--half-life must be >= 60 and --small-run >= 1 (the fair_share settings' bounds)")
    jobs = lab_day(args.seed, args.scale)
    lane, fair_share = lane_available(), fair_share_available()
    print(f"lab day: seed {args.seed}, scale {args.scale}, {len(jobs)} submissions over "
          f"{max(j.arrival_s for j in jobs):.0f} s; interactive lane: {lane}; fair_share setting: {fair_share}")
    for job in jobs:
        print(f"  {job.arrival_s:6.1f} s  {job.member:<9} {job.label}")
    started = time.monotonic()
    days = {order: play_day(order, jobs, args, lane) for order in ("fifo", "fair")}
    result = report(days, lane, fair_share)
    wall = time.monotonic() - started
    print(f"wall time: {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall,
                                         "days": days, **result}, indent=1))


if __name__ == "__main__":
    main()
