"""``DeviceIntervals`` (torch) keeps exactly the numpy ``Intervals`` state, on CPU torch.

Same small corpus and splits as test_reducers.py (a latent at 37x the scale, so the fine
grid rescales, a rare latent, optional value ties), plus empty batches, batches whose
values keep doubling, and shuffled entries; keys equal numpy's ``hash_keys`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.sae.device_intervals import (
    DeviceIntervals,
    _select_per_group,
    _shr,
    hash_keys_torch,
    supports_device_intervals,
)
from latent_atlas.analyses.sae.intervals import Intervals, hash_keys
from latent_atlas.analyses.sae.reducers import HarvestReducers, SparseBatch, select_per_group
from tests.unit.sae.test_reducers import SPLITS, D, T, brute_intervals, corpus

STATE = ("exponent", "max", "key", "token", "value")


def assert_state_equal(got: Intervals, want: Intervals) -> None:
    for name in STATE:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def feed_both(acts: np.ndarray, sizes: list[int], bins: int = 5, per_bin: int = 3,
              seed: int = 11) -> tuple[DeviceIntervals, Intervals]:
    device, host = DeviceIntervals(D, bins, per_bin, seed), Intervals(D, bins, per_bin, seed)
    start = 0
    for size in sizes:
        part = acts[start:start + size]
        device.update(torch.from_numpy(part.copy()), torch.arange(start, start + size))
        host.update(SparseBatch.from_dense(part, start))
        assert_state_equal(device.to_numpy(), host)  # after every batch, not only at the end
        start += size
    return device, host


EDGE_TOKENS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1]
EDGE_LATENTS = [0, 1, 2**31 - 1, 65535, 2**63 - 1, 7, 2**40, 3, 0]


@pytest.mark.parametrize("seed", [0, 1, 11, 2**32 + 5, 2**63 - 1, 2**63, 2**64 - 1])
def test_hash_keys_equal_numpy_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed % 1000)
    token = np.r_[EDGE_TOKENS, rng.integers(0, 2**63 - 1, 5000, dtype=np.int64)].astype(np.int64)
    latent = np.r_[EDGE_LATENTS, rng.integers(0, 2**20, 5000)].astype(np.int64)
    want = hash_keys(seed, token, latent)
    got = hash_keys_torch(seed, torch.from_numpy(token), torch.from_numpy(latent)).numpy().view(np.uint64)
    np.testing.assert_array_equal(got, want)
    assert got.max() > 2**63  # keys use the whole uint64 range: the sign-bit cases are covered


def test_logical_shift_equals_uint64_shift() -> None:
    bits = np.r_[np.array([0, 1, -1, -(2**63), 2**63 - 1], np.int64),
                 np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64)]
    for s in (1, 27, 30, 31, 63):
        got = _shr(torch.from_numpy(bits), s).numpy().view(np.uint64)
        np.testing.assert_array_equal(got, bits.view(np.uint64) >> np.uint64(s))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_state_equals_numpy_and_result_equals_brute_force(split: list[int], ties: bool) -> None:
    acts = corpus(3, ties)
    device, host = feed_both(acts, split)
    got = device.to_numpy().result()
    assert got.keys() == host.result().keys()
    value, token = brute_intervals(acts, 5, 3, 11)
    np.testing.assert_array_equal(got["interval_token"], token)
    np.testing.assert_array_equal(got["interval_value"], value)


def test_empty_batches_and_growing_scales() -> None:
    acts = corpus(9)
    # each block of rows 2x to 16x larger than the last: every latent's scale doubles again and again
    growth = np.repeat(2.0 ** np.arange(0, 4 * 8, 4), T // 8)[:, None].astype(np.float32)
    acts = acts * growth
    acts[:40] = 0.0  # batches with no non-zero at all
    device, host = feed_both(acts, [0, 20, 0, 20, 60, 0, 100, 1, 199], bins=4, per_bin=2, seed=0)
    assert (host.exponent[host.exponent > np.iinfo(np.int32).min] > 25).any()
    assert_state_equal(device.to_numpy(), host)


def test_extreme_magnitudes_subnormal_to_float32_max() -> None:
    rng = np.random.default_rng(3)
    acts = np.zeros((60, D), np.float32)
    magnitudes = np.array([1e-45, 3e-44, 1.2e-38, 1e-30, 1.0, 7e20, 1e38, 3.4e38], np.float32)
    fire = rng.random((60, D)) < 0.4
    acts[fire] = rng.choice(magnitudes, fire.sum()) * rng.uniform(0.5, 1.0, fire.sum()).astype(np.float32)
    acts[:30, :6] = np.float32(1e-45)  # latents whose whole history (first) is subnormal
    _, early = feed_both(acts[:30], [10, 20], bins=3, per_bin=2)
    assert (early.exponent[:6] == -148).all()  # the scale of a subnormal max
    device, host = feed_both(acts, [10, 20, 30], bins=3, per_bin=2)  # checks the state after every batch
    assert host.exponent.max() == 128  # and of a max near float32's largest


def test_entries_in_any_order_and_negative_values() -> None:
    acts = corpus(10) * np.where(np.random.default_rng(1).random((T, D)) < 0.3, -1, 1).astype(np.float32)
    rows, cols = np.nonzero(acts)
    perm = np.random.default_rng(0).permutation(rows.size)
    device, host = DeviceIntervals(D, 3, 2, seed=5), Intervals(D, 3, 2, seed=5)
    for part in np.array_split(perm, 9):  # tokens interleave across batches
        token, latent, value = rows[part].astype(np.int64), cols[part].astype(np.int64), acts[rows[part], cols[part]]
        device.update_sparse(torch.from_numpy(latent), torch.from_numpy(token), torch.from_numpy(value))
        host.update(SparseBatch(token, latent, value, 0, T))
    assert_state_equal(device.to_numpy(), host)


def test_select_per_group_breaks_key_ties_by_token_like_numpy() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(1, 300))
        group = rng.integers(0, 6, n).astype(np.int64)
        key = rng.integers(-3, 3, n).astype(np.int64)  # many equal keys in a group
        token = rng.permutation(n).astype(np.int64)
        want_index, want_rank = select_per_group(group, [key, token], 4)
        index, rank = _select_per_group(torch.from_numpy(group), torch.from_numpy(key), torch.from_numpy(token), 4)
        np.testing.assert_array_equal(index.numpy(), want_index)
        np.testing.assert_array_equal(rank.numpy(), want_rank)


@pytest.mark.parametrize("cut", [1, 150, 399])
def test_device_state_merges_with_host_shards_as_one_run(cut: int) -> None:
    acts = corpus(4)
    whole = Intervals(D, 4, 2, seed=1)
    whole.update(SparseBatch.from_dense(acts, 0))
    left = DeviceIntervals(D, 4, 2, seed=1)
    left.update(torch.from_numpy(acts[:cut].copy()), torch.arange(cut))
    right = Intervals(D, 4, 2, seed=1)
    right.update(SparseBatch.from_dense(acts[cut:], cut))
    for merged in (left.to_numpy().merge(right), right.merge(left.to_numpy())):
        assert_state_equal(merged, whole)


def test_bundle_with_device_intervals_equals_numpy_bundle() -> None:
    acts = corpus(6)
    kwargs = dict(top_k=5, interval_bins=4, interval_per_bin=2, hist_bins=8, seed=3)
    reference = HarvestReducers(D, **kwargs)
    on_cpu = HarvestReducers(D, **kwargs, device="cpu")
    forced = HarvestReducers(D, **kwargs, device="cpu", device_intervals=True, cofire=False)
    assert on_cpu.on_device.intervals is None and on_cpu.needs_host_batch  # numpy intervals on a CPU
    assert forced.on_device.intervals is not None and not forced.needs_host_batch
    for start in range(0, T, 50):
        part = acts[start:start + 50]
        batch = SparseBatch.from_dense(part, start)
        reference.update(batch)
        for reducers in (on_cpu, forced):
            reducers.update_dense(torch.from_numpy(part.copy()), torch.arange(start, start + 50))
            reducers.update(batch)
    want = reference.result(edges_k=3)
    for reducers in (on_cpu, forced):
        got = reducers.result(edges_k=3)
        for name in ("interval_value", "interval_token", "top_token", "fire_count", "hist_counts"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_mps_is_refused() -> None:
    assert not supports_device_intervals("mps") and supports_device_intervals("cuda")
    with pytest.raises(ValueError, match="float64"):
        DeviceIntervals(D, 2, 2, device="mps")
