"""Streaming reducers equal a brute-force computation on a small corpus; merge equals one run."""

from __future__ import annotations

import numpy as np
import pytest

from latent_atlas.analyses.sae.cofire import CoFiring, top_edges
from latent_atlas.analyses.sae.intervals import FINE, Intervals, hash_keys
from latent_atlas.analyses.sae.reducers import (
    HarvestReducers,
    Histogram,
    LatentStats,
    SparseBatch,
    TopK,
    hist_edges,
)

D, T = 12, 400


def corpus(seed: int = 0, ties: bool = False) -> np.ndarray:
    """Dense (T, D) activations: sparse, heavy-tailed, a dead latent, a rare latent, optional ties."""
    rng = np.random.default_rng(seed)
    acts = rng.exponential(1.0, size=(T, D)).astype(np.float32) * (rng.random((T, D)) < 0.3)
    acts[:, 3] = 0.0  # dead
    acts[:, 4] = 0.0
    acts[[7, 150, 390], 4] = [2.0, 9.0, 2.0]  # rare, with a tie
    acts[:, 5] *= 37.0  # a different scale (several rescalings of the interval grid)
    if ties:
        acts = np.round(acts * 2) / 2  # many exactly equal values
    return acts


def batches(acts: np.ndarray, sizes: list[int]) -> list[SparseBatch]:
    out, start = [], 0
    for size in sizes:
        out.append(SparseBatch.from_dense(acts[start:start + size], start))
        start += size
    assert start == acts.shape[0]
    return out


SPLITS = [[T], [1] * 5 + [T - 5], [37] * 10 + [30], [200, 200]]


def brute_topk(acts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    value = np.full((D, k), np.nan, np.float32)
    token = np.full((D, k), -1, np.int64)
    for lat in range(D):
        toks = np.flatnonzero(acts[:, lat])
        order = sorted(toks, key=lambda t: (-acts[t, lat], t))[:k]
        value[lat, :len(order)] = acts[order, lat]
        token[lat, :len(order)] = order
    return value, token


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_topk_equals_brute_force(split: list[int], ties: bool) -> None:
    acts = corpus(1, ties)
    reducer = TopK(D, 7)
    for batch in batches(acts, split):
        reducer.update(batch)
    value, token = brute_topk(acts, 7)
    got = reducer.result()
    np.testing.assert_array_equal(got["top_token"], token)
    np.testing.assert_array_equal(got["top_value"], value)


def test_histogram_and_stats_equal_brute_force() -> None:
    acts = corpus(2)
    hist, stats = Histogram(D, 16), LatentStats(D)
    for batch in batches(acts, [37] * 10 + [30]):
        hist.update(batch)
        stats.update(batch)
    edges = hist_edges(16)
    expected = np.zeros((D, 16), np.int32)
    for lat in range(D):
        vals = acts[:, lat][acts[:, lat] != 0]
        clipped = np.clip(vals, edges[0], np.nextafter(edges[-1], 0))
        expected[lat] = np.histogram(clipped, bins=edges)[0]
    got = hist.result()
    np.testing.assert_array_equal(got["hist_counts"], expected)
    np.testing.assert_array_equal(got["hist_edges"], edges)
    assert got["hist_counts"].sum() == np.count_nonzero(acts)
    s = stats.result()
    fired = acts != 0
    np.testing.assert_array_equal(s["fire_count"], fired.sum(0))
    np.testing.assert_allclose(s["density"], fired.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(s["max_act"], acts.max(0))
    mean = np.where(fired.sum(0) > 0, acts.sum(0, dtype=np.float64) / np.maximum(fired.sum(0), 1), 0)
    np.testing.assert_allclose(s["mean_act"], mean, rtol=1e-5)
    assert s["fire_count"][3] == 0 and s["max_act"][3] == 0 and s["mean_act"][3] == 0


def brute_intervals(acts: np.ndarray, bins: int, per_bin: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The module docstring's definition, computed from all entries at once."""
    cells = FINE * bins
    value = np.full((D, bins * per_bin), np.nan, np.float32)
    token = np.full((D, bins * per_bin), -1, np.int64)
    for lat in range(D):
        toks = np.flatnonzero(acts[:, lat])
        if toks.size == 0:
            continue
        vals = acts[toks, lat]
        top = float(vals.max())
        scale = 2.0 ** np.frexp(top)[1]
        cell = np.minimum(np.floor(vals.astype(np.float64) / scale * cells).astype(int), cells - 1)
        out_bin = np.minimum(np.floor((cell + 0.5) * scale / cells / top * bins).astype(int), bins - 1)
        keys = hash_keys(seed, toks.astype(np.int64), np.full(toks.size, lat, np.int64))
        for b in range(bins):
            members = np.flatnonzero(out_bin == b)
            chosen = members[np.lexsort([toks[members], keys[members]])][:per_bin]
            chosen = chosen[np.lexsort([toks[chosen], -vals[chosen].astype(np.float64)])]
            value[lat, b * per_bin: b * per_bin + chosen.size] = vals[chosen]
            token[lat, b * per_bin: b * per_bin + chosen.size] = toks[chosen]
    return value, token


@pytest.mark.parametrize("split", SPLITS)
def test_intervals_equal_brute_force(split: list[int]) -> None:
    acts = corpus(3)
    reducer = Intervals(D, 5, 3, seed=11)
    for batch in batches(acts, split):
        reducer.update(batch)
    value, token = brute_intervals(acts, 5, 3, 11)
    got = reducer.result()
    np.testing.assert_array_equal(got["interval_token"], token)
    np.testing.assert_array_equal(got["interval_value"], value)
    # every sampled example lies in its bin up to the documented bound (1/FINE of a bin)
    top = acts.max(0)
    for lat in range(D):
        for col in np.flatnonzero(token[lat] >= 0):
            b = col // 3
            width = top[lat] / 5
            assert (b - 1 / FINE) * width <= value[lat, col] <= (b + 1 + 1 / FINE) * width


def test_intervals_sample_every_populated_bin_and_differ_by_seed() -> None:
    acts = corpus(4)
    a, b = Intervals(D, 4, 2, seed=0), Intervals(D, 4, 2, seed=1)
    for batch in batches(acts, [T]):
        a.update(batch)
        b.update(batch)
    assert not np.array_equal(a.result()["interval_token"], b.result()["interval_token"])
    tok = a.result()["interval_token"]
    assert (tok[0, 0::2] >= 0).all()  # latent 0 fires ~120 times: every bin has a sample


def brute_cofire(acts: np.ndarray, k: int) -> dict[str, np.ndarray]:
    fired = (acts != 0).astype(np.float64)
    count = fired.T @ fired
    n = np.diag(count)
    with np.errstate(divide="ignore", invalid="ignore"):
        jac = np.where(count > 0, count / (n[:, None] + n[None, :] - count), 0.0)
        prod = acts.astype(np.float64).T @ acts.astype(np.float64)
        coact = np.where(prod > 0, prod / np.sqrt(np.outer(np.diag(prod), np.diag(prod))), 0.0)
    out = {}
    for name, score in (("jaccard", jac), ("coact", coact)):
        idx = np.full((D, k), -1, np.int32)
        val = np.full((D, k), np.nan, np.float32)
        for i in range(D):
            cands = [j for j in range(D) if j != i and score[i, j] > 0]
            cands = sorted(cands, key=lambda j: (-score[i, j], j))[:k]
            idx[i, :len(cands)] = cands
            val[i, :len(cands)] = score[i, cands]
        out[f"edge_{name}_idx"], out[f"edge_{name}_val"] = idx, val
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_cofire_edges_equal_brute_force(split: list[int], ties: bool) -> None:
    acts = corpus(5, ties)
    reducer = CoFiring(D)
    for batch in batches(acts, split):
        reducer.update(batch)
    expected = brute_cofire(acts, 4)
    got = reducer.edges(4, block=5)
    fired = (acts != 0).astype(np.int64)
    count, product = reducer.symmetric()
    np.testing.assert_array_equal(count, fired.T @ fired)
    np.testing.assert_allclose(product, acts.astype(np.float64).T @ acts.astype(np.float64), rtol=1e-5)
    for name in ("edge_jaccard", "edge_coact"):
        np.testing.assert_array_equal(got[f"{name}_idx"], expected[f"{name}_idx"], err_msg=name)
        np.testing.assert_allclose(got[f"{name}_val"], expected[f"{name}_val"], rtol=1e-5, err_msg=name)
    assert (got["edge_jaccard_idx"][3] == -1).all()  # a dead latent has no edges


def test_top_edges_breaks_ties_by_index() -> None:
    score = np.array([[0.0, 0.5, 0.5, 0.5, 0.2, 0.5]])
    idx, val = top_edges(score, 3, np.array([0]))
    assert idx.tolist() == [[1, 2, 3]]
    idx, val = top_edges(score, 8, np.array([0]))
    assert idx.tolist() == [[1, 2, 3, 5, 4, -1, -1, -1]]
    assert np.isnan(val[0, 5:]).all()


def make_bundle() -> HarvestReducers:
    return HarvestReducers(D, top_k=5, interval_bins=4, interval_per_bin=2, hist_bins=8, seed=3)


@pytest.mark.parametrize("cut", [1, 123, 200, 399])
def test_merge_equals_one_run(cut: int) -> None:
    acts = corpus(6)
    whole = make_bundle()
    for batch in batches(acts, [50] * 8):
        whole.update(batch)
    left, right = make_bundle(), make_bundle()
    for batch in batches(acts[:cut], [cut]):
        left.update(batch)
    right.update(SparseBatch.from_dense(acts[cut:], cut))
    expected = whole.result(edges_k=3)
    for merged in (left.merge(right), right.merge(left)):
        got = merged.result(edges_k=3)
        assert got.keys() == expected.keys()
        for name, array in expected.items():
            if array.dtype.kind == "f":
                np.testing.assert_allclose(got[name], array, rtol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_merge_is_associative() -> None:
    acts = corpus(7)
    parts = [make_bundle() for _ in range(3)]
    for part, (lo, hi) in zip(parts, [(0, 90), (90, 250), (250, T)], strict=True):
        part.update(SparseBatch.from_dense(acts[lo:hi], lo))
    one = parts[0].merge(parts[1]).merge(parts[2]).result(3)
    two = parts[0].merge(parts[1].merge(parts[2])).result(3)
    for name in one:  # integer and selection arrays exactly; float sums up to float32 rounding
        if one[name].dtype.kind == "f":
            np.testing.assert_allclose(one[name], two[name], rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_state_size_does_not_grow_with_tokens() -> None:
    def state_bytes(n_batches: int) -> int:
        bundle = make_bundle()
        rng = np.random.default_rng(0)
        for i in range(n_batches):
            acts = rng.exponential(1.0, (100, D)).astype(np.float32) * (rng.random((100, D)) < 0.3)
            bundle.update(SparseBatch.from_dense(acts, i * 100))
        total = 0
        for part in (bundle.stats, bundle.topk, bundle.hist, bundle.intervals, bundle.cofire):
            total += sum(v.nbytes for v in vars(part).values() if isinstance(v, np.ndarray))
        return total

    assert state_bytes(2) == state_bytes(40)
