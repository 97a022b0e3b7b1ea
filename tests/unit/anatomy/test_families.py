"""The anatomy run on every supported family (tiny random models of ``tests/tiny_models.py``).

Each family's tiny model carries what sets it apart (sliding windows, grouped
query heads, fused projections, Gemma's post-norms, Gemma 2's final logit
soft-cap, GPT-NeoX's parallel blocks), so a wrong point or a missed soft-cap
fails here: the attention must be the model's own, the block points must add up
to the block output, the neurons must be what the MLP's down projection reads,
and the lens at the last layer must be the model's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latent_atlas.analyses.anatomy import AnatomyParams, run_anatomy
from latent_atlas.analyses.anatomy.forward import (
    DOWN_PROJECTIONS,
    down_projection,
    eager_attention,
    trace,
)
from latent_atlas.analyses.anatomy.lens import top1
from latent_atlas.lm import LanguageModel, load_model
from latent_atlas.lm.adapters import ADAPTERS
from tiny_models import FAMILIES, build_tiny_model

PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    family = str(request.param)
    path: Path = build_tiny_model(tmp_path_factory.mktemp(f"anatomy-{family}"), family)
    return load_model(str(path), name=f"tiny-{family}")


def _ids(lm: LanguageModel) -> list[int]:
    return [int(i) for i in lm.tokenizer(PROMPT)["input_ids"]]


def test_every_supported_family_has_a_down_projection() -> None:
    assert set(DOWN_PROJECTIONS) == set(ADAPTERS)


def test_run_on_every_family(lm: LanguageModel) -> None:
    ids = _ids(lm)
    t = len(ids)
    result = run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, ig_steps=4, ig_batch=2, vocab_sample=20,
                                       lens_positions=t), lm)
    a, s = result.arrays, result.summary
    heads = s["n_heads"]
    # attention: the model's own eager patterns, rows summing to 1
    with eager_attention(lm.model), torch.no_grad():
        own = lm.model(torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
    assert a["attention"].shape == (lm.n_layers * heads, t, t)
    for layer in range(lm.n_layers):
        np.testing.assert_allclose(a["attention"][layer * heads:(layer + 1) * heads].astype(np.float32),
                                   own[layer][0].float().numpy(), atol=1e-3)
    np.testing.assert_allclose(a["attention"].astype(np.float32).sum(-1), 1.0, atol=3e-3)
    # lens at the last layer: the model's own logits (Gemma 2: after its final soft-cap)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].float()
    assert a["lens_ids"][-1].tolist() == logits.argmax(-1).tolist()
    np.testing.assert_allclose(a["lens_probs"][-1], torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-4)
    assert a["lens_kl"][-1] == pytest.approx(0.0, abs=1e-5) and a["lens_final_rank"][-1] == 0
    assert a["neuron_ids"].shape == (lm.n_layers, t, 8) and np.isfinite(a["neuron_values"]).all()
    assert np.isfinite(a["saliency_ig"]).all() and np.isfinite(a["saliency_grad_input"]).all()
    assert s["parameters"]["count"] == sum(p.numel() for p in lm.model.parameters())


def test_points_add_up_and_neurons_feed_the_down_projection(lm: LanguageModel) -> None:
    blocks = lm.adapter.blocks_of(lm.model)
    outputs: list[Any] = []
    handles = [lm.adapter.mlp_module_of(b).register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
               for b in blocks]
    try:
        tr = trace(lm, _ids(lm))
    finally:
        for handle in handles:
            handle.remove()
    previous = tr.block_input
    for layer, block in enumerate(blocks):
        torch.testing.assert_close(tr.resid_mid[layer], previous + tr.attn_out[layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tr.resid_mid[layer] + tr.mlp_out[layer], tr.resid_post[layer],
                                   atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            mlp = down_projection(lm, block)(tr.neurons[layer])
        torch.testing.assert_close(mlp, outputs[layer][0].float(), atol=1e-5, rtol=1e-4)
        previous = tr.resid_post[layer]


def test_gemma2_lens_applies_the_final_soft_cap(tmp_path: Path) -> None:
    """Without the cap the lens would disagree with the model: the tiny Gemma 2 caps logits at 0.3."""
    lm = load_model(str(build_tiny_model(tmp_path, "gemma2")), name="tiny-gemma2")
    assert lm.adapter.softcap_of(lm.model) == pytest.approx(0.3)
    tr = trace(lm, _ids(lm))
    _, probs = top1(lm, tr.resid_post[-1])
    with torch.no_grad():
        logits = lm.model(torch.tensor([_ids(lm)])).logits[0].float()
        raw = lm.adapter.unembedding_of(lm.model)(lm.adapter.final_norm_of(lm.model)(tr.resid_post[-1])).float()
    np.testing.assert_allclose(probs.numpy(), torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-4)
    uncapped = torch.softmax(raw, -1).max(-1).values.numpy()
    assert np.abs(uncapped - probs.numpy()).max() > 1e-3  # the cap changes the probabilities
