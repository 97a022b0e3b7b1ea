"""An anatomy run's attention through the JSON API, on a live portal with a real worker: one head equals
the stored pattern, the thumbnail sheet (whole or one layer) equals the stored thumbnails, and a bad
layer/head, a run of another kind or an unknown run is answered in JSON (400/404), never a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest

from harness import Portal, started_portal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-anatomy")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with started_portal(data_dir, "sqlite", models, "tiny-gpt2",
                        {"ATLAS_LIMITS__MAX_TOKENS_PER_PROMPT": "64"}) as live:
        yield live


def test_attention_head_and_thumbnails(portal: Portal) -> None:
    run = portal.submit(portal.alice, {"model": "tiny-gpt2", "prompt": "The capital of France is",
                                       "ig_steps": 0, "vocab_sample": 50}, kind="anatomy")
    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done.get("error")
    export = portal.api("GET", f"/api/runs/{run['id']}/export?format=npz", portal.alice)
    arrays = dict(np.load(io.BytesIO(export.content), allow_pickle=False))
    n_layers, n_heads = done["summary"]["n_layers"], done["summary"]["n_heads"]
    base = f"/api/runs/{run['id']}/anatomy"

    one = portal.api("GET", f"{base}/attention?layer=1&head={n_heads - 1}", portal.alice)
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["layer"], body["head"], body["n_layers"], body["n_heads"]) == (1, n_heads - 1, n_layers, n_heads)
    assert body["tokens"] == done["summary"]["tokens"]
    np.testing.assert_allclose(np.array(body["pattern"]),
                               arrays["attention"][n_heads + n_heads - 1].astype(np.float64), atol=1e-5)

    sheet = portal.api("GET", f"{base}/thumbnails", portal.alice).json()
    np.testing.assert_array_equal(np.array(sheet["thumbnails"], dtype=np.uint8), arrays["attention_thumbs"])
    layer = portal.api("GET", f"{base}/thumbnails?layer={n_layers - 1}", portal.alice).json()
    np.testing.assert_array_equal(np.array(layer["thumbnails"], dtype=np.uint8),
                                  arrays["attention_thumbs"][(n_layers - 1) * n_heads:])

    bad = [
        (f"{base}/attention?layer={n_layers}&head=0", 400, f"layer {n_layers} is out of range"),
        (f"{base}/attention?layer=0&head=-1", 400, "head -1 is out of range"),
        (f"{base}/attention?layer=abc&head=0", 400, "layer must be a whole number"),
        (f"{base}/attention?layer=0.5&head=0", 400, "layer must be a whole number"),
        (f"{base}/attention?layer=0", 400, "head is required"),
        (f"{base}/thumbnails?layer=1e9", 400, "out of range"),
        ("/api/runs/NoSuchRun123/anatomy/attention?layer=0&head=0", 404, "no run with ID"),
    ]
    for path, status, expected in bad:
        response = portal.api("GET", path, portal.alice)
        assert response.status_code == status, (path, response.text)
        assert expected in response.json()["error"], (path, response.json())

    scan = portal.submit(portal.alice, {"model": "tiny-gpt2", "prompt_a": "Hello"}, kind="scan")
    other = portal.api("GET", f"/api/runs/{scan['id']}/anatomy/thumbnails", portal.alice)
    assert other.status_code == 400 and "scan run" in other.json()["error"]
