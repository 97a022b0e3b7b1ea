"""A lost worker is visible at once and retried at once, on a real Celery worker.

The stale timeout here is far longer than any wait in the test (600 s), so a
run can only be retried within the test because the worker's main process
reported its dead pool child (``workers.worker_lost``), not because the
sweeper's stale timeout ran out. A grid killed mid-way resumes from the
pieces of cells its first attempt saved (``workers.checkpoints``). Runs on the embedded default (SQLite
database + SQLite broker) and on PostgreSQL + Redis.
"""

from __future__ import annotations

import io
import os
import signal
from datetime import datetime

import numpy as np
import pytest

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

STALE_AFTER = 600.0
SLOW = {"model": "tiny-gpt2", "prompts": [f"p{i}" for i in range(300)], "batch_size": 1, "max_tokens": 8}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def portal(request, tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp(f"loss-{request.param}")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    extra = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": str(STALE_AFTER),
             "ATLAS_SWEEP_EVERY": "1", "ATLAS_LIMITS__MAX_PROMPTS": "2000"}
    with started_portal(data_dir, request.param, models, "tiny-gpt2", extra) as live:
        yield live


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_killed_pool_child_shows_at_once_and_is_retried_without_the_stale_timeout(portal):
    run = portal.submit(portal.alice, SLOW)
    running = portal.wait_for(run["id"], portal.alice, {"running"},
                              predicate=lambda r: r["progress"] > 0.05)
    (first,) = running["attempt_records"]
    assert first["outcome"] is None and first["worker"] == running["worker"]
    child = first["pid"]
    assert child and child != portal.workers[-1].pid  # the pool child, not the worker's main process

    # A frozen child stops beating: the record says so within three missed beats.
    os.kill(child, signal.SIGSTOP)
    try:
        frozen = portal.wait_for(run["id"], portal.alice, {"running"}, 60,
                                 predicate=lambda r: r["heartbeat_stale"])
        assert frozen["warning"].startswith("worker lost? no heartbeat for ")
        assert frozen["warning"].endswith(" s; retrying")
        listed = portal.api("GET", "/api/runs", portal.alice).json()["runs"]
        assert [r["warning"] for r in listed if r["id"] == run["id"]] == [frozen["warning"]]
    finally:
        os.kill(child, signal.SIGKILL)

    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed", "cancelled"}, 240)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2 and not done["heartbeat_stale"] and done["warning"] is None
    one, two = done["attempt_records"]
    assert (one["attempt"], one["outcome"], one["pid"]) == (1, "lost", child)
    assert "SIGKILL" in one["error"], one["error"]
    assert (two["attempt"], two["outcome"]) == (2, "succeeded") and two["pid"] != child
    # Retried long before the heartbeat could have gone stale, and the first start is kept.
    assert (_time(two["started_at"]) - _time(one["started_at"])).total_seconds() < STALE_AFTER
    assert _time(one["finished_at"]) <= _time(two["started_at"])
    assert done["started_at"] == one["started_at"]
    assert done["duration_s"] >= (_time(done["finished_at"]) - _time(one["started_at"])).total_seconds() - 1


GRID = {"model": "tiny-gpt2", "layer": 1, "size": 512, "spacing": 0.02, "plane": "random_projection",
        "seed": 3, "top_k": 3}
PIECE = 8192  # latent_atlas.analyses.grid.resume.CHECKPOINT_CELLS


def _grid_arrays(portal: Portal, run_id: str) -> dict[str, np.ndarray]:
    response = portal.api("GET", f"/api/runs/{run_id}/export?format=npz", portal.alice)
    assert response.status_code == 200, response.text
    return dict(np.load(io.BytesIO(response.content), allow_pickle=False))


def test_a_grid_killed_mid_way_resumes_from_its_finished_cells(portal):
    run = portal.submit(portal.alice, GRID, kind="grid")
    portal.wait_for(run["id"], portal.alice, {"running"}, 180,
                    predicate=lambda r: r["stage"].startswith("cells") and r["progress"] > 0.3)
    child = portal.api("GET", f"/api/runs/{run['id']}", portal.alice).json()["attempt_records"][0]["pid"]
    os.kill(child, signal.SIGSTOP)  # frozen between two reports: the stage says how far it got
    try:
        frozen = portal.api("GET", f"/api/runs/{run['id']}", portal.alice).json()
    finally:
        os.kill(child, signal.SIGKILL)
    assert frozen["status"] == "running" and frozen["progress"] < 1.0, frozen
    reached, total = (int(n) for n in frozen["stage"].split(": ")[1].split(" ")[0].split("/"))
    assert total == 512 * 512 and reached >= PIECE

    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed", "cancelled"}, 300)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2 and [a["outcome"] for a in done["attempt_records"]] == ["lost", "succeeded"]
    resumed = done["summary"]["resumed_cells"]
    # Every piece that ended before the frozen report was saved and loaded, not computed again.
    assert resumed % PIECE == 0 and resumed >= (reached // PIECE) * PIECE > 0
    assert not (portal.data_dir / "artifacts" / "partial" / run["id"]).exists()  # pieces removed at the end

    whole = portal.wait_for(portal.submit(portal.alice, GRID, kind="grid")["id"], portal.alice,
                            {"succeeded", "failed", "cancelled"}, 300)
    assert whole["status"] == "succeeded" and whole["attempts"] == 1
    assert whole["summary"]["resumed_cells"] == 0
    interrupted, reference = _grid_arrays(portal, run["id"]), _grid_arrays(portal, whole["id"])
    assert set(interrupted) == set(reference)
    for name in ("top_ids", "top_probs", "entropy", "xs", "ys"):
        np.testing.assert_array_equal(interrupted[name], reference[name], err_msg=name)
