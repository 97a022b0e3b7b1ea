"""A grid split into shards, each run alone, merged and finished, equals the unsharded run bit for bit."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from latent_atlas.analyses.base import MemoryCheckpoint, Result
from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.analyses.grid.resume import CHECKPOINT_CELLS
from latent_atlas.analyses.shards import SHARDABLE, ShardResult
from latent_atlas.lm import LanguageModel

SIZE = 130  # 16,900 cells: pieces of 8,192, 8,192 and 516
TIMINGS = ("seconds", "cells_per_second")
GRID = SHARDABLE["grid"]


def _params(lm: LanguageModel, layer: int, **extra: Any) -> GridParams:
    return GridParams(model=lm.name, layer=layer, size=SIZE, spacing=0.1, plane="random_projection", seed=3,
                      top_k=4, **extra)


def _assert_same(sharded: Result, whole: Result) -> None:
    assert set(sharded.arrays) == set(whole.arrays)
    for name, array in whole.arrays.items():
        assert sharded.arrays[name].dtype == array.dtype, name
        np.testing.assert_array_equal(sharded.arrays[name], array, err_msg=name)
    assert set(sharded.summary) == set(whole.summary)
    for key, value in whole.summary.items():
        if key not in TIMINGS:
            assert sharded.summary[key] == value, key


def _roundtrip(part: ShardResult) -> ShardResult:
    """What the runtime does between processes: arrays as they are, the summary through JSON."""
    return ShardResult(arrays={k: np.array(v) for k, v in part.arrays.items()},
                       summary=json.loads(json.dumps(part.summary)))


@pytest.mark.parametrize("layer", [1, 2])  # the direct computation, and the fast path at L = 2
def test_sharded_grid_equals_the_unsharded_run(tiny_gpt2: LanguageModel, layer: int) -> None:
    params = _params(tiny_gpt2, layer)
    whole = run_grid(params, tiny_gpt2)
    assert GRID.work_units(params) == SIZE * SIZE
    fractions: list[float] = []

    def record(fraction: float, stage: str) -> None:
        fractions.append(fraction)

    for n in (1, 2, 3):
        specs = GRID.split(params, n)
        assert len(specs) == n and json.loads(json.dumps(specs)) == specs
        assert specs[0]["begin"] == 0 and specs[-1]["end"] == SIZE * SIZE
        assert all(s["begin"] % CHECKPOINT_CELLS == 0 for s in specs)
        fractions.clear()
        parts = [_roundtrip(GRID.run_shard(params, spec, tiny_gpt2, record)) for spec in specs]
        assert min(fractions) >= 0.0 and max(fractions) == 1.0  # each shard's progress runs 0..1
        merged = GRID.merge(params, parts)
        result = GRID.finish(params, merged, tiny_gpt2)
        _assert_same(result, whole)


def test_grid_merge_is_associative(tiny_gpt2: LanguageModel) -> None:
    params = _params(tiny_gpt2, 1)
    a, b, c = (GRID.run_shard(params, spec, tiny_gpt2) for spec in GRID.split(params, 3))
    left = GRID.merge(params, [GRID.merge(params, [a, b]), c])
    right = GRID.merge(params, [a, GRID.merge(params, [b, c])])
    flat = GRID.merge(params, [a, b, c])
    for merged in (left, right):
        assert set(merged.arrays) == set(flat.arrays)
        for name in flat.arrays:
            np.testing.assert_array_equal(merged.arrays[name], flat.arrays[name], err_msg=name)
        assert merged.summary == flat.summary
    single = GRID.merge(params, [a])
    assert single.summary == a.summary
    for name in a.arrays:
        np.testing.assert_array_equal(single.arrays[name], a.arrays[name], err_msg=name)


def test_grid_merge_refuses_parts_that_do_not_fit(tiny_gpt2: LanguageModel) -> None:
    params = _params(tiny_gpt2, 1)
    a, b, c = (GRID.run_shard(params, spec, tiny_gpt2) for spec in GRID.split(params, 3))
    with pytest.raises(ValueError, match="not neighbours"):
        GRID.merge(params, [a, c])
    with pytest.raises(ValueError, match="nothing to merge"):
        GRID.merge(params, [])
    with pytest.raises(ValueError, match="cover cells"):
        GRID.finish(params, GRID.merge(params, [a, b]), tiny_gpt2)
    other = GRID.run_shard(params.model_copy(update={"seed": 4}), GRID.split(params, 3)[1], tiny_gpt2)
    with pytest.raises(ValueError, match="plane"):
        GRID.merge(params, [a, other])


def test_split_never_cuts_a_piece(tiny_gpt2: LanguageModel) -> None:
    params = _params(tiny_gpt2, 1)
    assert len(GRID.split(params, 8)) == 3  # three pieces: at most three shards
    small = params.model_copy(update={"size": 64})
    assert GRID.split(small, 4) == [{"index": 0, "count": 1, "begin": 0, "end": 64 * 64}]
    with pytest.raises(ValueError):
        GRID.split(params, 0)


def test_a_retried_shard_loads_the_pieces_it_saved(tiny_gpt2: LanguageModel) -> None:
    """Shards save pieces under the unsharded run's keys: a retry (or a later whole run) reuses them."""
    params = _params(tiny_gpt2, 1)
    whole = run_grid(params, tiny_gpt2)
    checkpoint = MemoryCheckpoint()
    specs = GRID.split(params, 2)  # pieces 0 | 1, 2
    parts = [GRID.run_shard(params, spec, tiny_gpt2, checkpoint=checkpoint) for spec in specs]
    assert [key.rsplit(".", 1)[1] for key in checkpoint.saved] == ["0", "1", "2"]
    retried = GRID.run_shard(params, specs[1], tiny_gpt2, checkpoint=checkpoint)
    assert retried.summary["resumed_cells"] == SIZE * SIZE - CHECKPOINT_CELLS
    assert checkpoint.loaded == checkpoint.saved[1:]
    result = GRID.finish(params, GRID.merge(params, [parts[0], retried]), tiny_gpt2)
    for name, array in whole.arrays.items():
        np.testing.assert_array_equal(result.arrays[name], array, err_msg=name)
    resumed = run_grid(params, tiny_gpt2, checkpoint=checkpoint)  # the unsharded run finds every piece
    assert resumed.summary["resumed_cells"] == SIZE * SIZE
