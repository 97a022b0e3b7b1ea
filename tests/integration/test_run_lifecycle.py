"""The whole path on real services: API -> broker -> Celery worker -> database.

Runs once on the embedded default (SQLite database + SQLite broker) and once
on PostgreSQL + Redis. Every run here goes through a real worker process.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import signal
import time
import zipfile

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

# The arrays every geometry run stores (views may add more, e.g. states and the lens).
GEOMETRY_ARRAYS = {
    "coords", "layer", "component", "position", "prompt_index", "token_id", "norm",
    "explained_variance_ratio", "layer_norm_mean",
}
PROMPTS = ["The cat sat on the mat.", "Dogs bark at night", "A short one"]
# A run long enough to be caught while running: many single-prompt batches.
SLOW_PROMPTS = [f"p{i}" for i in range(1500)]  # <= 5 byte-level tokens each


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def portal(request, tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp(f"portal-{request.param}")
    corrupt = data_dir / "corrupt-model"  # its tokenizer loads, its weights do not
    shutil.copytree(tiny_gpt2_dir, corrupt)
    for weights in corrupt.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    models = {
        "tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"},
        "corrupt": {"source": str(corrupt), "description": "weights are garbage"},
        "missing": {"source": str(data_dir / "no-such-model"), "description": "does not exist"},
    }
    extra = {
        "ATLAS_HEARTBEAT_EVERY": "0.5",
        "ATLAS_STALE_AFTER": "4",
        "ATLAS_SWEEP_EVERY": "1",
        "ATLAS_LIMITS__MAX_PROMPTS": "2000",
        "ATLAS_LIMITS__MAX_CONCURRENT_RUNS_PER_USER": "50",
    }
    with started_portal(data_dir, request.param, models, "tiny-gpt2", extra, users=("alice", "bob")) as live:
        yield live


def _params(prompts=PROMPTS, **over):
    return {"model": "tiny-gpt2", "prompts": prompts, "max_tokens": 32, **over}


def _engine(portal: Portal):
    return create_engine(portal.backend.database_url)


def test_submit_to_success_with_verified_artifacts(portal):
    run = portal.submit(portal.alice, _params())
    assert run["status"] == "queued" and len(run["id"]) >= 12
    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 1 and done["progress"] == 1.0
    names = [a["name"] for a in done["artifacts"]]
    assert GEOMETRY_ARRAYS <= set(names) and len(names) == len(set(names))
    for key in ("torch", "transformers", "dtype", "device", "revision"):
        assert key in done["environment"], key
    assert done["timings"]["analysis_s"] > 0

    # Every artifact's bytes on disk hash to the recorded sha256.
    engine = _engine(portal)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, uri, sha256, nbytes FROM artifacts WHERE run_id = :r"),
                            {"r": run["id"]}).all()
    assert sorted(row[0] for row in rows) == sorted(names)
    for name, uri, sha, nbytes in rows:
        data = (portal.data_dir / "artifacts" / uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, name
        assert len(data) == nbytes

    # Export: a zip with the JSON record and the NPZ arrays.
    response = portal.api("GET", f"/api/runs/{run['id']}/export", portal.bob)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == sorted([f"{run['id']}.json", f"{run['id']}.npz"])
    arrays = np.load(io.BytesIO(archive.read(f"{run['id']}.npz")), allow_pickle=False)
    assert set(arrays.files) == set(names)
    n_tokens = sum(done["summary"]["n_tokens"])
    assert arrays["coords"].shape == (n_tokens * done["summary"]["n_layers"] * 4, 3)

    listed = portal.api("GET", "/api/runs?kind=geometry&owner=alice", portal.bob).json()["runs"]
    assert run["id"] in {r["id"] for r in listed}


def _arrays(portal: Portal, run_id: str) -> dict[str, np.ndarray]:
    response = portal.api("GET", f"/api/runs/{run_id}/export?format=npz", portal.alice)
    assert response.status_code == 200, response.text
    return dict(np.load(io.BytesIO(response.content), allow_pickle=False))


def test_points_without_a_lens_are_decoded_on_demand_by_a_child_run(portal):
    """A run with no lens in the worker; a geometry_lens child decodes chosen rows of its stored states."""
    bare = portal.wait_for(portal.submit(portal.alice, _params(lens_max_points=0))["id"], portal.alice,
                           {"succeeded", "failed"})
    assert bare["status"] == "succeeded", bare.get("error")
    assert bare["summary"]["lens"]["computed"] == 0
    n_points = sum(bare["summary"]["n_tokens"]) * bare["summary"]["n_layers"] * 4
    rows = [0, 5, n_points - 1]
    response = portal.api("POST", "/api/runs", portal.alice, json={
        "kind": "geometry_lens", "parent_id": bare["id"],
        "params": {"source_run": bare["id"], "model": "tiny-gpt2", "rows": rows}})
    assert response.status_code == 201, response.text
    child = portal.wait_for(response.json()["id"], portal.alice, {"succeeded", "failed"})
    assert child["status"] == "succeeded", child.get("error")
    assert child["queue"] == "interactive" and child["parent_id"] == bare["id"]  # 3 points: the lane
    decoded = _arrays(portal, child["id"])
    assert decoded["rows"].tolist() == rows and decoded["lens_ids"].shape == (3, 5)

    # The same points decoded by a run that computed its lens in the worker.
    full = portal.wait_for(portal.submit(portal.alice, _params())["id"], portal.alice, {"succeeded", "failed"})
    reference = _arrays(portal, full["id"])
    assert (decoded["lens_ids"][:, 0] == reference["lens_ids"][rows, 0]).mean() >= 2 / 3
    np.testing.assert_allclose(decoded["lens_probs"][:, 0].astype(np.float32),
                               reference["lens_probs"][rows, 0].astype(np.float32), atol=1e-2)

    # Rows beyond the run's points fail the child with a clear error; another model is refused.
    response = portal.api("POST", "/api/runs", portal.alice, json={
        "kind": "geometry_lens", "params": {"source_run": bare["id"], "model": "tiny-gpt2", "rows": [n_points]}})
    failed = portal.wait_for(response.json()["id"], portal.alice, {"succeeded", "failed"})
    assert failed["status"] == "failed" and f"0..{n_points - 1}" in failed["error"]


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"kind": "geometry", "params": {"model": "gpt-7", "prompts": ["hi"]}}, "catalogue"),
        ({"kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": []}}, "prompts"),
        ({"kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": ["  "]}}, "empty"),
        ({"kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": ["x"] * 2001}}, "prompts"),
        ({"kind": "geometry", "params": {"model": "tiny-gpt2", "max_tokens": 4,
                                         "prompts": ["this prompt is much longer than four tokens"]}},
         "limit"),
        ({"kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": ["a"], "dims": 7}}, "dims"),
        ({"kind": "telepathy", "params": {}}, "unknown run kind"),
        ({"kind": "geometry", "params": "not an object"}, "object"),
    ],
)
def test_bad_submissions_are_rejected_and_nothing_is_queued(portal, body, expected):
    with _engine(portal).connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    response = portal.api("POST", "/api/runs", portal.alice, json=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert any(expected in message for message in payload["messages"]), payload
    with _engine(portal).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == before


def test_malformed_json_unknown_run_and_auth(portal):
    bad = portal.api("POST", "/api/runs", portal.alice, data="{not json",
                     headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    missing = portal.api("GET", "/api/runs/doesnotexist", portal.alice)
    assert missing.status_code == 404 and "doesnotexist" in missing.json()["error"]
    assert portal.api("GET", "/api/runs", "la_wrong-token").status_code == 401
    import requests

    assert requests.get(portal.url + "/api/runs", timeout=10).status_code == 401
    page = requests.get(portal.url + "/runs", timeout=10, allow_redirects=False)
    assert page.status_code == 302 and "/login" in page.headers["Location"]


def test_model_that_fails_to_load_fails_and_worker_keeps_serving(portal):
    # A model whose files are missing is refused before anything is queued...
    refused = portal.api("POST", "/api/runs", portal.alice,
                         json={"kind": "geometry", "params": _params(model="missing")})
    assert refused.status_code == 400 and "no-such-model" in refused.json()["messages"][0]
    # ...one whose weights fail to load fails in the worker, with the reason.
    run = portal.submit(portal.alice, _params(model="corrupt"))
    failed = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})
    assert failed["status"] == "failed"
    assert "could not load model" in failed["error"] and "corrupt" in failed["error"]
    assert failed["traceback"]  # the owner sees it
    assert portal.api("GET", f"/api/runs/{run['id']}", portal.bob).json()["traceback"] is None
    ok = portal.submit(portal.alice, _params())
    assert portal.wait_for(ok["id"], portal.alice, {"succeeded", "failed"})["status"] == "succeeded"


def test_cancel_queued_and_running(portal):
    slow = portal.submit(portal.alice, _params(prompts=SLOW_PROMPTS, batch_size=1, max_tokens=8))
    portal.wait_for(slow["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0)
    queued = portal.submit(portal.alice, _params())
    assert portal.api("GET", f"/api/runs/{queued['id']}", portal.alice).json()["queue_position"] >= 1

    refused = portal.api("POST", f"/api/runs/{queued['id']}/cancel", portal.bob)
    assert refused.status_code == 403

    cancelled = portal.api("POST", f"/api/runs/{queued['id']}/cancel", portal.alice).json()
    assert cancelled["status"] == "cancelled"

    portal.api("POST", f"/api/runs/{slow['id']}/cancel", portal.alice)
    stopped = portal.wait_for(slow["id"], portal.alice, {"cancelled", "succeeded", "failed"}, 60)
    assert stopped["status"] == "cancelled"
    assert stopped["artifacts"] == []
    # The worker is free again and the cancelled queued run never ran.
    after = portal.submit(portal.alice, _params())
    assert portal.wait_for(after["id"], portal.alice, {"succeeded", "failed"})["status"] == "succeeded"
    assert portal.api("GET", f"/api/runs/{queued['id']}", portal.alice).json()["attempts"] == 0


def test_worker_killed_mid_run_ends_in_exactly_one_terminal_state(portal):
    run = portal.submit(portal.alice, _params(prompts=SLOW_PROMPTS[:300], batch_size=1, max_tokens=8))
    portal.wait_for(run["id"], portal.alice, {"running"}, predicate=lambda r: r["progress"] > 0.05)
    victim = portal.workers[-1]
    portal.kill(victim, signal.SIGKILL)
    assert victim.poll() is not None
    portal.start_worker()
    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed", "cancelled"}, 240)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2
    with _engine(portal).connect() as conn:
        names = conn.execute(text("SELECT name FROM artifacts WHERE run_id = :r"),
                             {"r": run["id"]}).scalars().all()
    assert GEOMETRY_ARRAYS <= set(names)
    assert len(names) == len(set(names))  # each artifact recorded exactly once
    assert sorted(names) == sorted(a["name"] for a in done["artifacts"])
    time.sleep(3)  # a late duplicate message must not run it again
    again = portal.api("GET", f"/api/runs/{run['id']}", portal.alice).json()
    assert again["status"] == "succeeded" and again["attempts"] == 2




def test_login_is_rate_limited_and_wrong_passwords_are_refused(portal):
    import requests
    from web_app import csrf_from

    statuses = []
    browser = requests.Session()  # the login form carries a CSRF token tied to the session
    token = csrf_from(browser.get(portal.url + "/login", timeout=10).text)
    for _ in range(25):  # the limit is 10/minute per address, shared by every web process
        response = browser.post(portal.url + "/login", timeout=10, allow_redirects=False,
                                data={"username": "alice", "password": "nope", "csrf_token": token})
        statuses.append(response.status_code)
    assert statuses[0] == 401
    assert 429 in statuses
    assert set(statuses) <= {401, 429}
