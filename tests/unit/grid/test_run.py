"""The grid run end to end on tiny models: layout, progress, cancel, through_states, context."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_atlas.analyses.base import Cancelled
from latent_atlas.analyses.grid import GridParams, run_grid, states_at_layer
from latent_atlas.analyses.grid.streaming import stream_cells
from latent_atlas.lm import LanguageModel
from latent_atlas.lm.inject import compute_context, run_from_layer


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def test_result_layout_and_summary(lm: LanguageModel) -> None:
    params = GridParams(model=lm.name, layer=1, size=12, spacing=0.5, plane="random_projection", seed=4, top_k=3)
    result = run_grid(params, lm)
    a, s = result.arrays, result.summary
    assert a["top_ids"].shape == (12, 12, 3) and a["top_ids"].dtype == np.int32
    assert a["top_probs"].shape == (12, 12, 3) and a["top_probs"].dtype == np.float32
    assert a["entropy"].shape == (12, 12) and a["entropy"].dtype == np.float32
    assert a["xs"].shape == a["ys"].shape == (12,) and a["xs"][6] == 0.0
    assert a["plane_center"].shape == a["plane_u"].shape == (lm.d_model,)
    assert np.all(np.diff(a["top_probs"], axis=-1) <= 0)
    assert np.all((a["entropy"] >= 0) & (a["entropy"] <= np.log(lm.vocab_size) + 1e-4))
    # Cell (j, i) is the point (xs[i], ys[j]).
    j, i = 2, 9
    point = torch.from_numpy(a["plane_u"]).double() * float(a["xs"][i]) + torch.from_numpy(a["plane_v"]).double() * float(a["ys"][j])
    logits = run_from_layer(lm, 1, point.float().unsqueeze(0)).float()
    top = torch.softmax(logits, -1).topk(3)
    assert a["top_ids"][j, i].tolist() == top.indices[0].tolist()
    np.testing.assert_allclose(a["top_probs"][j, i], top.values[0].numpy(), rtol=1e-4, atol=1e-6)
    assert s["fast_path"] is False and s["layer"] == 1 and s["n_layers"] == lm.n_layers
    assert s["plane"] == "random_projection" and s["plane_info"]["seed"] == 4
    assert set(s["tokens"]) == {str(t) for t in np.unique(a["top_ids"][..., 0])}
    assert sum(row["cells"] for row in s["token_table"]) <= 144
    assert s["config"]["seed"] == 4 and s["dtype"] == "float32"
    json.dumps(s)  # JSON-safe


def test_progress_once_per_batch_and_cancel(lm: LanguageModel) -> None:
    params = GridParams(model=lm.name, layer=0, size=100, spacing=0.1)  # 10_000 cells: several batches
    calls: list[tuple[float, str]] = []
    result = run_grid(params, lm, lambda f, stage: calls.append((f, stage)))
    cell_calls = [c for c in calls if "cells" in c[1]]
    assert len(cell_calls) == sum(
        -(-cells // size) for cells, size in [(10_000, result.summary["batch_sizes"][0])]
    )
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(cell_calls) >= 2

    seen: list[str] = []

    def cancel_on_second_batch(fraction: float, stage: str) -> None:
        if "cells" in stage:
            seen.append(stage)
            if len(seen) == 2:
                raise Cancelled()

    with pytest.raises(Cancelled):
        run_grid(params, lm, cancel_on_second_batch)


def test_worker_threads_leave_torch_threads_as_they_were(lm: LanguageModel) -> None:
    before = torch.get_num_threads()
    run_grid(GridParams(model=lm.name, layer=1, size=40, spacing=0.2), lm)
    run_grid(GridParams(model=lm.name, layer=lm.n_layers, size=40, spacing=0.2), lm)
    assert torch.get_num_threads() == before


def test_batch_size_does_not_grow_with_n(lm: LanguageModel) -> None:
    sizes = [
        run_grid(GridParams(model=lm.name, layer=1, size=n, spacing=0.2), lm).summary["batch_sizes"][0]
        for n in (70, 140)
    ]
    assert sizes[0] == sizes[1]


def test_through_states_sit_on_grid_points(lm: LanguageModel) -> None:
    prompts = ["hello there", "another prompt"]
    states = [{"prompt": 0, "position": -1}, {"prompt": 1, "position": 2}, {"prompt": 1, "position": 5}]
    params = GridParams(
        model=lm.name, layer=2, size=9, spacing=0.25, plane="through_states", prompts=prompts, states=states
    )
    result = run_grid(params, lm)
    cells = result.arrays["state_cells"]
    assert cells.tolist() == [[4, 4], [8, 4], [4, 8]]
    rows = [lm.tokenizer(p)["input_ids"] for p in prompts]
    real = states_at_layer(lm, 2, rows)
    chosen = torch.stack([real[0][-1], real[1][2], real[1][5]])
    expected = torch.softmax(run_from_layer(lm, 2, chosen).float(), -1).topk(5)
    for n, (i, j) in enumerate(cells.tolist()):
        assert result.arrays["top_ids"][j, i].tolist() == expected.indices[n].tolist()
        np.testing.assert_allclose(result.arrays["top_probs"][j, i], expected.values[n].numpy(), rtol=1e-5)
    assert [r["position"] for r in result.summary["plane_info"]["states"]] == [len(rows[0]) - 1, 2, 5]
    # A grid that ends before x = 1 (n = 8) or a spacing that misses 1 cannot hold the states.
    for size, spacing in ((8, 0.25), (9, 0.3)):
        other = run_grid(params.model_copy(update={"size": size, "spacing": spacing}), lm)
        assert other.arrays["state_cells"][1].tolist() == [-1, -1]
        assert other.arrays["state_cells"][0].tolist() == [size // 2, size // 2]


def test_context_cell_reproduces_the_full_prompt(lm: LanguageModel) -> None:
    """The grid point at the context's own state answers like the model on the whole prompt."""
    context = "the cat sat on"
    prompts = [context, "a mat"]
    states = [{"prompt": 0, "position": -1}, {"prompt": 1, "position": 0}, {"prompt": 1, "position": 1}]
    for layer in (0, 2, lm.n_layers):
        params = GridParams(
            model=lm.name, layer=layer, size=5, spacing=0.5, plane="through_states", prompts=prompts,
            states=states, context=context, top_k=4,
        )
        result = run_grid(params, lm)
        i, j = result.arrays["state_cells"][0]
        ids = torch.tensor([lm.tokenizer(context)["input_ids"]])
        with torch.inference_mode():
            own = torch.softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1).topk(4)
        assert result.arrays["top_ids"][j, i].tolist() == own.indices.tolist()
        np.testing.assert_allclose(result.arrays["top_probs"][j, i], own.values.numpy(), rtol=1e-4, atol=1e-6)
        assert result.summary["position"] == ids.shape[1] - 1
        assert result.summary["fast_path"] is (layer == lm.n_layers)


def test_context_prefix_is_reused_unchanged(lm: LanguageModel) -> None:
    context = compute_context(lm, lm.tokenizer("some context")["input_ids"])
    assert context.prefix is not None
    states = torch.randn(5, lm.d_model, generator=torch.Generator().manual_seed(0))
    first = run_from_layer(lm, 1, states, prefix=context.prefix)
    second = run_from_layer(lm, 1, states[:2], prefix=context.prefix)
    torch.testing.assert_close(first[:2], second, rtol=1e-5, atol=1e-6)


def test_bfloat16_option(lm: LanguageModel) -> None:
    params = GridParams(model=lm.name, layer=1, size=16, spacing=0.5, plane="replicated")
    full = run_grid(params, lm)
    half = run_grid(params.model_copy(update={"dtype": "bfloat16"}), lm)
    assert half.summary["dtype"] == "bfloat16" and half.summary["requested_dtype"] == "bfloat16"
    assert half.arrays["top_ids"].shape == full.arrays["top_ids"].shape
    assert np.abs(half.arrays["entropy"] - full.arrays["entropy"]).max() < 0.05


def test_out_of_memory_halves_the_batch_and_goes_on() -> None:
    done: list[tuple[int, int]] = []

    def compute(start: int, stop: int) -> None:
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by a batch limit)")
        done.append((start, stop))

    calls: list[float] = []
    used = stream_cells(11, 16, compute, lambda f, s: calls.append(f), "cells", (0.0, 1.0), is_cuda=False)
    assert used == [2, 1]  # 16 -> 8 -> 4 -> 2 (failed tries), five batches of 2, the last one of 1
    assert done == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 11)]
    assert len(calls) == 3 + 6 and calls == sorted(calls)  # one report per try

    def always(start: int, stop: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        stream_cells(4, 2, always, lambda f, s: None, "cells", (0.0, 1.0), is_cuda=False)
