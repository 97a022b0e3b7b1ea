"""Running the rest of the model from layer l reproduces the model's own predictions."""

from __future__ import annotations

import pytest
import torch

from latent_atlas.lm import LanguageModel, capture_points
from latent_atlas.lm.inject import compute_context, prefix_cache, resid_from_layer, run_from_layer


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _input_embedding(lm: LanguageModel, token_ids: torch.Tensor, position: int = 0) -> torch.Tensor:
    """What enters block 0 for these tokens at ``position``: token (+ learned position) embedding."""
    states = lm.adapter.token_embedding_of(lm.model)(token_ids)
    positions = lm.adapter.position_embedding_of(lm.model)
    if positions is not None:
        states = states + positions(torch.tensor([position]))
    return states


def _own_logits(lm: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=input_ids).logits[:, -1].float()


def test_layer_zero_injection_of_a_token_embedding_is_the_models_prediction(lm: LanguageModel) -> None:
    tokens = torch.tensor([5, 66, 101, 200, 255])
    with torch.inference_mode():
        logits = run_from_layer(lm, 0, _input_embedding(lm, tokens)).float()
    expected = _own_logits(lm, tokens.unsqueeze(1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_every_layer_single_token(lm: LanguageModel) -> None:
    tokens = torch.tensor([[40], [97], [120]])
    capture = capture_points(lm, tokens)
    expected = _own_logits(lm, tokens)
    for layer in range(lm.n_layers + 1):
        state = capture.resid_pre(layer) if layer < lm.n_layers else capture.points[-1][3]
        logits = run_from_layer(lm, layer, state[:, 0]).float()
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5, msg=f"layer {layer}")


def test_context_reproduces_the_full_prompt_at_every_layer(lm: LanguageModel) -> None:
    ids = torch.tensor([lm.tokenizer("a context of some length")["input_ids"]])
    capture = capture_points(lm, ids)
    expected = _own_logits(lm, ids)
    context = compute_context(lm, ids[0].tolist())
    assert context.prefix is not None and context.prefix.length == ids.shape[1] - 1
    assert context.position == ids.shape[1] - 1
    before = [k.clone() for k in context.prefix.keys]
    for layer in range(lm.n_layers + 1):
        state = capture.resid_pre(layer) if layer < lm.n_layers else capture.points[-1][3]
        # A batch of three copies: every row must give the same answer (rows are independent).
        rows = state[:, -1].expand(3, -1)
        logits = run_from_layer(lm, layer, rows, prefix=context.prefix).float()
        torch.testing.assert_close(logits, expected.expand(3, -1), rtol=1e-4, atol=1e-5, msg=f"layer {layer}")
    # The prefix is read, never written: the same keys serve every batch.
    for old, new in zip(before, context.prefix.keys, strict=True):
        assert torch.equal(old, new)


def test_single_position_shortcut_equals_the_blocks(lm: LanguageModel) -> None:
    """Attention of a lone position is its value: the shortcut matches calling the blocks."""
    states = torch.randn(7, lm.d_model, generator=torch.Generator().manual_seed(3)) * 2
    for layer in range(lm.n_layers + 1):
        fast = resid_from_layer(lm, layer, states)
        blocks = resid_from_layer(lm, layer, states, shortcut=False)
        torch.testing.assert_close(fast, blocks, rtol=1e-5, atol=1e-5, msg=f"layer {layer}")
    fast = resid_from_layer(lm, 0, states, compute_dtype=torch.bfloat16).float()
    blocks = resid_from_layer(lm, 0, states, compute_dtype=torch.bfloat16, shortcut=False).float()
    torch.testing.assert_close(fast, blocks, rtol=2e-2, atol=2e-2)


def test_rows_are_independent_sequences(lm: LanguageModel) -> None:
    states = torch.randn(6, lm.d_model, generator=torch.Generator().manual_seed(1))
    together = run_from_layer(lm, 1, states)
    alone = torch.cat([run_from_layer(lm, 1, states[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_without_context_is_position_zero(lm: LanguageModel) -> None:
    """A one-token context has an empty prefix: the same as no context at all."""
    assert prefix_cache(lm, []) is None
    context = compute_context(lm, [42])
    assert context.prefix is None and context.position == 0


def test_layer_bounds_and_shapes(lm: LanguageModel) -> None:
    states = torch.zeros(2, lm.d_model)
    with pytest.raises(ValueError, match=rf"layer {lm.n_layers + 1} is out of range .*\(0\.\.{lm.n_layers}\)"):
        resid_from_layer(lm, lm.n_layers + 1, states)
    with pytest.raises(ValueError, match="shape"):
        resid_from_layer(lm, 0, torch.zeros(2, lm.d_model + 1))
    assert torch.equal(resid_from_layer(lm, lm.n_layers, states), states)


def test_bfloat16_compute_runs_under_autocast(lm: LanguageModel) -> None:
    states = torch.randn(8, lm.d_model, generator=torch.Generator().manual_seed(2))
    full = run_from_layer(lm, 0, states).float()
    half = run_from_layer(lm, 0, states, compute_dtype=torch.bfloat16).float()
    assert half.shape == full.shape
    assert float((torch.softmax(half, -1) - torch.softmax(full, -1)).abs().max()) < 5e-2


@pytest.mark.demo_model
def test_demo_model_injection(demo_lm: LanguageModel) -> None:
    ids = torch.tensor([demo_lm.tokenizer("The capital of France is")["input_ids"]])
    capture = capture_points(demo_lm, ids)
    expected = _own_logits(demo_lm, ids)
    assert demo_lm.tokenizer.decode([int(expected.argmax())]) == " Paris"
    context = compute_context(demo_lm, ids[0].tolist())
    for layer in (0, 15, demo_lm.n_layers):
        state = capture.resid_pre(layer) if layer < demo_lm.n_layers else capture.points[-1][3]
        logits = run_from_layer(demo_lm, layer, state[:, -1], prefix=context.prefix).float()
        assert int(logits.argmax()) == int(expected.argmax())
        torch.testing.assert_close(
            torch.softmax(logits, -1), torch.softmax(expected, -1), rtol=1e-3, atol=1e-4
        )
    # The single-position shortcut equals the blocks on the real model (9 heads, 3 kv heads).
    states = capture.resid_pre(10)[0]
    torch.testing.assert_close(
        resid_from_layer(demo_lm, 10, states), resid_from_layer(demo_lm, 10, states, shortcut=False),
        rtol=1e-4, atol=1e-3,
    )
    # A single token at layer 0 (rotary model: no position embedding to add).
    tokens = ids[0, :3]
    single = run_from_layer(demo_lm, 0, _input_embedding(demo_lm, tokens)).float()
    own = _own_logits(demo_lm, tokens.unsqueeze(1))
    assert torch.equal(single.argmax(-1), own.argmax(-1))
    torch.testing.assert_close(torch.softmax(single, -1), torch.softmax(own, -1), rtol=1e-3, atol=1e-4)
