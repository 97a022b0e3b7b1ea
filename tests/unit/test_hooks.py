"""The four hook points: proven against transformers' hidden states, hooks always removed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latent_atlas.lm import (
    COMPONENTS,
    HookPointMismatch,
    LanguageModel,
    capture_hooks,
    capture_points,
    check_hook_points,
)

PROMPTS = ["The quick brown fox jumps", "hi", "Ünïcödé and spaces   "]


def _batch(lm: LanguageModel) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = lm.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def _hook_counts(lm: LanguageModel) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules()
    )


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def test_check_holds_on_every_layer(lm: LanguageModel) -> None:
    input_ids, mask = _batch(lm)
    assert mask.sum() < mask.numel()  # the batch really has padding
    error = check_hook_points(lm, input_ids, mask)
    assert 0.0 <= error < 1e-5


def test_capture_shapes_and_gather_order(lm: LanguageModel) -> None:
    input_ids, mask = _batch(lm)
    capture = capture_points(lm, input_ids, mask, logits=True)
    batch, seq = input_ids.shape
    stacked = capture.stacked()
    assert stacked.shape == (lm.n_layers, len(COMPONENTS), batch, seq, lm.d_model)
    assert capture.logits is not None and capture.logits.shape == (batch, seq, lm.vocab_size)
    gathered = capture.gather(mask.bool())
    assert gathered.shape == (lm.n_layers, 4, int(mask.sum()), lm.d_model)
    assert torch.equal(gathered, stacked[:, :, mask.bool()])
    assert torch.equal(capture.resid_pre(1), stacked[0, 3])


def test_hooks_removed_after_success_and_exception(lm: LanguageModel) -> None:
    input_ids, mask = _batch(lm)
    check_hook_points(lm, input_ids, mask)  # transformers installs its own inactive hooks once
    before = _hook_counts(lm)
    capture_points(lm, input_ids, mask)
    assert _hook_counts(lm) == before
    bad_ids = torch.full_like(input_ids, lm.vocab_size + 10)  # out of the embedding's range
    with pytest.raises(IndexError):
        capture_points(lm, bad_ids, mask)
    assert _hook_counts(lm) == before
    with pytest.raises(RuntimeError, match="inside"), capture_hooks(lm):
        assert _hook_counts(lm) == before + 1 + 4 * lm.n_layers
        raise RuntimeError("inside")
    assert _hook_counts(lm) == before


def test_wrong_adapter_is_caught(lm: LanguageModel) -> None:
    # Swap attention and MLP: the identities no longer hold and the check must say where.
    wrong = dataclasses.replace(lm.adapter, attention=lm.adapter.mlp, mlp=lm.adapter.attention)
    broken = dataclasses.replace(lm, adapter=wrong)
    input_ids, mask = _batch(lm)
    with pytest.raises(HookPointMismatch, match=r"hook point check failed at layer 0 \(resid_pre \+ attn_out != resid_mid\)"):
        check_hook_points(broken, input_ids, mask)
