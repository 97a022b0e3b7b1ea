"""``sae_train`` through the real portal: API -> broker -> worker -> artifacts -> an SAE that loads.

A tiny Llama in the catalogue, a corpus file in the portal's ``corpora``
folder; the stored SAE is written back by ``StoredRuns.sae_dir`` (what a
harvest of a trained SAE uses) and loaded by ``load_sae``. Bad parameters are
refused by the API before anything is queued.
"""

from __future__ import annotations

import io
import os
import random
import zipfile

import numpy as np
import pytest

from harness import started_portal

pytestmark = pytest.mark.integration

PARAMS = {"model": "tiny-llama", "layer": 1, "d_sae": 32, "k": 4, "training_tokens": 3_000, "eval_tokens": 500,
          "context_len": 32, "batch_size": 256, "corpus": {"kind": "file", "file": "words.txt"}}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_llama_dir):
    data_dir = tmp_path_factory.mktemp("portal-sae-train")
    rng = random.Random(0)
    (data_dir / "corpora").mkdir()
    (data_dir / "corpora" / "words.txt").write_text(
        "\n".join(" ".join(rng.choice(["red", "fox", "runs", "over", "the", "hill", "at", "dawn"])
                           for _ in range(20)) for _ in range(300)))
    models = {"tiny-llama": {"source": str(tiny_llama_dir), "description": "tiny random Llama"}}
    with started_portal(data_dir, "sqlite", models, "tiny-llama", users=("trainer",)) as live:
        yield live


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"layer": 3}, "layer 3 is out of range: model tiny-llama has 3 layers (0..2)"),
    ({"k": 64}, "k (64) cannot exceed the number of latents d_sae (32)"),
    ({"training_tokens": 10**9}, "less than or equal to 50000000"),
    ({"corpus": {"kind": "file", "file": "../secret_key"}}, "String should match pattern"),
])
def test_bad_params_are_refused_and_nothing_is_queued(portal, overrides, fragment):
    before = len(portal.api("GET", "/api/runs", portal.trainer).json()["runs"])
    response = portal.api("POST", "/api/runs", portal.trainer, json={"kind": "sae_train", "params": {**PARAMS, **overrides}})
    assert response.status_code == 400, response.text
    assert any(fragment in message for message in response.json()["messages"]), response.json()
    assert len(portal.api("GET", "/api/runs", portal.trainer).json()["runs"]) == before


def test_trained_sae_is_stored_and_loads(portal, monkeypatch):
    run = portal.submit(portal.trainer, PARAMS, kind="sae_train")
    done = portal.wait_for(run["id"], portal.trainer, {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", (done.get("error"), portal.logs())
    summary = done["summary"]
    assert summary["hook_name"] == "blocks.1.hook_resid_post" and summary["steps"] == 3_000 // 256
    assert np.isfinite(summary["metrics"]["variance_explained"]) and summary["metrics"]["l0"] > 0  # 11 steps: no threshold here
    names = {a["name"] for a in done["artifacts"]}
    assert {"loss_step", "loss_value", "loss_mse", "sae__W_enc", "sae__W_dec", "sae__b_enc", "sae__b_dec"} <= names

    response = portal.api("GET", f"/api/runs/{run['id']}/sae.zip", portal.trainer)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["sae/cfg.json", "sae/sae_weights.safetensors"]
    missing = portal.api("GET", "/api/runs/nosuchrun/sae.zip", portal.trainer)
    assert missing.status_code == 404 and "error" in missing.json()

    for key, value in portal.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    from latent_atlas.settings import get_settings

    get_settings.cache_clear()
    try:
        from latent_atlas.analyses.sae.source import (
            SaeSource,
            decoder_rows,
            load_sae,
            sae_hook_layer,
        )
        from models.session import get_engine, get_sessionmaker
        from workers.inputs import StoredRuns

        get_engine.cache_clear()
        get_sessionmaker.cache_clear()
        runs = StoredRuns()
        directory = runs.sae_dir(run["id"])
        assert sorted(os.listdir(directory)) == ["cfg.json", "sae_weights.safetensors"]
        assert runs.sae_dir(run["id"]) == directory  # written once
        sae = load_sae(SaeSource(kind="run", run_id=run["id"]), run_dir_resolver=runs.sae_dir)
        assert sae_hook_layer(sae) == 1 and decoder_rows(sae).shape == (32, 64)
        assert np.isfinite(decoder_rows(sae)).all()
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()
        get_sessionmaker.cache_clear()



def _refused(portal, params, fragment):
    before = len(portal.api("GET", "/api/runs", portal.trainer).json()["runs"])
    response = portal.api("POST", "/api/runs", portal.trainer, json={"kind": "sae", "params": params})
    assert response.status_code == 400, response.text
    assert any(fragment in message for message in response.json()["messages"]), response.json()
    assert len(portal.api("GET", "/api/runs", portal.trainer).json()["runs"]) == before


def test_a_harvest_of_the_trained_sae_is_checked_before_queueing_and_runs(portal):
    """The offline path a new user takes: train an SAE, then harvest it by the training run's ID."""
    trained = portal.submit(portal.trainer, PARAMS, kind="sae_train")
    done = portal.wait_for(trained["id"], portal.trainer, {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", (done.get("error"), portal.logs())
    harvest = {"model": "tiny-llama", "sae": {"kind": "run", "run_id": trained["id"]},
               "corpus": {"kind": "prompts", "prompts": ["red fox runs over the hill at dawn"] * 8},
               "n_tokens": 64, "context_len": 16, "top_k": 4, "window": 2, "edges_k": 4,
               "umap_neighbors": 4, "batch_tokens": 64}
    _refused(portal, {**harvest, "sae": {"kind": "run", "run_id": "nosuchrun"}}, "there is no run nosuchrun")

    run = portal.submit(portal.trainer, harvest, kind="sae")
    finished = portal.wait_for(run["id"], portal.trainer, {"succeeded", "failed"}, timeout=300)
    assert finished["status"] == "succeeded", (finished.get("error"), portal.logs())
    assert finished["summary"]["d_sae"] == 32 and finished["summary"]["hook_layer"] == 1
    # A harvest is not a source of SAEs: refused before queueing, naming why.
    _refused(portal, {**harvest, "sae": {"kind": "run", "run_id": run["id"]}},
             "an SAE comes from a sae_train run")
