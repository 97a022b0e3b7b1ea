"""A grid resumes from the pieces an earlier attempt saved, and equals an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from latent_atlas.analyses.base import MemoryCheckpoint
from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.analyses.grid.resume import CHECKPOINT_CELLS
from latent_atlas.lm import LanguageModel

SIZE = 130  # 16,900 cells: pieces of 8,192, 8,192 and 516


class Killed(Exception):
    """Stands for the worker process dying between two batches."""


def _arrays_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("layer", [1, 2])  # the direct computation, and the fast path at L = 2
def test_a_killed_grid_resumes_from_its_saved_pieces(tiny_gpt2: LanguageModel, layer: int) -> None:
    params = GridParams(model=tiny_gpt2.name, layer=layer, size=SIZE, spacing=0.1, plane="random_projection",
                        seed=3, top_k=4)
    cells = SIZE * SIZE
    uninterrupted = run_grid(params, tiny_gpt2)
    assert "resumed_cells" in uninterrupted.summary and uninterrupted.summary["resumed_cells"] == 0

    checkpoint = MemoryCheckpoint()
    reached: list[int] = []

    def dies_in_the_second_piece(fraction: float, stage: str) -> None:
        if ": " in stage and "/" in stage:
            done = int(stage.split(": ")[1].split("/")[0])
            reached.append(done)
            if done > CHECKPOINT_CELLS:
                raise Killed()

    with pytest.raises(Killed):
        run_grid(params, tiny_gpt2, dies_in_the_second_piece, checkpoint=checkpoint)
    assert len(checkpoint.saved) == 1 and checkpoint.saved[0].endswith(".0")  # the first piece only

    computed: list[int] = []

    def record(fraction: float, stage: str) -> None:
        if ": " in stage and "/" in stage:
            computed.append(int(stage.split(": ")[1].split("/")[0]))

    resumed = run_grid(params, tiny_gpt2, record, checkpoint=checkpoint)
    assert resumed.summary["resumed_cells"] == CHECKPOINT_CELLS
    assert checkpoint.loaded == checkpoint.saved[:1]
    assert min(computed) == CHECKPOINT_CELLS  # no cell of the first piece was computed again
    assert len(checkpoint.saved) == 1 + -(-(cells - CHECKPOINT_CELLS) // CHECKPOINT_CELLS)
    _arrays_equal(resumed.arrays, uninterrupted.arrays)
    for key in ("tokens", "token_table", "distinct_top1", "fast_path"):
        assert resumed.summary[key] == uninterrupted.summary[key], key

    # A run that finds every piece saved computes nothing and still gives the same arrays.
    again: list[int] = []
    complete = run_grid(params, tiny_gpt2, lambda f, s: again.append(s.count("/")), checkpoint=checkpoint)
    assert complete.summary["resumed_cells"] == cells and complete.summary["batch_sizes"] == []
    _arrays_equal(complete.arrays, uninterrupted.arrays)


def test_a_piece_saved_by_another_computation_is_not_used(tiny_gpt2: LanguageModel) -> None:
    params = GridParams(model=tiny_gpt2.name, layer=1, size=SIZE, spacing=0.1, plane="random_projection",
                        seed=3, top_k=4)
    checkpoint = MemoryCheckpoint()
    run_grid(params, tiny_gpt2, checkpoint=checkpoint)
    # Other top-k: other keys, nothing loaded.
    other = run_grid(params.model_copy(update={"top_k": 3}), tiny_gpt2, checkpoint=checkpoint)
    assert other.summary["resumed_cells"] == 0
    # A piece with the wrong shape under the right key is recomputed, not trusted.
    key = checkpoint.saved[0]
    checkpoint.pieces[key] = {name: array[:-1] for name, array in checkpoint.pieces[key].items()}
    checkpoint.loaded.clear()
    redone = run_grid(params, tiny_gpt2, checkpoint=checkpoint)
    assert redone.summary["resumed_cells"] == SIZE * SIZE - CHECKPOINT_CELLS
    _arrays_equal(redone.arrays, run_grid(params, tiny_gpt2).arrays)
