"""Sharded runs on two real workers (issue #14), on SQLite (database + broker) and on PostgreSQL + Redis.

* A 512 x 512 grid (262,144 cells, 32 resume pieces) submitted while both
  workers are idle is split into 2 shards, one per worker, sent as a chord;
  the merged run equals the same grid computed whole (``run_grid`` in this
  process with a checkpoint, as a worker runs an unsharded grid) bit for bit.
* Killing the pool child of one shard mid-way retries that shard alone (its
  attempts go to 2, the other shard's stay 1) and the merged result is unchanged.
* Cancelling a sharded run stops every shard.
* An SAE harvest (400,000 tokens: two shards of the kind's own minimum,
  200,000, which the settings may only raise) and a geometry capture (128
  prompts: two shards of 64) run as 2 shards, one per worker, and their
  exported arrays equal the run computed whole in this process (``get_kind(k).run``),
  exactly but for the float sums whose order differs (tolerances below).
The stale timeout (600 s) is far longer than any wait, so a retry within the
test can only come from the worker's report of its dead child.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import signal

import numpy as np
import pytest
from sae_fake import save_random_sae

from harness import Portal, make_backend

pytestmark = pytest.mark.integration

GRID = {"model": "tiny-gpt2", "layer": 1, "size": 512, "spacing": 0.02, "plane": "random_projection",
        "seed": 3, "top_k": 3}
DONE = {"succeeded", "failed", "cancelled"}
SAE_DIR = "scale-sae"  # under the portal's {data_dir}/saes
SAE_TOKENS = 400_000  # two shards of the sae kind's own minimum (200,000 tokens)
SAE_CONTEXT = 128


def _sae_params() -> dict:
    """A harvest of a random SAE over 3,125 seeded random byte sequences (an inline ``tokens`` corpus)."""
    rng = np.random.default_rng(14)
    rows = rng.integers(0, 256, (SAE_TOKENS // SAE_CONTEXT, SAE_CONTEXT)).tolist()
    info = {"source": "seeded random bytes", "format": "txt", "documents": len(rows), "sequences": len(rows),
            "tokens_per_sequence": SAE_CONTEXT, "seed": 14}
    return {"model": "tiny-gpt2", "sae": {"kind": "disk", "path": SAE_DIR},
            "corpus": {"kind": "tokens", "token_ids": rows, "info": info},
            "n_tokens": SAE_TOKENS, "context_len": SAE_CONTEXT, "top_k": 8, "window": 3, "edges_k": 4,
            "umap_neighbors": 4}


WORDS = ("red", "fox", "runs", "over", "the", "hill", "at", "dawn", "blue", "sea", "and", "a", "cat")
# 128 prompts in batches of 8: two shards of the geometry kind's own minimum (64 prompts)
GEOMETRY = {"model": "tiny-gpt2", "batch_size": 8, "max_tokens": 32,
            "prompts": [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 6)) + f" {i}"
                        for i in range(128)]}


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """One random sae-lens SAE on disk; each portal gets a copy under its ``saes`` directory."""
    directory = tmp_path_factory.mktemp("scale-sae") / SAE_DIR
    save_random_sae(directory)
    return directory


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def portal(request, tmp_path_factory, tiny_gpt2_dir, sae_dir):
    data_dir = tmp_path_factory.mktemp(f"scale-{request.param}")
    shutil.copytree(sae_dir, data_dir / "saes" / SAE_DIR)
    backend = make_backend(request.param, data_dir)
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    extra = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": "600", "ATLAS_SWEEP_EVERY": "1"}
    live = Portal(data_dir, backend, models, "tiny-gpt2", extra)
    try:
        # One after the other: two workers declaring the SQL broker's queues at once race on its table.
        live.start(workers=1)
        _wait_live_slots(live, 1)
        live.start_worker()
        _wait_live_slots(live, 2)
        live.alice = live.create_user("alice")
        yield live
    finally:
        live.stop()
        backend.cleanup()


@pytest.fixture(scope="module")
def reference(tiny_gpt2, tmp_path_factory):
    """The same grid computed whole, piece by piece with a checkpoint (as a worker runs it unsharded)."""
    from latent_atlas.analyses import get_kind

    kind = get_kind("grid")

    class Memory:
        def __init__(self):
            self.pieces = {}

        def load(self, key):
            return self.pieces.get(key)

        def save(self, key, arrays):
            self.pieces[key] = dict(arrays)

    result = kind.run(kind.params.model_validate(GRID), tiny_gpt2, lambda f, s: None, checkpoint=Memory())
    return result


@pytest.fixture(scope="module")
def sae_reference(tiny_gpt2, sae_dir):
    """The harvest computed whole in this process, as a worker runs an unsharded ``sae`` run."""
    from sae_lens import SAE

    from latent_atlas.analyses import get_kind

    kind = get_kind("sae")
    return kind.run(kind.params.model_validate(_sae_params()), tiny_gpt2, lambda f, s: None,
                    sae_loader=lambda source, device: SAE.load_from_disk(str(sae_dir), device=str(device)))


@pytest.fixture(scope="module")
def geometry_reference(tiny_gpt2):
    """The geometry capture computed whole in this process, as a worker runs an unsharded run."""
    from latent_atlas.analyses import get_kind

    kind = get_kind("geometry")
    return kind.run(kind.params.model_validate(GEOMETRY), tiny_gpt2, lambda f, s: None)


def _arrays(portal: Portal, run_id: str) -> dict[str, np.ndarray]:
    response = portal.api("GET", f"/api/runs/{run_id}/export?format=npz", portal.alice)
    assert response.status_code == 200, response.text
    return dict(np.load(io.BytesIO(response.content), allow_pickle=False))


def _wait_live_slots(portal: Portal, slots: int) -> None:
    import time

    from sqlalchemy import create_engine, text

    engine = create_engine(portal.backend.database_url)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                n = conn.execute(text("SELECT COUNT(*) FROM worker_slots")).scalar()
            if n >= slots:
                return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(portal.logs())


def _check_equal(portal, run_id, reference):
    got = _arrays(portal, run_id)
    assert set(reference.arrays) <= set(got), (sorted(reference.arrays), sorted(got))
    for name, array in reference.arrays.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_a_sharded_grid_equals_the_whole_grid_bit_for_bit(portal, reference):
    run = portal.submit(portal.alice, GRID, kind="grid")
    done = portal.wait_for(run["id"], portal.alice, DONE, 300)
    assert done["status"] == "succeeded", done.get("error")
    shards = done["shards"]
    assert [s["index"] for s in shards] == [0, 1] and all(s["status"] == "succeeded" for s in shards), shards
    assert len({s["worker"] for s in shards}) == 2, shards  # one shard per worker
    assert sum(s["units"] for s in shards) == 512 * 512
    assert done["environment"]["shards"] == 2
    assert not (portal.data_dir / "artifacts" / "shards" / run["id"]).exists()  # parts removed once merged
    _check_equal(portal, run["id"], reference)


def test_a_killed_shard_is_retried_alone_and_the_result_is_unchanged(portal, reference):
    run = portal.submit(portal.alice, GRID, kind="grid")
    running = portal.wait_for(run["id"], portal.alice, {"running"}, 240,
                              predicate=lambda r: any(s["status"] == "running" and s["progress"] > 0.2
                                                      for s in r.get("shards", [])))
    victim = next(s for s in running["shards"] if s["status"] == "running" and s["progress"] > 0.2)
    from sqlalchemy import create_engine, text

    engine = create_engine(portal.backend.database_url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pid FROM run_shards WHERE run_id = :r AND idx = :i"),
                           {"r": run["id"], "i": victim["index"]}).scalar()
    engine.dispose()
    assert pid
    os.kill(pid, signal.SIGKILL)
    done = portal.wait_for(run["id"], portal.alice, DONE, 300)
    assert done["status"] == "succeeded", done.get("error")
    attempts = {s["index"]: s["attempts"] for s in done["shards"]}
    assert attempts[victim["index"]] == 2, done["shards"]
    assert attempts[1 - victim["index"]] == 1, done["shards"]  # the other shard was not run again
    _check_equal(portal, run["id"], reference)


# The float sums whose order differs between one pass and two shards merged (``sae/shard.py``):
# ``mean_act`` is a float64 sum over tokens / count stored as float32: at most one float32 ulp apart.
# ``edge_coact_val`` is a cosine of ``cofire.product``, float32 sums of activation products: the whole
# run adds all 400,000 tokens' products in one float32 accumulator, each shard 200,000, then the two
# are added. Rounding errors of such a sum grow like a random walk, about sqrt(n) * 2**-24 relative
# (3.8e-5 here; the worst case ``cofire.py`` states, n * 2**-24, is 2.4e-2); measured 3.1e-5 (this
# random SAE has latents firing on 99 % of tokens). So 4 * sqrt(n) * 2**-24. The edges whose values
# differ by less than that may trade places (``_check_edges``). Every other array is exact.
COACT_RTOL = 4 * math.sqrt(SAE_TOKENS) * 2**-24
SAE_SUMS = {"mean_act": 1e-6, "edge_coact_val": COACT_RTOL}
# Geometry (``geometry/shard.py``): the stored states, norms, metadata and lens are exact; PCA (coords,
# explained variance) agrees to 1e-5 of the coordinates' scale, because the whole run on a CPU forms
# X^T X in float32 chunks while the shards add float64 covariance sums.
GEOMETRY_EXACT = ("states", "norm", "layer", "component", "position", "prompt_index", "token_id", "lens_ids",
                  "lens_probs", "layer_norm_mean")
GEOMETRY_APPROX_SUMMARY = ("hook_check_max_abs_error",)  # the largest of each shard's first-batch check


def _sharded_run(portal: Portal, run_id: str, units: int, timeout: float) -> dict:
    """The finished run, checked to have run as 2 shards (one per worker) covering ``units`` work units."""
    done = portal.wait_for(run_id, portal.alice, DONE, timeout)
    assert done["status"] == "succeeded", (done.get("error"), portal.logs())
    shards = done["shards"]
    assert [s["index"] for s in shards] == [0, 1] and all(s["status"] == "succeeded" for s in shards), shards
    assert len({s["worker"] for s in shards}) == 2, shards  # one shard per worker
    assert sum(s["units"] for s in shards) == units, shards
    assert done["environment"]["shards"] == 2
    assert not (portal.data_dir / "artifacts" / "shards" / run_id).exists()  # parts removed once merged
    return done


def _coact_float64(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The co-activation cosines (``cofire.py``'s definition) from a run's CSC, summed in float64."""
    ptr, token, value = arrays["lat_ptr"], arrays["lat_token"], arrays["lat_value"]
    d, n = ptr.size - 1, arrays["token_id"].size
    product = np.zeros((d, d))
    latent = np.repeat(np.arange(d), np.diff(ptr))
    for begin in range(0, n, 50_000):  # dense rows in chunks: X^T X accumulated in float64
        inside = (token >= begin) & (token < begin + 50_000)
        dense = np.zeros((min(50_000, n - begin), d))
        dense[token[inside] - begin, latent[inside]] = value[inside]
        product += dense.T @ dense
    norm = np.sqrt(np.diag(product))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(product > 0, product / np.outer(norm, norm), 0.0)


def _check_edges(got_idx: np.ndarray, got_val: np.ndarray, want_idx: np.ndarray, want_val: np.ndarray,
                 coact: np.ndarray, rtol: float) -> None:
    """Top-E edges equal up to near-ties: rank by rank the values agree to ``rtol``; where the latents
    differ, the pair the sharded run put at rank p has an exact (float64) cosine within ``2 rtol`` of the
    whole run's rank-p value, so only latents tied within the float32 rounding traded places."""
    np.testing.assert_allclose(got_val, want_val, rtol=rtol, err_msg="edge values")
    assert np.array_equal(got_idx == -1, want_idx == -1), "edge padding"
    for row, rank in np.argwhere(got_idx != want_idx):
        exact = coact[row, got_idx[row, rank]]
        assert math.isclose(exact, want_val[row, rank], rel_tol=2 * rtol), \
            (int(row), int(rank), got_idx[row].tolist(), want_idx[row].tolist(), want_val[row].tolist())


def _close_summary(got, want, path: str, rel: float) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            _close_summary(got[key], want[key], f"{path}.{key}", rel)
    elif isinstance(want, list | tuple):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close_summary(a, b, f"{path}[{i}]", rel)
    elif isinstance(want, float) and isinstance(got, float):
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=rel, abs_tol=1e-9), \
            (path, got, want)
    else:
        assert got == want, (path, got, want)


def test_a_sharded_sae_harvest_equals_the_whole_harvest(portal, sae_reference):
    run = portal.submit(portal.alice, _sae_params(), kind="sae")
    done = _sharded_run(portal, run["id"], SAE_TOKENS, 900)
    got = _arrays(portal, run["id"])
    assert set(sae_reference.arrays) <= set(got), (sorted(sae_reference.arrays), sorted(got))
    assert {"top_value", "interval_value", "hist_counts", "fire_count", "edge_jaccard_idx", "lat_ptr",
            "lat_token", "lat_value"} <= set(sae_reference.arrays)  # the reducers and the CSC are compared
    for name, want in sae_reference.arrays.items():
        want = np.asarray(want)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        if name == "edge_coact_idx":
            _check_edges(got[name], got["edge_coact_val"], want, sae_reference.arrays["edge_coact_val"],
                         _coact_float64(got), COACT_RTOL)
        elif name in SAE_SUMS:
            np.testing.assert_allclose(got[name], want, rtol=SAE_SUMS[name], err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert int(sae_reference.summary["n_tokens"]) > 0
    for key in set(sae_reference.summary) - {"timings"}:
        _close_summary(done["summary"][key], sae_reference.summary[key], key, 1e-6)


def test_a_sharded_geometry_run_equals_the_whole_run(portal, geometry_reference):
    run = portal.submit(portal.alice, GEOMETRY, kind="geometry")
    done = _sharded_run(portal, run["id"], len(GEOMETRY["prompts"]), 600)
    got = _arrays(portal, run["id"])
    assert set(geometry_reference.arrays) <= set(got), (sorted(geometry_reference.arrays), sorted(got))
    assert "states" in geometry_reference.arrays and "coords" in geometry_reference.arrays
    for name, want in geometry_reference.arrays.items():
        want = np.asarray(want)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        if name in GEOMETRY_EXACT:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        else:
            scale = max(1.0, float(np.nanmax(np.abs(want.astype(np.float64))))) if want.size else 1.0
            np.testing.assert_allclose(got[name].astype(np.float64), want.astype(np.float64), rtol=0,
                                       atol=1e-5 * scale, err_msg=name)
    for key in set(geometry_reference.summary) - set(GEOMETRY_APPROX_SUMMARY) - {"timings"}:
        _close_summary(done["summary"][key], geometry_reference.summary[key], key, 1e-4)


def test_cancel_stops_every_shard(portal):
    run = portal.submit(portal.alice, GRID, kind="grid")
    portal.wait_for(run["id"], portal.alice, {"running"}, 240,
                    predicate=lambda r: len(r.get("shards", [])) == 2
                    and any(s["status"] == "running" for s in r["shards"]))
    response = portal.api("POST", f"/api/runs/{run['id']}/cancel", portal.alice)
    assert response.status_code == 200, response.text
    done = portal.wait_for(run["id"], portal.alice, DONE, 120)
    assert done["status"] == "cancelled"
    assert all(s["status"] == "cancelled" for s in done["shards"]), done["shards"]
