"""The anatomy run on tiny models: attention equals the model's own, rollout, lens, saliency, activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.anatomy import AnatomyParams, run_anatomy
from latent_atlas.analyses.anatomy.attention import pool_pattern, thumbnails
from latent_atlas.analyses.anatomy.forward import trace
from latent_atlas.analyses.anatomy.saliency import integrated_gradients
from latent_atlas.analyses.base import Cancelled
from latent_atlas.lm import LanguageModel

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


@pytest.fixture
def result(lm: LanguageModel):
    return run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, ig_steps=8, vocab_sample=100), lm)


def _ids(lm: LanguageModel) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(PROMPT)["input_ids"]])


def test_attention_equals_the_models_own_and_rows_sum_to_one(lm: LanguageModel, result) -> None:
    a = result.arrays
    t = len(PROMPT)
    n_layers, heads = lm.n_layers, lm.model.config.num_attention_heads
    assert a["attention"].shape == (n_layers * heads, t, t) and a["attention"].dtype == np.float16
    np.testing.assert_allclose(a["attention"].astype(np.float32).sum(-1), 1.0, atol=3e-3)
    model = lm.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            own = model(_ids(lm), output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    assert lm.model.config._attn_implementation == previous  # the run restored it too
    for layer in range(n_layers):
        for head in range(heads):
            np.testing.assert_allclose(a["attention"][layer * heads + head].astype(np.float32),
                                       own[layer][0, head].numpy(), atol=1e-3)
    # Causal: nothing above the diagonal.
    assert float(np.abs(np.triu(a["attention"][0].astype(np.float32), 1)).max()) == 0.0


def test_rollout_against_a_direct_computation(lm: LanguageModel, result) -> None:
    a = result.arrays
    heads = lm.model.config.num_attention_heads
    t = len(PROMPT)
    joint = np.eye(t)
    for layer in range(lm.n_layers):
        mean = a["attention"][layer * heads:(layer + 1) * heads].astype(np.float64).mean(0)
        joint = (0.5 * mean + 0.5 * np.eye(t)) @ joint
        np.testing.assert_allclose(a["rollout"][layer].astype(np.float64), joint, atol=2e-3)
    np.testing.assert_allclose(a["rollout"][-1].astype(np.float32).sum(-1), 1.0, atol=5e-3)


def test_thumbnails_pool_rows_to_one() -> None:
    rng = np.random.default_rng(0)
    pattern = rng.random((70, 70))
    pattern /= pattern.sum(-1, keepdims=True)
    pooled = pool_pattern(pattern, 32)
    assert pooled.shape == (32, 32)
    np.testing.assert_allclose(pooled.sum(-1), 1.0, rtol=1e-5)
    sheet = thumbnails([torch.from_numpy(pattern)[None].float()], 32)
    assert sheet.shape == (1, 32, 32) and sheet.dtype == np.uint8 and sheet.max() == 255


def test_logit_lens_last_point_equals_the_models_logits(lm: LanguageModel, result) -> None:
    a, s = result.arrays, result.summary
    with torch.no_grad():
        logits = lm.model(_ids(lm)).logits[0].float()
    probs = torch.softmax(logits, -1)
    first = s["lens_decoded_from"]
    t = logits.shape[0]
    assert first == max(0, t - 32)  # the default window: the last 32 positions
    assert a["lens_ids"][-1, first:].tolist() == logits.argmax(-1)[first:].tolist()
    np.testing.assert_allclose(a["lens_probs"][-1, first:], probs.max(-1).values.numpy()[first:], rtol=1e-4,
                               atol=1e-6)
    assert (a["lens_ids"][:, :first] == -1).all() and np.isnan(a["lens_probs"][:, :first]).all()
    assert s["lens_labels"][-1] == f"{lm.n_layers - 1}: after MLP" and len(s["lens_labels"]) == 2 * lm.n_layers + 1
    assert a["lens_final_rank"][-1] == 0 and a["lens_kl"][-1] == pytest.approx(0.0, abs=1e-5)
    entropy = -(probs[-1] * probs[-1].log()).sum()
    assert a["lens_entropy"][-1] == pytest.approx(float(entropy), rel=1e-4)


def test_logit_lens_every_position(lm: LanguageModel) -> None:
    """lens_positions >= T decodes every point at every position; the last point is the model's logits."""
    t = _ids(lm).shape[1]
    result = run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, ig_steps=0, vocab_sample=10,
                                       lens_positions=t), lm)
    a = result.arrays
    assert result.summary["lens_decoded_from"] == 0 and (a["lens_ids"] >= 0).all()
    with torch.no_grad():
        logits = lm.model(_ids(lm)).logits[0].float()
    assert a["lens_ids"][-1].tolist() == logits.argmax(-1).tolist()
    np.testing.assert_allclose(a["lens_probs"][-1], torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-4)
    # the embeddings point decoded directly: final norm + unembedding of the embedding rows
    with torch.no_grad():
        x = lm.adapter.token_embedding_of(lm.model)(_ids(lm))[0]
        pos = lm.adapter.position_embedding_of(lm.model)
        if pos is not None:
            x = x + pos(torch.arange(t))
        z = lm.adapter.unembedding_of(lm.model)(lm.adapter.final_norm_of(lm.model)(x)).float()
    assert a["lens_ids"][0].tolist() == z.argmax(-1).tolist()


def test_saliency_against_autograd(lm: LanguageModel, result) -> None:
    a, s = result.arrays, result.summary
    ids = _ids(lm)
    embed = lm.adapter.token_embedding_of(lm.model)
    x = embed(ids).detach().requires_grad_(True)
    with torch.enable_grad():
        score = lm.model(inputs_embeds=x).logits[0, -1, s["saliency"]["target"]]
        score.backward()
    np.testing.assert_allclose(a["saliency_grad_norm"], x.grad[0].norm(dim=-1).numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a["saliency_grad_input"], (x.grad[0] * x[0]).sum(-1).detach().numpy(),
                               rtol=1e-4, atol=1e-7)
    assert s["saliency"]["target"] == s["saliency"]["predicted"]  # no target given: the prediction


def test_saliency_against_finite_differences(tiny_gpt2: LanguageModel) -> None:
    lm = tiny_gpt2
    ids = lm.tokenizer("abcdef")["input_ids"]
    lm.model.double()
    try:
        tr = trace(lm, ids, target=5, foil=7)
        x = lm.adapter.token_embedding_of(lm.model)(torch.tensor([ids])).detach()
        eps = 1e-6
        for t, d in [(0, 3), (2, 10), (5, 63)]:
            plus, minus = x.clone(), x.clone()
            plus[0, t, d] += eps
            minus[0, t, d] -= eps
            with torch.no_grad():
                f = [lm.model(inputs_embeds=e).logits[0, -1] for e in (plus, minus)]
            numeric = float(((f[0][5] - f[0][7]) - (f[1][5] - f[1][7])) / (2 * eps))
            assert float(tr.gradient[t, d]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    finally:
        lm.model.float()


def test_activations_and_top_neurons(lm: LanguageModel, result) -> None:
    a = result.arrays
    t = len(PROMPT)
    with torch.no_grad():
        hidden = lm.model(_ids(lm), output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is block l's output for l < L - 1 (the last one has the final norm applied).
    for layer in range(lm.n_layers - 1):
        np.testing.assert_allclose(a["resid_norm"][layer], hidden[layer + 1][0].norm(dim=-1).numpy(), rtol=1e-4)
    assert a["neuron_ids"].shape == (lm.n_layers, t, 8)
    magnitudes = np.abs(a["neuron_values"])
    assert np.all(np.diff(magnitudes, axis=-1) <= 1e-6)


def test_embeddings_and_neighbours(lm: LanguageModel, result) -> None:
    a, s = result.arrays, result.summary
    rows = s["embedding"]["prompt_rows"]
    distinct = list(dict.fromkeys(lm.tokenizer(PROMPT)["input_ids"]))
    assert a["embed_ids"][:rows].tolist() == distinct
    assert len(set(a["embed_ids"].tolist())) == a["embed_ids"].size == rows + 100
    assert a["embed_2d"].shape == (rows + 100, 2) and a["embed_3d"].shape == (rows + 100, 3)
    np.testing.assert_allclose(a["embed_2d"], a["embed_3d"][:, :2])
    weight = lm.adapter.token_embedding_of(lm.model).weight.detach()
    unit = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # the pad row may be zero
    cos = unit[distinct[0]] @ unit.T
    cos[distinct[0]] = -2
    top = cos.topk(8)
    assert a["neighbour_ids"][0].tolist() == top.indices.tolist()
    np.testing.assert_allclose(a["neighbour_cos"][0], top.values.numpy(), rtol=1e-5)
    assert all(str(i) in s["vocab"] for i in a["neighbour_ids"].ravel())


def test_integrated_gradients_completeness(lm: LanguageModel) -> None:
    # The midpoint rule's error falls like 1/m^2 along the smooth path from the mean embedding;
    # at 64 steps the gap is measured below 1e-4 of |S(x) - S(x')| on these models, 1% is ample.
    result = run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, ig_steps=64, ig_batch=16,
                                       vocab_sample=0), lm)
    sal = result.summary["saliency"]
    difference = abs(sal["ig_score"] - sal["ig_baseline_score"])
    assert difference > 1e-3
    assert sal["ig_completeness_error"] <= 0.01 * difference
    assert result.arrays["saliency_ig"].shape == (len(PROMPT),)
    assert sal["ig_score"] == pytest.approx(sal["score"], rel=1e-4, abs=1e-6)


def test_integrated_gradients_keep_first(lm: LanguageModel) -> None:
    """keep_first (the default) holds position 0 at its own embedding: it gets no attribution, and
    completeness still holds against the new baseline; without it position 0 is attributed."""
    ids = _ids(lm)[0].tolist()
    kept = integrated_gradients(lm, ids, 5, None, 64, 16)
    moved = integrated_gradients(lm, ids, 5, None, 64, 16, keep_first=False)
    assert kept.attributions[0] == 0.0 and moved.attributions[0] != 0.0
    assert kept.baseline_score != pytest.approx(moved.baseline_score)
    assert kept.score == pytest.approx(moved.score)
    for ig in (kept, moved):
        assert ig.completeness_error <= 0.01 * abs(ig.score - ig.baseline_score)


def test_target_foil_and_bounds(lm: LanguageModel) -> None:
    result = run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, target="x", foil="y", ig_steps=0,
                                       vocab_sample=0), lm)
    sal = result.summary["saliency"]
    x_id, y_id = lm.tokenizer.convert_tokens_to_ids(["x", "y"])
    assert (sal["target"], sal["foil"]) == (x_id, y_id) and "saliency_ig" not in result.arrays
    with torch.no_grad():
        logits = lm.model(_ids(lm)).logits[0, -1]
    assert sal["score"] == pytest.approx(float(logits[x_id] - logits[y_id]), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="exactly one token"):
        run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, target="xy"), lm)
    with pytest.raises(ValueError, match="limit is 5"):
        run_anatomy(AnatomyParams(model=lm.name, prompt=PROMPT, max_tokens=5), lm)


def test_progress_and_cancel(tiny_gpt2: LanguageModel) -> None:
    seen: list[float] = []

    def progress(fraction: float, stage: str) -> None:
        seen.append(fraction)
        if "integrated" in stage and fraction > 0.7:
            raise Cancelled

    with pytest.raises(Cancelled):
        run_anatomy(AnatomyParams(model="m", prompt=PROMPT, ig_steps=16, ig_batch=4), tiny_gpt2, progress)
    assert seen == sorted(seen) and seen[0] == 0.0
    assert tiny_gpt2.model.config._attn_implementation != "eager"
