"""Scan runs through the real API and worker: bad input refused before queueing (a basis run of
another model, an empty B, a prompt over the token budget, UMAP out of range), "project into the
space of run X" reusing the stored basis, and the animation exports."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

A, B = "The capital of France is", "The capital of Spain is"


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir, tiny_llama_dir):
    data_dir = tmp_path_factory.mktemp("portal-scan")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"},
              "tiny-llama": {"source": str(tiny_llama_dir), "description": "tiny random Llama"}}
    with started_portal(data_dir, "sqlite", models, "tiny-gpt2",
                        {"ATLAS_LIMITS__MAX_TOKENS_PER_PROMPT": "64"}) as live:
        yield live


def _runs(portal: Portal) -> int:
    with create_engine(portal.backend.database_url).connect() as conn:
        return conn.execute(text("SELECT count(*) FROM runs")).scalar_one()


def _arrays(portal: Portal, run_id: str) -> dict[str, np.ndarray]:
    response = portal.api("GET", f"/api/runs/{run_id}/export?format=npz", portal.alice)
    assert response.status_code == 200, response.text
    return dict(np.load(io.BytesIO(response.content), allow_pickle=False))


def test_scan_basis_reuse_bad_input_and_exports(portal):
    first = portal.submit(portal.alice, {"model": "tiny-gpt2", "mode": "diff", "prompt_a": A, "prompt_b": B},
                          kind="scan")
    done = portal.wait_for(first["id"], portal.alice, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done.get("error")
    assert done["summary"]["diff"]["shared_prefix"] == len("The capital of ")

    bad = [
        ({"model": "tiny-llama", "prompt_a": A, "basis_run": first["id"]},
         f"basis run {first['id']} used model tiny-gpt2, not tiny-llama"),
        ({"model": "tiny-gpt2", "prompt_a": A, "basis_run": "NoSuchRun123"}, "does not exist"),
        ({"model": "tiny-gpt2", "mode": "diff", "prompt_a": A, "prompt_b": " "}, "prompt B is empty"),
        ({"model": "tiny-gpt2", "prompt_a": "x" * 80, "max_tokens": 64}, "prompt 1 has 80 tokens"),
        ({"model": "tiny-gpt2", "prompt_a": A, "max_tokens": 100}, "at most 64 tokens per prompt"),
        ({"model": "tiny-gpt2", "prompt_a": A, "reduction": "umap", "umap_min_dist": 2.0}, "umap_min_dist"),
        ({"model": "tiny-gpt2", "prompt_a": A, "unit_normalise": 1}, "unit_normalise"),
    ]
    before = _runs(portal)
    for params, expected in bad:
        response = portal.api("POST", "/api/runs", portal.alice, json={"kind": "scan", "params": params})
        assert response.status_code == 400, (params, response.text)
        assert any(expected in m for m in response.json()["messages"]), (expected, response.json())
    assert _runs(portal) == before  # nothing was queued

    # Another prompt in the space of the first run: the stored basis is reused, shared states coincide.
    second = portal.submit(portal.alice, {"model": "tiny-gpt2", "prompt_a": A + " Paris",
                                          "basis_run": first["id"]}, kind="scan")
    done2 = portal.wait_for(second["id"], portal.alice, {"succeeded", "failed"})
    assert done2["status"] == "succeeded", done2.get("error")
    one, two = _arrays(portal, first["id"]), _arrays(portal, second["id"])
    np.testing.assert_array_equal(one["basis_components"], two["basis_components"])
    n = len(A)
    np.testing.assert_allclose(two["coords"][:, :n], one["coords"][:, one["token_prompt"] == 0], atol=1e-5)

    page = portal.api("GET", f"/api/runs/{first['id']}/scan.html", portal.alice)
    assert page.status_code == 200 and "Plotly.animate" in page.text
    gif = portal.api("GET", f"/api/runs/{first['id']}/scan.gif", portal.alice)
    assert gif.status_code == 200 and Image.open(io.BytesIO(gif.content)).n_frames == 4
