"""The sae run's JSON and file exports through the real app: per-latent JSON (never a 500), NPZ/ZIP.

A succeeded ``sae`` run is recorded directly (a contract-shaped fake harvest
written to the real artifact store), so these tests need no model; the real
harvest end to end is in ``tests/e2e/test_sae_browser.py``.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from sae_fake import fake_harvest
from web_app import PASSWORD, app_env

pytestmark = pytest.mark.integration


def record_run(owner_id: int, kind: str, status: str, arrays: dict, summary: dict) -> str:
    """A run row with its arrays stored as artifacts, as a worker records them."""
    from models import Run, session_scope
    from models.run import Artifact
    from models.store import ArtifactStore

    store = ArtifactStore()
    with session_scope() as session:
        run = Run(kind=kind, model="tiny-gpt2", params={"model": "tiny-gpt2"}, params_hash="0" * 64,
                  owner_id=owner_id, queue="gpu", status=status, stage=status, summary=summary)
        session.add(run)
        session.flush()
        for name, array in arrays.items():
            stored = store.write_array(array)
            session.add(Artifact(run_id=run.id, name=name, uri=stored.uri, dtype=stored.dtype,
                                 shape=list(stored.shape), nbytes=stored.nbytes, sha256=stored.sha256))
        return run.id


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with app_env(tmp_path_factory.mktemp("sae-api"), models, ATLAS_UMAP_WARMUP="false"):
        from webapp import users_service
        from webapp.app import create_app

        server = create_app().server
        user = users_service.create_user("sae-user", PASSWORD)
        secret = users_service.create_api_token("sae-user", "tests")
        client = server.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
        arrays, summary = fake_harvest(d_sae=30, d_in=6, n_tokens=400, seed=2)
        summary["vocab"]["3"] = "<script>alert(1)</script>"
        summary["labels"][0] = "<script>alert(2)</script>"
        runs = {"done": record_run(user.id, "sae", "succeeded", arrays, summary),
                "running": record_run(user.id, "sae", "running", {}, {}),
                "geometry": record_run(user.id, "geometry", "succeeded", {}, {})}
        yield client, runs, arrays


def _error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    assert fragment in response.get_json()["error"]


def test_latent_json(portal):
    client, runs, arrays = portal
    j = int(np.argmax(arrays["fire_count"]))
    response = client.get(f"/api/runs/{runs['done']}/latents/{j}.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = json.loads(response.get_data(as_text=True))
    assert document["latent"] == j and document["d_sae"] == 30
    assert document["fire_count"] == int(arrays["fire_count"][j])
    assert [x["token"] for x in document["top_examples"]] == [int(t) for t in arrays["top_token"][j] if t >= 0]
    assert "attachment" in response.headers["Content-Disposition"]


@pytest.mark.parametrize(("latent", "fragment"), [
    ("30", "latent 30 does not exist"), ("-1", "does not exist"), ("abc", "not a latent id"),
    ("1.5", "not a latent id"), ("99999999999999999999999", "not a latent id"),
])
def test_latent_json_out_of_range_is_a_clear_404(portal, latent, fragment):
    client, runs, _ = portal
    _error(client.get(f"/api/runs/{runs['done']}/latents/{latent}.json"), 404, fragment)


def test_latent_json_of_other_runs(portal):
    client, runs, _ = portal
    _error(client.get(f"/api/runs/{runs['geometry']}/latents/0.json"), 400, "latents exist for sae runs only")
    _error(client.get(f"/api/runs/{runs['running']}/latents/0.json"), 409, "is running")
    _error(client.get("/api/runs/nope/latents/0.json"), 404, "no run with ID")


def test_npz_and_zip_exports_hold_every_array(portal):
    client, runs, arrays = portal
    response = client.get(f"/api/runs/{runs['done']}/export?format=npz")
    assert response.status_code == 200
    with np.load(io.BytesIO(response.data), allow_pickle=False) as npz:
        assert set(npz.files) == set(arrays)
        np.testing.assert_array_equal(npz["lat_ptr"], arrays["lat_ptr"])
    response = client.get(f"/api/runs/{runs['done']}/export?format=zip")
    with zipfile.ZipFile(io.BytesIO(response.data)) as bundle:
        assert sorted(bundle.namelist()) == sorted([f"{runs['done']}.json", f"{runs['done']}.npz"])


def test_the_run_view_renders_without_loading_arrays(portal):
    from webapp import runs_service
    from webapp.views import get_view

    _, runs, _ = portal
    run = runs_service.get_run(runs["done"])
    view = get_view("sae")
    assert view.ARRAYS == []
    import plotly

    tree = json.dumps(view.render(run, {}), cls=plotly.utils.PlotlyJSONEncoder)
    for tab in ("Latent browser", "UMAP explorer", "Similarity graph", "Point cloud"):
        assert tab in tree


def test_cli_render_writes_the_sae_views(portal, tmp_path):
    from atlas_cli import main as cli

    _, runs, _ = portal
    out = tmp_path / "bundle"
    assert cli.main(["render", runs["done"], "--output", str(out), "--no-png"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"index.html", "umap-clusters.html", "umap-density.html", "graph-cosine.html",
                     "cluster-cloud.html", "histograms.html"}
    page = (out / "umap-clusters.html").read_text()
    assert "Plotly" in page and "alert(2)" in page and "<script>alert(2)" not in page
    assert cli.main(["render", runs["running"], "--output", str(out)]) == 2
