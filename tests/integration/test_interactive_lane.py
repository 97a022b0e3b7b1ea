"""The interactive lane on real workers: a lens decode answers while a long grid holds the gpu worker.

The portal runs the layout of ``latent-atlas up``: one worker on ``gpu,cpu``
(long jobs) and one on ``interactive`` (its own process and model cache), on
the embedded default (SQLite database + SQLite broker) and the demo model.
The GGUF conversion and tokenizer caches are the repository's (as the unit
tests' demo model uses), so no worker pays the one-off conversion here.

Synchronisation is on run states only (no sleeps standing in for order): the
grid is running before the lane runs are submitted, and it must still be
running when they have succeeded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Portal, started_portal
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LENS_BOUND = 4  # the lane's bound for this portal: a decode of at most 4 points
# Layer 0 of the demo model: every cell runs all 30 blocks; 128 x 128 cells take minutes on 2 CPU cores
# (it is cancelled once the lane has answered).
LONG_GRID = {"model": DEMO_MODEL_NAME, "layer": 0, "size": 128, "plane": "direct"}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("lane")
    for cache in ("converted", "tokenizers"):  # the repository's caches of the demo model
        (REPO_ROOT / ".atlas" / cache).mkdir(parents=True, exist_ok=True)
        (data_dir / cache).symlink_to(REPO_ROOT / ".atlas" / cache)
    models = {DEMO_MODEL_NAME: {"source": str(demo_model_dir), "gguf_file": DEMO_GGUF_FILE}}
    extra = {
        "ATLAS_INTERACTIVE__MAX_LENS_POINTS": str(LENS_BOUND),
        "ATLAS_HEARTBEAT_EVERY": "1",
        "ATLAS_SWEEP_EVERY": "2",
    }
    with started_portal(data_dir, "sqlite", models, DEMO_MODEL_NAME, extra,
                        workers=("gpu,cpu", "interactive")) as live:
        yield live


def _submit(portal: Portal, kind: str, params: dict) -> dict:
    response = portal.api("POST", "/api/runs", portal.alice, json={"kind": kind, "params": params, "force": True})
    assert response.status_code == 201, response.text
    return response.json()


def _status(portal: Portal, run_id: str) -> dict:
    return portal.api("GET", f"/api/runs/{run_id}", portal.alice).json()


def test_a_lens_decode_succeeds_while_a_long_grid_runs(portal):
    geometry = portal.wait_for(
        _submit(portal, "geometry", {"model": DEMO_MODEL_NAME, "prompts": ["The capital of France is"],
                                     "lens_max_points": 0})["id"],
        portal.alice, {"succeeded", "failed"}, timeout=300)
    assert geometry["status"] == "succeeded", geometry.get("error") or portal.logs()
    assert geometry["queue"] == "gpu"
    n_points = geometry["summary"]["n_points"]

    grid = _submit(portal, "grid", LONG_GRID)
    assert grid["queue"] == "gpu"
    portal.wait_for(grid["id"], portal.alice, {"running"}, timeout=300,
                    predicate=lambda run: run["progress"] > 0)  # computing cells, the model loaded

    rows = [0, 7, n_points - 1]
    lens = _submit(portal, "geometry_lens", {"source_run": geometry["id"], "model": DEMO_MODEL_NAME, "rows": rows})
    assert lens["queue"] == "interactive"
    reproject = _submit(portal, "geometry_reproject", {"source_run": geometry["id"], "model": DEMO_MODEL_NAME,
                                                        "dims": 2})
    assert reproject["queue"] == "interactive"  # its source's points are within the lane's bound
    too_big = _submit(portal, "geometry_lens", {"source_run": geometry["id"], "model": DEMO_MODEL_NAME,
                                                "rows": list(range(LENS_BOUND + 1))})
    assert too_big["queue"] == "gpu"  # over the bound: the normal queue, behind the grid

    done = portal.wait_for(lens["id"], portal.alice, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done.get("error") or portal.logs()
    moved = portal.wait_for(reproject["id"], portal.alice, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert moved["status"] == "succeeded", moved.get("error") or portal.logs()
    still = _status(portal, grid["id"])
    assert still["status"] == "running", f"the grid is no longer running: {still['status']}"
    assert _status(portal, too_big["id"])["status"] == "queued"
    assert done["worker"].startswith("w1-") and still["worker"].startswith("w0-")  # the lane's own worker
    assert done["summary"]["points"] == 3 and set(done["summary"]["tokens"])
    assert moved["summary"]["source_run"] == geometry["id"]

    for run in (grid, too_big):
        response = portal.api("POST", f"/api/runs/{run['id']}/cancel", portal.alice)
        assert response.status_code == 200, response.text
    assert portal.wait_for(grid["id"], portal.alice, {"cancelled", "succeeded", "failed"},
                           timeout=240)["status"] == "cancelled"
    assert portal.wait_for(too_big["id"], portal.alice, {"cancelled", "succeeded", "failed"},
                           timeout=60)["status"] == "cancelled"
