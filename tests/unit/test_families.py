"""Every supported family on a tiny random model: points, injection, fast path, geometry.

Each family's tiny model (``tiny_models.build_tiny_model``) carries what sets
it apart (sliding windows, grouped-query attention, fused projections, Gemma's
(1 + w) norms and post-norms, Gemma 2's logit soft-cap, GPT-NeoX's parallel
blocks), so each test below would fail for a family whose adapter or
injection path misses it. Prompts are longer than the sliding window (4).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.lm import LanguageModel, capture_points, check_hook_points, load_model
from latent_atlas.lm.errors import UnsupportedArchitecture
from latent_atlas.lm.hooks import HookPointMismatch
from latent_atlas.lm.inject import (
    affine_readout,
    compute_context,
    readout,
    resid_from_layer,
    run_from_layer,
    sliding_windows,
)
from latent_atlas.lm.lens import logit_lens
from tiny_models import FAMILIES, WINDOW, build_tiny_model

PROMPTS = ["The quick brown fox jumps", "over the lazy dog", "a b"]
CONTEXT = "a context longer than the window"


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    family = str(request.param)
    path: Path = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    return load_model(str(path), name=f"tiny-{family}")


def _own_logits(lm: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=input_ids).logits[:, -1].float()


def _state(capture: object, layer: int, n_layers: int) -> torch.Tensor:
    """The residual entering block ``layer`` (``layer == L``: the last block's output)."""
    return capture.resid_pre(layer) if layer < n_layers else capture.points[-1][3]  # type: ignore[attr-defined]


def test_family_is_recognised(lm: LanguageModel) -> None:
    assert lm.adapter.family == lm.name.removeprefix("tiny-")
    assert lm.n_layers == 3 and lm.d_model == 64


def test_four_points_on_every_layer_with_padding(lm: LanguageModel) -> None:
    batch = lm.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    worst = check_hook_points(lm, batch["input_ids"], batch["attention_mask"])
    assert worst < 1e-3
    capture = capture_points(lm, batch["input_ids"], batch["attention_mask"])
    blocks = lm.adapter.blocks_of(lm.model)
    for layer, (attn, mid, _mlp, _post) in enumerate(capture.points):
        if lm.adapter.is_parallel(blocks[layer]):  # the derived point, by definition
            torch.testing.assert_close(mid, capture.resid_pre(layer) + attn)


def test_the_check_catches_a_wrong_point(lm: LanguageModel) -> None:
    """Taking the attention's own output where a norm (or nothing) follows it must fail."""
    ids = torch.tensor([lm.tokenizer(PROMPTS[0])["input_ids"]])
    if lm.adapter.attention_module is not None:  # Gemma 2/3: the point is the post-attention norm
        wrong = dataclasses.replace(lm.adapter, attention=lm.adapter.attention_module, attention_module=None)
    else:  # the MLP output taken as the attention output
        wrong = dataclasses.replace(lm.adapter, attention=lm.adapter.mlp)
    with pytest.raises(HookPointMismatch):
        check_hook_points(dataclasses.replace(lm, adapter=wrong), ids)


def test_parallel_block_refuses_a_resid_mid_module(lm: LanguageModel) -> None:
    block = lm.adapter.blocks_of(lm.model)[0]
    if lm.adapter.is_parallel(block):
        with pytest.raises(UnsupportedArchitecture, match="resid_mid"):
            lm.adapter.post_attention_norm_of(block)
    else:
        assert lm.adapter.post_attention_norm_of(block) is not None


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_injection_without_context_is_the_models_forward(lm: LanguageModel, layer: int) -> None:
    tokens = torch.tensor([[40], [97], [120], [255]])
    capture = capture_points(lm, tokens)
    expected = _own_logits(lm, tokens)
    state = _state(capture, layer, lm.n_layers)[:, 0]
    logits = run_from_layer(lm, layer, state).float()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    # The single-position shortcut equals calling the blocks themselves.
    fast = resid_from_layer(lm, layer, state)
    blocks = resid_from_layer(lm, layer, state, shortcut=False)
    torch.testing.assert_close(fast, blocks, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_injection_with_context_is_the_models_forward(lm: LanguageModel, layer: int) -> None:
    ids = torch.tensor([lm.tokenizer(CONTEXT)["input_ids"]])
    assert ids.shape[1] > 2 * WINDOW  # sliding layers must drop part of the prefix
    capture = capture_points(lm, ids)
    expected = _own_logits(lm, ids)
    context = compute_context(lm, ids[0].tolist())
    assert context.prefix is not None and context.prefix.length == ids.shape[1] - 1
    rows = _state(capture, layer, lm.n_layers)[:, -1].expand(2, -1)
    logits = run_from_layer(lm, layer, rows, prefix=context.prefix).float()
    torch.testing.assert_close(logits, expected.expand(2, -1), rtol=1e-4, atol=1e-5)
    if layer < lm.n_layers:  # the context is not silently ignored: without it the answer differs
        alone = run_from_layer(lm, layer, rows).float()
        assert float((alone - logits).abs().max()) > 1e-3


def test_sliding_windows_follow_the_config(lm: LanguageModel) -> None:
    windows = sliding_windows(lm)
    expected = {
        "mistral": (WINDOW,) * 3, "qwen2": (None, WINDOW, WINDOW), "qwen3": (None, None, WINDOW),
        "gemma2": (WINDOW, None, WINDOW), "gemma3": (WINDOW, None, WINDOW),
        "gemma3_multimodal": (WINDOW, None, WINDOW),
    }
    assert windows == expected.get(lm.adapter.family, (None,) * 3)


def test_fast_path_equals_the_direct_computation(lm: LanguageModel) -> None:
    params = GridParams(model=lm.name, layer=lm.n_layers, size=12, spacing=0.7, center=(0.3, -0.2),
                        plane="random_projection", seed=3, top_k=5)
    result = run_grid(params, lm)
    assert result.summary["fast_path"] is True, result.summary["fast_path_note"]
    arrays = result.arrays
    xs, ys = (torch.from_numpy(arrays[a]).double() for a in ("xs", "ys"))
    c, u, v = (torch.from_numpy(arrays[a]).double() for a in ("plane_center", "plane_u", "plane_v"))
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    logits = readout(lm, (c + xx.reshape(-1, 1) * u + yy.reshape(-1, 1) * v).float()).float()
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = probs.topk(5, dim=-1)
    entropy = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)
    n = xs.shape[0]
    defined = (top_p[:, 0] - top_p[:, 1] > 1e-6).reshape(n, n).numpy()
    assert defined.mean() > 0.9
    assert np.array_equal(arrays["top_ids"][..., 0][defined], top_i[:, 0].reshape(n, n).numpy()[defined])
    np.testing.assert_allclose(arrays["top_probs"], top_p.reshape(n, n, 5).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(arrays["entropy"], entropy.reshape(n, n).numpy(), atol=1e-4, rtol=1e-5)


def test_readout_and_lens_are_the_models_logits(lm: LanguageModel) -> None:
    """Final norm, unembedding and (Gemma 2) the soft-cap: exactly the model's logits."""
    ids = torch.tensor([lm.tokenizer(PROMPTS[0])["input_ids"]])
    capture = capture_points(lm, ids)
    last = capture.points[-1][3][0]
    with torch.inference_mode():
        expected = lm.model(input_ids=ids).logits[0].float()
    torch.testing.assert_close(readout(lm, last).float(), expected, rtol=1e-4, atol=1e-5)
    top_ids, top_probs = logit_lens(lm, last, k=3)
    want_p, want_i = torch.softmax(expected, dim=-1).topk(3, dim=-1)
    assert torch.equal(top_ids[:, 0], want_i[:, 0])
    torch.testing.assert_close(top_probs, want_p, rtol=1e-4, atol=1e-6)
    cap = lm.adapter.softcap_of(lm.model)
    if cap is not None:  # the cap changes the probabilities (top-1 stays)
        uncapped = lm.adapter.unembedding_of(lm.model)(lm.adapter.final_norm_of(lm.model)(last)).float()
        assert float(uncapped.abs().max()) > cap / 2
        assert float((torch.softmax(uncapped, -1) - torch.softmax(expected, -1)).abs().max()) > 1e-3


def test_fast_path_refuses_a_norm_it_does_not_compute(lm: LanguageModel) -> None:
    """Declaring the wrong RMSNorm gain offset (w vs 1 + w) makes the fast path step aside."""
    if lm.adapter.family in ("gpt2", "gpt_neox"):  # LayerNorm: no offset
        return
    gen = torch.Generator().manual_seed(5)
    c, u, v = (torch.randn(lm.d_model, generator=gen, dtype=torch.float64) for _ in range(3))
    assert affine_readout(lm, c, u, v) is not None
    wrong = dataclasses.replace(lm.adapter, norm_weight_offset=1.0 - lm.adapter.norm_weight_offset)
    assert affine_readout(dataclasses.replace(lm, adapter=wrong), c, u, v) is None


def test_geometry_run(lm: LanguageModel) -> None:
    params = GeometryParams(model=lm.name, prompts=PROMPTS, batch_size=2, states_dtype="float32",
                            unit_normalise=False, exclude_position0=False, dims=2)
    result = run_geometry(params, lm)
    assert result.summary["hook_check_max_abs_error"] < 1e-3
    coords = result.arrays["coords"]
    assert coords.shape[-1] == 2 and np.isfinite(coords).all()
    n_tokens = sum(len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert result.arrays["states"].shape == (lm.n_layers * 4 * n_tokens, lm.d_model)


def test_a_block_without_the_cache_keyword_is_refused(lm: LanguageModel) -> None:
    """A keyword the block does not declare would vanish into **kwargs: refuse instead."""
    ids = lm.tokenizer(CONTEXT)["input_ids"]
    context = compute_context(lm, ids)
    wrong = dataclasses.replace(lm.adapter, cache_kwarg="past_key_value_renamed")
    rows = torch.zeros(1, lm.d_model)
    with pytest.raises(UnsupportedArchitecture, match="silently"):
        run_from_layer(dataclasses.replace(lm, adapter=wrong), 0, rows, prefix=context.prefix)


def test_sequential_gpt_neox(tmp_path: Path) -> None:
    """GPT-NeoX without the parallel residual: resid_mid is a real point (the MLP norm's input)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tiny_models import VOCAB_SIZE, build_tiny_tokenizer

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=False, tie_word_embeddings=False,
    ))
    model.save_pretrained(str(tmp_path))
    build_tiny_tokenizer().save_pretrained(str(tmp_path))
    lm = load_model(str(tmp_path), name="neox-sequential")
    block = lm.adapter.blocks_of(lm.model)[0]
    assert not lm.adapter.is_parallel(block)
    assert lm.adapter.post_attention_norm_of(block) is block.post_attention_layernorm
    ids = torch.tensor([lm.tokenizer(CONTEXT)["input_ids"]])
    assert check_hook_points(lm, ids) < 1e-3
    capture = capture_points(lm, ids)
    expected = _own_logits(lm, ids)
    context = compute_context(lm, ids[0].tolist())
    for layer in (0, 1, 2):
        logits = run_from_layer(lm, layer, _state(capture, layer, 2)[:, -1], prefix=context.prefix).float()
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        single = capture_points(lm, ids[:, :1])
        state = _state(single, layer, 2)[:, 0]
        torch.testing.assert_close(resid_from_layer(lm, layer, state),
                                   resid_from_layer(lm, layer, state, shortcut=False), rtol=1e-5, atol=1e-5)
