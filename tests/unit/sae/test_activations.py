"""The forward pass stops at the SAE's hook: same values as a full pass, no later block runs."""

from __future__ import annotations

import pytest
import torch

from latent_atlas.analyses.sae.activations import ActivationStream, activations_at, rows_of
from latent_atlas.analyses.sae.source import parse_hook_name
from latent_atlas.lm import capture_points
from tiny_models import N_LAYERS

POINTS = ["hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]


def _reference(capture, layer: int, point: str) -> torch.Tensor:
    if point == "hook_resid_pre":
        return capture.resid_pre(layer)
    index = {"hook_attn_out": 0, "hook_resid_mid": 1, "hook_mlp_out": 2, "hook_resid_post": 3}[point]
    return capture.points[layer][index]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("point", POINTS)
def test_stopped_forward_equals_full_forward_and_runs_no_later_block(
    family: str, point: str, request: pytest.FixtureRequest
) -> None:
    lm = request.getfixturevalue(family)
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second sequence
    full = capture_points(lm, ids, mask)
    blocks = lm.adapter.blocks_of(lm.model)
    for layer in range(N_LAYERS):
        calls: list[int] = []
        handles = [b.register_forward_pre_hook(lambda m, a, i=i, calls=calls: calls.append(i)) for i, b in enumerate(blocks)]
        final_norm_calls: list[int] = []
        handles.append(lm.adapter.final_norm_of(lm.model).register_forward_pre_hook(
            lambda m, a, seen=final_norm_calls: seen.append(1)))
        try:
            got = activations_at(lm, ids, mask, parse_hook_name(f"blocks.{layer}.{point}"))
        finally:
            for handle in handles:
                handle.remove()
        torch.testing.assert_close(got, _reference(full, layer, point), rtol=1e-5, atol=1e-5)
        assert max(calls) == layer, f"block {max(calls)} ran for a hook at layer {layer}"
        assert final_norm_calls == []
        assert not got.requires_grad


def test_hook_outside_the_model_is_a_clear_error(tiny_llama) -> None:
    with pytest.raises(ValueError, match=rf"hooks layer 7 but model tiny-llama has {N_LAYERS} layers"):
        activations_at(tiny_llama, torch.zeros(1, 4, dtype=torch.long), None,
                       parse_hook_name("blocks.7.hook_resid_post"))


def test_rows_skip_padding_and_first_positions() -> None:
    acts = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    rows = rows_of(acts, mask, skip_positions=1)
    assert rows.shape == (6, 3)  # positions 1..3 of each (position 0 is skipped, and padding anyway)
    torch.testing.assert_close(rows[0], acts[0, 1])
    torch.testing.assert_close(rows[3], acts[1, 1])
    assert rows_of(acts, mask).shape == (7, 3)


def test_stream_gives_full_batches_of_every_row_once_per_epoch(tiny_llama) -> None:
    sequences = [[(7 * i + j) % 200 for j in range(10)] for i in range(6)]
    forwards: list[int] = []
    stream = ActivationStream(tiny_llama, parse_hook_name("blocks.1.hook_resid_post"), sequences,
                              batch_rows=9, seqs_per_forward=2, buffer_forwards=3, seed=1,
                              on_forward=forwards.append)
    rows = torch.cat([next(stream) for _ in range(6)])  # 6 x 9 = 54 rows = 6 sequences x 9 positions
    assert rows.shape == (54, tiny_llama.d_model)
    expected = rows_of(activations_at(tiny_llama, torch.tensor(sequences), None,
                                      parse_hook_name("blocks.1.hook_resid_post")), None, 1).float()
    # the same multiset of rows, shuffled
    def key(t: torch.Tensor) -> list[tuple[float, ...]]:
        return sorted(tuple(round(v, 4) for v in row.tolist()) for row in t)
    assert key(rows) == key(expected)
    assert sum(forwards) == 6 * 10 and stream.epochs == 0


def test_norm_outliers_are_dropped() -> None:
    from latent_atlas.analyses.sae.activations import drop_outliers

    rows = torch.randn(50, 8)
    rows[7] *= 200  # an attention-sink-like row
    kept, dropped = drop_outliers(rows)
    assert dropped == 1 and len(kept) == 49
    assert not any(torch.equal(row, rows[7]) for row in kept)
    assert drop_outliers(torch.randn(20, 8))[1] == 0
