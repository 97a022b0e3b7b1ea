"""Reuse of identical runs and the Python client, against a live portal with a real worker.

One portal (the embedded default: SQLite database + SQLite broker) serves both
parts: the client's runs are reused by the reuse tests and the other way round,
as they would be in a lab. The lookup rules themselves (which stored runs may
be reused) are checked on a bare database below, without a worker.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import plotly.graph_objects as go
import pytest
import requests
from sqlalchemy import select

from harness import make_backend, started_portal
from latent_atlas.client import ApiError, Atlas, RunFailed

pytestmark = pytest.mark.integration

PROMPTS = ["The cat sat on the mat.", "Dogs bark at night"]
PARAMS = {"model": "tiny-gpt2", "prompts": PROMPTS, "max_tokens": 32}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-reuse")
    corrupt = data_dir / "corrupt-model"  # its tokenizer loads, its weights do not
    shutil.copytree(tiny_gpt2_dir, corrupt)
    for weights in corrupt.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir)}, "corrupt": {"source": str(corrupt)}}
    with started_portal(data_dir, "sqlite", models, "tiny-gpt2",
                        {"ATLAS_LIMITS__MAX_CONCURRENT_RUNS_PER_USER": "20"}, users=("alice", "bob")) as live:
        yield live


@pytest.fixture(scope="module")
def first(portal):
    """A succeeded geometry run submitted through the client (the run the others reuse)."""
    run = Atlas(portal.url, portal.alice).submit("geometry", PARAMS, title="the first")
    assert not run.reused and run.status == "queued"
    return run.wait(timeout=180, progress=False)


def _post(portal, token: str, body: dict) -> requests.Response:
    return portal.api("POST", "/api/runs", token, json=body)


def _run_ids(portal) -> list[str]:
    return [r["id"] for r in portal.api("GET", "/api/runs", portal.alice).json()["runs"]]


def _stored_files(portal) -> set[str]:
    return {p.name for p in (portal.data_dir / "artifacts").rglob("*.npy")}


# -- reuse ------------------------------------------------------------------------------


def test_identical_params_hand_back_the_succeeded_run(portal, first):
    runs, files = _run_ids(portal), _stored_files(portal)
    # The same params in another key order, with defaults spelled out: the validated params are equal.
    spelled = {"max_tokens": 32, "reduction": "pca", "seed": 0, "prompts": PROMPTS, "model": "tiny-gpt2"}
    for token in (portal.alice, portal.bob):  # any member gets the lab's earlier result
        response = _post(portal, token, {"params": spelled, "kind": "geometry", "title": "again"})
        assert response.status_code == 200, response.text
        again = response.json()
        assert again["reused"] is True and again["id"] == first.id
        assert again["status"] == "succeeded" and again["title"] == "the first" and again["attempts"] == 1
    assert _run_ids(portal) == runs  # no row
    assert _stored_files(portal) == files  # no storage
    detail = portal.api("GET", f"/api/runs/{first.id}", portal.alice).json()
    assert detail["attempts"] == 1 and len(detail["attempt_records"]) == 1  # no GPU time


def test_a_different_value_or_force_queues_a_new_run(portal, first):
    other = _post(portal, portal.alice, {"kind": "geometry", "params": {**PARAMS, "seed": 1}})
    assert other.status_code == 201 and other.json()["reused"] is False, other.text
    forced = _post(portal, portal.alice, {"kind": "geometry", "params": PARAMS, "force": True})
    assert forced.status_code == 201, forced.text
    assert forced.json()["reused"] is False and forced.json()["id"] != first.id
    for run in (other.json(), forced.json()):
        assert portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})["status"] == "succeeded"


@pytest.mark.parametrize("force", ["yes", 1, "true", None])
def test_force_is_a_strict_bool(portal, force):
    before = _run_ids(portal)
    response = _post(portal, portal.alice, {"kind": "geometry", "params": PARAMS, "force": force})
    assert response.status_code == 400, response.text
    assert any(m.startswith("force:") for m in response.json()["messages"]), response.json()
    assert _run_ids(portal) == before


def test_a_failed_run_is_not_reused(portal):
    atlas = Atlas(portal.url, portal.alice)
    broken = {"model": "corrupt", "prompts": ["hello"], "max_tokens": 8}
    failed = atlas.submit("geometry", broken)
    with pytest.raises(RunFailed) as caught:
        failed.wait(timeout=180, progress=False)
    assert caught.value.record["status"] == "failed" and caught.value.record["error"] in str(caught.value)
    again = atlas.submit("geometry", broken)
    assert not again.reused and again.id != failed.id
    assert again.wait(timeout=180, progress=False, check=False).status == "failed"


def test_an_identical_reprojection_is_reused(portal, first):
    atlas = Atlas(portal.url, portal.alice)
    params = {"source_run": first.id, "model": "tiny-gpt2", "dims": 2}
    child = atlas.submit("geometry_reproject", params, parent_id=first.id).wait(timeout=180, progress=False)
    assert not child.reused
    twin = atlas.submit("geometry_reproject", {**params, "reduction": "pca"}, parent_id=first.id)
    assert twin.reused and twin.id == child.id


# -- the Python client -----------------------------------------------------------------


def test_client_arrays_equal_the_export_and_summary_the_record(portal, first):
    atlas = Atlas(portal.url, portal.bob)
    arrays = atlas.run(first.id).arrays()
    exported = portal.api("GET", f"/api/runs/{first.id}/export?format=npz", portal.alice)
    with np.load(io.BytesIO(exported.content)) as npz:
        assert sorted(arrays) == sorted(npz.files) and "coords" in arrays
        for name in npz.files:
            np.testing.assert_array_equal(arrays[name], npz[name])
    record = portal.api("GET", f"/api/runs/{first.id}", portal.alice).json()
    assert atlas.run(first.id).summary == record["summary"] and record["summary"]
    listed = atlas.runs(kind="geometry", status="succeeded")
    assert first.id in [r.id for r in listed] and all(r.kind == "geometry" for r in listed)
    assert [r.id for r in atlas.runs(status="failed")] and all(
        r.status == "failed" for r in atlas.runs(status="failed"))


def test_client_figure_is_the_page_figure(portal, first):
    from webapp.views.geometry.page import FIGURES

    run = Atlas(portal.url, portal.alice).run(first.id)
    arrays, summary = run.arrays(), run.summary
    for view in FIGURES:
        figure = run.figure(view.slug)
        assert isinstance(figure, go.Figure) and figure.data
        expected = view.figure(arrays, summary)
        assert json.loads(figure.to_json()) == json.loads(expected.to_json()), view.slug


def test_client_errors_carry_the_api_message(portal, first):
    atlas = Atlas(portal.url, portal.alice)
    with pytest.raises(ApiError) as missing:
        atlas.run("no-such-run-x")
    assert missing.value.status == 404 and "no run with ID 'no-such-run-x'" in str(missing.value)
    with pytest.raises(ApiError) as invalid:
        atlas.submit("geometry", model="tiny-gpt2", prompts=PROMPTS, max_tokens=0)
    assert invalid.value.status == 400 and any("max_tokens" in m for m in invalid.value.messages)
    with pytest.raises(ApiError) as view:
        atlas.run(first.id).figure("no-view")
    assert view.value.status == 400 and "layer-evolution" in str(view.value)
    with pytest.raises(ApiError) as unauthorised:
        Atlas(portal.url, "la_wrong-token").runs()
    assert unauthorised.value.status == 401


def test_cli_submit_and_export_use_the_client(portal, first, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS))
    common = ["--url", portal.url, "--token", portal.alice]
    submitted = portal.cli("submit", *common, "geometry", str(params), "--wait")
    reused_id, note = submitted.stdout.splitlines()[0].split(" ", 1)
    assert note == "(identical to a succeeded run: reused)", submitted.stdout
    assert f"{reused_id} succeeded" in submitted.stdout  # --wait on a finished run returns at once
    # The newest identical run (the forced one above, or the first).
    twin = portal.api("GET", f"/api/runs/{reused_id}", portal.alice).json()
    assert twin["params_hash"] == first.record["params_hash"] and twin["status"] == "succeeded"
    output = tmp_path / "run.npz"
    portal.cli("export", *common, first.id, "--format", "npz", "--output", str(output))
    with np.load(output) as npz:
        np.testing.assert_array_equal(npz["coords"], Atlas(portal.url, portal.alice).run(first.id).arrays()["coords"])
    refused = portal.cli("export", *common, "no-such-run-x", check=False)
    assert refused.returncode != 0 and "no run with ID" in refused.stderr


# -- the lookup rules on a bare database -----------------------------------------------


@pytest.fixture
def database(tmp_path, monkeypatch):
    from latent_atlas.settings import get_settings
    from migrations.runner import upgrade
    from models import User, session_scope
    from models.session import get_engine, get_sessionmaker

    backend = make_backend("sqlite", tmp_path)
    monkeypatch.setenv("ATLAS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATLAS_DATABASE_URL", backend.database_url)
    get_settings.cache_clear()
    upgrade(backend.database_url)
    with session_scope() as session:
        session.add(User(username="alice", password_hash="x", is_admin=False, is_active=True))
    yield
    get_engine(backend.database_url).dispose()
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()
    get_settings.cache_clear()


def test_only_a_succeeded_run_with_all_its_artifacts_is_reused(database):
    from datetime import timedelta

    from models import Run, User, session_scope
    from models.base import utcnow
    from models.run import Artifact
    from models.store import ArtifactStore
    from webapp.reuse import KeyedParams, find_reusable

    key = KeyedParams("a" * 64, True)
    stored = ArtifactStore().write_array(np.arange(4))
    now = utcnow()

    def add(status: str, *, kind: str = "geometry", params_hash: str = key.params_hash, minutes: int = 0,
            uri: str = stored.uri) -> str:
        with session_scope() as session:
            owner = session.scalar(select(User.id))
            run = Run(kind=kind, model="tiny", params={}, params_hash=params_hash, owner_id=owner,
                      status=status, finished_at=now - timedelta(minutes=minutes))
            run.artifacts.append(Artifact(name="x", uri=uri, dtype="int64", shape=[4], nbytes=32,
                                          sha256=stored.sha256))
            session.add(run)
            session.flush()
            return run.id

    def found() -> str | None:
        with session_scope() as session:
            run = find_reusable(session, "geometry", key)
            return None if run is None else run.id

    for status in ("queued", "running", "failed", "cancelled"):
        add(status)
    add("succeeded", kind="grid")
    add("succeeded", params_hash="b" * 64)
    assert found() is None
    older = add("succeeded", minutes=10)
    assert found() == older
    add("succeeded", minutes=1, uri="ff/" + "f" * 64 + ".npy")  # newer, but its file is gone
    assert found() == older
    newer = add("succeeded", minutes=2)
    assert found() == newer
    with session_scope() as session:
        assert find_reusable(session, "geometry", KeyedParams(key.params_hash, False)) is None
