"""The torch (device-side) reducers equal the numpy reference and brute force, on CPU torch.

Same small corpus and splits as test_reducers.py; the device reducers see dense batches
(as the harvest hands them ``sae.encode``'s output) with global token indices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.sae.cofire import CoFiring
from latent_atlas.analyses.sae.device_reducers import (
    DeviceCoFiring,
    DeviceHistogram,
    DeviceStats,
    DeviceTopK,
    decode_keys,
    encode_keys,
)
from latent_atlas.analyses.sae.reducers import (
    HarvestReducers,
    Histogram,
    LatentStats,
    SparseBatch,
    TopK,
)
from tests.unit.sae.test_reducers import SPLITS, D, T, batches, brute_cofire, brute_topk, corpus


def dense_batches(acts: np.ndarray, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, start = [], 0
    for size in sizes:
        out.append((torch.from_numpy(acts[start:start + size].copy()),
                    torch.arange(start, start + size, dtype=torch.int64)))
        start += size
    return out


def test_keys_order_as_value_then_smaller_token() -> None:
    values = torch.tensor([-3.5, -0.25, 1e-30, 0.5, 0.5, 2.0, 7e30, float("inf")], dtype=torch.float32)
    tokens = torch.tensor([9, 4, 0, 11, 3, 2**32 - 2, 5, 1], dtype=torch.int64)
    keys = encode_keys(values, tokens)
    order = torch.argsort(keys, descending=True).tolist()
    expected = sorted(range(len(values)), key=lambda i: (-float(values[i]), int(tokens[i])))
    assert order == expected
    value, token = decode_keys(keys)
    assert torch.equal(value, values) and torch.equal(token, tokens)
    value, token = decode_keys(torch.full((2,), torch.iinfo(torch.int64).min))
    assert torch.isinf(value).all() and (value < 0).all() and (token == -1).all()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_device_topk_equals_numpy_and_brute_force(split: list[int], ties: bool) -> None:
    acts = corpus(1, ties)
    device, reference = DeviceTopK(D, 7), TopK(D, 7)
    for (feats, token), batch in zip(dense_batches(acts, split), batches(acts, split), strict=True):
        device.update(feats, token)
        reference.update(batch)
    got = device.to_numpy().result()
    want = reference.result()
    np.testing.assert_array_equal(got["top_token"], want["top_token"])
    np.testing.assert_array_equal(got["top_value"], want["top_value"])
    value, token = brute_topk(acts, 7)
    np.testing.assert_array_equal(got["top_token"], token)
    np.testing.assert_array_equal(got["top_value"], value)


def test_device_topk_takes_entries_in_any_order() -> None:
    acts = corpus(8, ties=True)
    rows, cols = np.nonzero(acts)
    perm = np.random.default_rng(0).permutation(rows.size)
    device = DeviceTopK(D, 5)
    for part in np.array_split(perm, 7):  # batches of shuffled entries, tokens interleaved across batches
        device.update_sparse(torch.from_numpy(cols[part].astype(np.int64)), torch.from_numpy(rows[part].astype(np.int64)),
                             torch.from_numpy(acts[rows[part], cols[part]]))
    value, token = brute_topk(acts, 5)
    got = device.to_numpy().result()
    np.testing.assert_array_equal(got["top_token"], token)
    np.testing.assert_array_equal(got["top_value"], value)


@pytest.mark.parametrize("split", SPLITS)
def test_device_histogram_and_stats_equal_numpy(split: list[int]) -> None:
    acts = corpus(2)
    acts[5, 6] = 1e-7  # below the first edge
    acts[6, 6] = 3e4  # above the last
    hist, stats = DeviceHistogram(D, 16), DeviceStats(D)
    ref_hist, ref_stats = Histogram(D, 16), LatentStats(D)
    for (feats, _), batch in zip(dense_batches(acts, split), batches(acts, split), strict=True):
        where = torch.nonzero(feats)
        value = feats[where[:, 0], where[:, 1]]
        hist.update_sparse(where[:, 1], value)
        stats.update_sparse(where[:, 1], value, feats.shape[0])
        ref_hist.update(batch)
        ref_stats.update(batch)
    np.testing.assert_array_equal(hist.to_numpy().result()["hist_counts"], ref_hist.result()["hist_counts"])
    got, want = stats.to_numpy().result(), ref_stats.result()
    for name in ("fire_count", "max_act"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("density", "mean_act"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["matmul", "pairs", "auto"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_device_cofire_equals_numpy_and_brute_force(split: list[int], ties: bool, method: str) -> None:
    acts = corpus(5, ties)
    # block 5: several column blocks; pair_chunk 100: several row chunks of pairs
    device, reference = DeviceCoFiring(D, block=5, method=method, pair_chunk=100), CoFiring(D)
    for (feats, _), batch in zip(dense_batches(acts, split), batches(acts, split), strict=True):
        device.update(feats)
        reference.update(batch)
    got = device.to_numpy()
    np.testing.assert_array_equal(got.count, reference.count)
    np.testing.assert_allclose(got.product, reference.product, rtol=1e-5)
    fired = (acts != 0).astype(np.int64)
    np.testing.assert_array_equal(got.symmetric()[0], fired.T @ fired)
    edges, expected = got.edges(4), brute_cofire(acts, 4)
    for name in ("edge_jaccard", "edge_coact"):
        np.testing.assert_array_equal(edges[f"{name}_idx"], expected[f"{name}_idx"], err_msg=name)
        np.testing.assert_allclose(edges[f"{name}_val"], expected[f"{name}_val"], rtol=1e-5, err_msg=name)


def test_device_cofire_pairs_on_a_wide_sparse_batch_equal_numpy() -> None:
    d, n = 300, 64  # few firings per token among many latents: "auto" takes the pairs
    rng = np.random.default_rng(4)
    acts = (rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.03)).astype(np.float32)
    acts[5] = 0.0  # a token with no firing
    auto, pairs, reference = DeviceCoFiring(d), DeviceCoFiring(d, method="pairs"), CoFiring(d)
    fired = (acts != 0).astype(np.int64)
    assert DeviceCoFiring.PAIR_COST * (fired.sum(1) * (fired.sum(1) + 1) // 2).sum() < n * fired.any(0).sum() ** 2
    for start in range(0, n, 16):
        part = acts[start:start + 16]
        auto.update(torch.from_numpy(part.copy()))
        pairs.update(torch.from_numpy(part.copy()))
        reference.update(SparseBatch.from_dense(part, start))
    for got in (auto.to_numpy(), pairs.to_numpy()):
        np.testing.assert_array_equal(got.count, reference.count)
        np.testing.assert_allclose(got.product, reference.product, rtol=1e-5)
    with pytest.raises(ValueError, match="method"):
        DeviceCoFiring(d, method="dense")


def bundle(device: str | None, cofire: bool = True) -> HarvestReducers:
    return HarvestReducers(D, top_k=5, interval_bins=4, interval_per_bin=2, hist_bins=8, seed=3,
                           cofire=cofire, device=device)


def feed(reducers: HarvestReducers, acts: np.ndarray, start: int, sizes: list[int]) -> None:
    for size in sizes:
        part = acts[start:start + size]
        if reducers.on_device is not None:
            reducers.update_dense(torch.from_numpy(part.copy()), torch.arange(start, start + size))
        reducers.update(SparseBatch.from_dense(part, start))
        start += size


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, array in want.items():
        if array.dtype.kind == "f":
            np.testing.assert_allclose(got[name], array, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_bundle_on_device_equals_numpy_bundle() -> None:
    acts = corpus(6)
    reference = bundle(None)
    feed(reference, acts, 0, [50] * 8)
    want = reference.result(edges_k=3)
    on_cpu = bundle("cpu")
    assert on_cpu.on_device is not None and on_cpu.on_device.cofire is None  # numba co-firing on a CPU
    feed(on_cpu, acts, 0, [50] * 8)
    assert_same(on_cpu.result(edges_k=3), want)
    # the device co-firing path inside the bundle (what a GPU runs), here on CPU torch
    from latent_atlas.analyses.sae.device_reducers import DeviceReducerSet

    forced = bundle(None)
    forced.on_device = DeviceReducerSet(D, top_k=5, hist_bins=8, cofire=True, device="cpu")
    forced.cofire = None
    feed(forced, acts, 0, [50] * 8)
    assert_same(forced.result(edges_k=3), want)


@pytest.mark.parametrize("cut", [1, 200, 399])
def test_device_bundles_merge_as_one_run(cut: int) -> None:
    acts = corpus(7)
    whole = bundle(None)
    feed(whole, acts, 0, [T])
    left, right = bundle("cpu"), bundle("cpu")
    feed(left, acts, 0, [cut])
    feed(right, acts, cut, [T - cut])
    want = whole.result(edges_k=3)
    assert_same(left.merge(right).result(edges_k=3), want)
    mixed_left, mixed_right = bundle("cpu"), bundle(None)  # a device shard merges with a host shard
    feed(mixed_left, acts, 0, [cut])
    feed(mixed_right, acts, cut, [T - cut])
    assert_same(mixed_right.merge(mixed_left).result(edges_k=3), want)


def test_update_dense_needs_a_device_set() -> None:
    with pytest.raises(ValueError, match="device"):
        bundle(None).update_dense(torch.zeros(2, D), torch.arange(2))
    with pytest.raises(ValueError, match="expected feats"):
        DeviceTopK(D, 3).update(torch.zeros(2, D + 1), torch.arange(2))
    from latent_atlas.analyses.sae.device_reducers import DeviceReducerSet

    with pytest.raises(ValueError, match="2\\*\\*32"):
        DeviceReducerSet(D, top_k=3, hist_bins=4, cofire=False).update(torch.ones(1, D),
                                                                         torch.tensor([2**32]))
