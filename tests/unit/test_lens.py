"""The logit lens on the last block's output reproduces the model's own prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.lm import LanguageModel, capture_points, logit_lens


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def test_lens_matches_logits(lm: LanguageModel) -> None:
    encoded = lm.tokenizer(["a lens test", "xy"], padding=True, return_tensors="pt")
    capture = capture_points(lm, encoded["input_ids"], encoded["attention_mask"], logits=True)
    assert capture.logits is not None
    top_ids, top_probs = logit_lens(lm, capture.points[-1][3], k=7)
    assert top_ids.shape == top_probs.shape == (*encoded["input_ids"].shape, 7)
    probs = torch.softmax(capture.logits.float(), dim=-1)
    expected_probs, expected_ids = probs.topk(7, dim=-1)
    assert torch.equal(top_ids[..., 0], expected_ids[..., 0])
    torch.testing.assert_close(top_probs, expected_probs, rtol=1e-5, atol=1e-6)
    assert torch.all(top_probs[..., :-1] >= top_probs[..., 1:])


def test_lens_accepts_numpy_and_any_leading_shape(lm: LanguageModel) -> None:
    states = np.random.default_rng(0).normal(size=(2, 3, 4, lm.d_model)).astype(np.float32)
    ids, probs = logit_lens(lm, states, k=3, chunk=5)
    assert ids.shape == probs.shape == (2, 3, 4, 3)
    flat_ids, _ = logit_lens(lm, states.reshape(-1, lm.d_model), k=3)
    assert torch.equal(ids.reshape(-1, 3), flat_ids)
    with pytest.raises(ValueError, match="width"):
        logit_lens(lm, np.zeros((2, lm.d_model + 1), dtype=np.float32))
