"""A harvest split into slices of the corpus, each harvested alone, merged and finished, equals ``run_sae``.

Exact for counts, top-k, histograms, intervals, tokens and the CSC; float sums
(``mean_act``: float64, ``edge_coact_val``: float32 products) up to summation order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_atlas.analyses.sae.run import run_sae
from latent_atlas.analyses.sae.shard import merge_csc, reducers_from_arrays
from latent_atlas.analyses.shards import SHARDABLE, ShardResult
from tests.unit.sae.test_run import D_SAE, TEXT, params, random_sae

SAE = SHARDABLE["sae"]
SUMS = {"mean_act": 1e-6, "edge_coact_val": 1e-5}
MORE_TEXT = [*TEXT, "A fifth prompt, about the weather in spring.", "And a sixth: numbers 1 2 3 4 5 6 7 8 9."]


def _roundtrip(part: ShardResult) -> ShardResult:
    return ShardResult(arrays={k: np.array(v) for k, v in part.arrays.items()},
                       summary=json.loads(json.dumps(part.summary)))


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_sharded_harvest_equals_the_unsharded_run(tiny_gpt2, kind: str) -> None:
    sae = random_sae(kind)
    p = params(corpus={"kind": "prompts", "prompts": MORE_TEXT}, batch_tokens=128)  # two sequences a batch

    def loader(source, device):
        return sae

    whole = run_sae(p, tiny_gpt2, sae_loader=loader)
    assert SAE.work_units(p) == p.n_tokens
    for n in (1, 2, 3):
        specs = SAE.split(p, n)
        assert len(specs) == n and json.loads(json.dumps(specs)) == specs
        parts = [_roundtrip(SAE.run_shard(p, spec, tiny_gpt2, sae_loader=loader)) for spec in specs]
        assert sum(part.arrays["token_id"].size for part in parts) == whole.arrays["token_id"].size
        if n > 1:
            assert all(part.arrays["token_id"].size for part in parts)  # three batches: no shard is empty
        result = SAE.finish(p, SAE.merge(p, parts), tiny_gpt2, sae_loader=loader)
        assert set(result.arrays) == set(whole.arrays)
        for name, array in whole.arrays.items():
            got = np.asarray(result.arrays[name])
            assert got.dtype == array.dtype and got.shape == array.shape, name
            if name in SUMS:
                np.testing.assert_allclose(got, array, rtol=SUMS[name], err_msg=name)
            else:
                np.testing.assert_array_equal(got, np.asarray(array), err_msg=name)
        for key in set(whole.summary) - {"timings"}:
            assert result.summary[key] == whole.summary[key], key


def test_sae_merge_is_associative_and_refuses_gaps(tiny_gpt2) -> None:
    sae = random_sae("standard")
    p = params(corpus={"kind": "prompts", "prompts": MORE_TEXT}, batch_tokens=128)
    a, b, c = (SAE.run_shard(p, spec, tiny_gpt2, sae_loader=lambda s, d: sae) for spec in SAE.split(p, 3))
    left = SAE.merge(p, [SAE.merge(p, [a, b]), c])
    right = SAE.merge(p, [a, SAE.merge(p, [b, c])])
    assert {k: v for k, v in left.summary.items() if k != "harvest_s"} == \
        {k: v for k, v in right.summary.items() if k != "harvest_s"}
    assert set(left.arrays) == set(right.arrays)
    for name in left.arrays:
        if name in ("stats.total", "cofire.product"):
            np.testing.assert_allclose(left.arrays[name], right.arrays[name], rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(left.arrays[name], right.arrays[name], err_msg=name)
    with pytest.raises(ValueError, match="not neighbours"):
        SAE.merge(p, [a, c])
    with pytest.raises(ValueError, match="cover sequences"):
        SAE.finish(p, SAE.merge(p, [a, b]), tiny_gpt2, sae_loader=lambda s, d: sae)
    # A part's reducer state round-trips through arrays.
    again = reducers_from_arrays(p, D_SAE, a.arrays)
    assert int(again.stats.n_tokens) == int(a.arrays["stats.n_tokens"][0])


def test_merge_csc_keeps_tokens_ascending_per_latent() -> None:
    rng = np.random.default_rng(0)
    d, tokens = 7, 60
    dense = np.where(rng.random((tokens, d)) < 0.3, rng.random((tokens, d)), 0.0).astype(np.float32)

    def csc(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = dense[rows]
        ptr = np.zeros(d + 1, np.int64)
        toks, vals = [], []
        for lat in range(d):
            where = np.flatnonzero(block[:, lat]) + (rows.start or 0)
            toks.append(where.astype(np.int32))
            vals.append(dense[where, lat])
            ptr[lat + 1] = ptr[lat] + where.size
        return ptr, np.concatenate(toks), np.concatenate(vals)

    ptr, tok, val = merge_csc([csc(slice(0, 10)), csc(slice(10, 10)), csc(slice(10, 45)), csc(slice(45, 60))])
    want = csc(slice(0, 60))
    np.testing.assert_array_equal(ptr, want[0])
    np.testing.assert_array_equal(tok, want[1])
    np.testing.assert_array_equal(val, want[2])


def _merge_reference(parts):
    """Brute force: per latent, each part's slice in part order."""
    d = parts[0][0].size - 1
    toks, vals, ptr = [], [], [0]
    for lat in range(d):
        for part_ptr, part_tokens, part_values in parts:
            toks.append(part_tokens[part_ptr[lat]:part_ptr[lat + 1]])
            vals.append(part_values[part_ptr[lat]:part_ptr[lat + 1]])
        ptr.append(ptr[-1] + sum(int(p[0][lat + 1] - p[0][lat]) for p in parts))
    return np.array(ptr, np.int64), np.concatenate(toks), np.concatenate(vals)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_csc_equals_per_latent_concatenation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 300))
    parts = []
    for index in range(int(rng.integers(1, 6))):
        count = rng.integers(0, 4, d) * (rng.random(d) < 0.7)  # many empty latents; some parts empty
        if rng.random() < 0.2:
            count[:] = 0
        ptr = np.zeros(d + 1, np.int64)
        np.cumsum(count, out=ptr[1:])
        n = int(ptr[-1])
        parts.append((ptr, (rng.integers(0, 1000, n) + 1000 * index).astype(np.int32),
                       rng.standard_normal(n).astype(np.float32)))
    got = merge_csc(parts)
    want = _merge_reference(parts)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
