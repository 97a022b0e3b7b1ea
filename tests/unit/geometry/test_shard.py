"""A geometry run split into prompt batches, each captured alone, merged and finished, equals the unsharded run.

Tolerances are the ones ``geometry.shard`` documents: states, norms, metadata
and lens exactly; PCA coordinates to 1e-5 of their scale (float32 vs float64
covariance products); sums of averaged states up to float64 summation order.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from latent_atlas.analyses.base import Result
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.shards import SHARDABLE, ShardResult
from latent_atlas.lm import LanguageModel

PROMPTS = ["The quick brown fox", "hi", "a longer prompt, punctuation!", "zz", "one more prompt here",
           "seven", "the last of them all, and long"]
GEOMETRY = SHARDABLE["geometry"]
EXACT = ("states", "norm", "layer", "component", "position", "prompt_index", "token_id", "lens_ids", "lens_probs",
         "layer_norm_mean", "positional_position", "positional_count")
APPROX = ("hook_check_max_abs_error",)  # the largest of each shard's first-batch check


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])  # learned positions, and rotary (positional sums)
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _params(**overrides: object) -> GeometryParams:
    values: dict[str, object] = {"model": "tiny", "prompts": PROMPTS, "batch_size": 2}
    values.update(overrides)
    return GeometryParams(**values)


def _close(a: Any, b: Any, path: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), path
    else:
        assert a == b, path


def _assert_equivalent(sharded: Result, whole: Result, exact_means: bool) -> None:
    assert set(sharded.arrays) == set(whole.arrays)
    for name, array in whole.arrays.items():
        got = sharded.arrays[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        if name in EXACT and (exact_means or name not in ("states", "norm", "layer_norm_mean")):
            np.testing.assert_array_equal(got, array, err_msg=name)
        else:
            scale = max(1.0, float(np.nanmax(np.abs(array.astype(np.float64))))) if array.size else 1.0
            np.testing.assert_allclose(got.astype(np.float64), array.astype(np.float64), rtol=0,
                                       atol=1e-5 * scale if name not in ("states",) else 2e-3 * scale,
                                       err_msg=name)
    for key in set(whole.summary) - set(APPROX):
        _close(sharded.summary[key], whole.summary[key], key)


def _roundtrip(part: ShardResult) -> ShardResult:
    return ShardResult(arrays={k: np.array(v) for k, v in part.arrays.items()},
                       summary=json.loads(json.dumps(part.summary)))


@pytest.mark.parametrize(("average", "extra"), [
    ("none", {}),
    ("none", {"unit_normalise": True, "exclude_position0": True, "states_dtype": "float32"}),
    ("samples", {}),
    ("positions", {}),
])
def test_sharded_geometry_equals_the_unsharded_run(lm: LanguageModel, average: str,
                                                   extra: dict[str, object]) -> None:
    params = _params(average=average, **extra)
    whole = run_geometry(params, lm)
    assert GEOMETRY.work_units(params) == len(PROMPTS)
    for n in (1, 2, 3):
        specs = GEOMETRY.split(params, n)
        assert len(specs) == n and json.loads(json.dumps(specs)) == specs
        assert all(s["prompt_begin"] % params.batch_size == 0 for s in specs)
        parts = [_roundtrip(GEOMETRY.run_shard(params, spec, lm)) for spec in specs]
        result = GEOMETRY.finish(params, GEOMETRY.merge(params, parts), lm)
        _assert_equivalent(result, whole, exact_means=average != "samples")


def test_geometry_merge_is_associative(tiny_llama: LanguageModel) -> None:
    params = _params()
    a, b, c = (GEOMETRY.run_shard(params, spec, tiny_llama) for spec in GEOMETRY.split(params, 3))
    left = GEOMETRY.merge(params, [GEOMETRY.merge(params, [a, b]), c])
    right = GEOMETRY.merge(params, [a, GEOMETRY.merge(params, [b, c])])
    assert left.summary == right.summary
    assert set(left.arrays) == set(right.arrays)
    for name in left.arrays:
        if name.startswith("fit.") or name.startswith("positional_sums"):  # float64 sums: rounding order
            np.testing.assert_allclose(left.arrays[name], right.arrays[name], rtol=1e-12, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(left.arrays[name], right.arrays[name], err_msg=name)


def test_geometry_shards_must_be_neighbours(tiny_gpt2: LanguageModel) -> None:
    params = _params()
    a, b, c = (GEOMETRY.run_shard(params, spec, tiny_gpt2) for spec in GEOMETRY.split(params, 3))
    with pytest.raises(ValueError, match="not neighbours"):
        GEOMETRY.merge(params, [a, c])
    with pytest.raises(ValueError, match="cover prompts"):
        GEOMETRY.finish(params, GEOMETRY.merge(params, [a, b]), tiny_gpt2)
    assert len(GEOMETRY.split(params, 10)) == 4  # 7 prompts in batches of 2: at most 4 shards
