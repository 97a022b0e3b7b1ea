"""The ``sae`` run on a tiny model with a small random sae-lens SAE: stop-at-layer, the contract
arrays, the CSC against a dense recomputation, a short corpus, and params checks before queueing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from latent_atlas.analyses import get_kind
from latent_atlas.analyses.sae.params import PORTAL_MAX_TOKENS, SaeParams
from latent_atlas.analyses.sae.run import run_sae
from latent_atlas.analyses.sae.source import decoder_rows, sae_hook
from latent_atlas.settings import Limits
from tiny_models import D_MODEL, N_LAYERS

D_SAE = 96
TEXT = ["The quick brown fox jumps over the lazy dog.", "Monday, Tuesday, Wednesday and Thursday.",
        "One two three four five six seven eight nine ten.", "x" * 300]


def random_sae(kind: str = "standard", layer: int = 1, d_in: int = D_MODEL, seed: int = 0):
    meta = SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny")
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=6, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=meta))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        if kind == "standard":
            sae.b_enc.fill_(-0.4)  # sparse: a few latents per token
    return sae.eval()


def params(**overrides) -> SaeParams:
    raw = {"model": "tiny", "sae": {"kind": "disk", "path": "unused"},
           "corpus": {"kind": "prompts", "prompts": TEXT}, "n_tokens": 10_000, "context_len": 64,
           "top_k": 5, "window": 3, "interval_bins": 4, "interval_per_bin": 2, "hist_bins": 8,
           "edges_k": 4, "batch_tokens": 100, "umap_neighbors": 5}
    raw.update(overrides)
    return SaeParams.model_validate(raw)


def dense_reference(lm, sae, p: SaeParams, token_id: np.ndarray, token_doc: np.ndarray,
                    token_pos: np.ndarray) -> np.ndarray:
    """(T, d_sae) activations from a FULL forward pass (output_hidden_states), position by sequence."""
    hook = sae_hook(sae)
    out = np.zeros((token_id.size, D_SAE), np.float32)
    for doc in np.unique(token_doc):
        where = np.flatnonzero(token_doc == doc)
        ids = torch.as_tensor(token_id[where], dtype=torch.long)[None]
        with torch.no_grad():
            hidden = lm.model(ids, output_hidden_states=True).hidden_states[hook.layer + 1][0]
            acts = sae.encode(hidden).numpy()
        keep = token_pos[where] >= p.skip_positions
        out[where[keep]] = acts[keep]
    return out


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_run_matches_a_dense_recomputation(tiny_gpt2, kind: str) -> None:
    sae = random_sae(kind)
    p = params()
    result = run_sae(p, tiny_gpt2, sae_loader=lambda source, device: sae)
    a, s = result.arrays, result.summary
    T = a["token_id"].size
    assert s["n_tokens"] == T == sum(min(len(t.encode()), 64) for t in TEXT)
    dense = dense_reference(tiny_gpt2, sae, p, a["token_id"], a["token_doc"], a["token_pos"])
    # CSC == the dense matrix, latent-major, tokens ascending within a latent
    assert a["lat_ptr"].shape == (D_SAE + 1,) and a["lat_ptr"][-1] == a["lat_token"].size
    rebuilt = np.zeros_like(dense)
    for lat in range(D_SAE):
        lo, hi = a["lat_ptr"][lat], a["lat_ptr"][lat + 1]
        toks = a["lat_token"][lo:hi]
        assert (np.diff(toks) > 0).all()
        rebuilt[toks, lat] = a["lat_value"][lo:hi]
    np.testing.assert_allclose(rebuilt, dense, rtol=1e-4, atol=1e-5)
    assert ((rebuilt != 0) == (dense != 0)).mean() > 0.999  # firing decided the same way
    np.testing.assert_array_equal(a["fire_count"], np.count_nonzero(rebuilt, axis=0))
    np.testing.assert_allclose(a["max_act"], rebuilt.max(0), rtol=1e-6)
    encoded = np.count_nonzero(a["token_pos"] >= p.skip_positions)
    assert s["tokens_encoded"] == encoded
    np.testing.assert_allclose(a["density"], np.count_nonzero(rebuilt, axis=0) / encoded, rtol=1e-6)
    # top examples are the largest entries of each latent's column
    for lat in np.flatnonzero(a["fire_count"])[:20]:
        k = min(5, a["fire_count"][lat])
        np.testing.assert_allclose(a["top_value"][lat, :k], np.sort(rebuilt[:, lat])[::-1][:k], rtol=1e-6)
    contract = {
        "fire_count": ((D_SAE,), np.int64), "density": ((D_SAE,), np.float32),
        "max_act": ((D_SAE,), np.float32), "mean_act": ((D_SAE,), np.float32),
        "hist_edges": ((9,), np.float32), "hist_counts": ((D_SAE, 8), np.int32),
        "top_value": ((D_SAE, 5), np.float32), "top_token": ((D_SAE, 5), np.int64),
        "interval_value": ((D_SAE, 8), np.float32), "interval_token": ((D_SAE, 8), np.int64),
        "token_id": ((T,), np.int32), "token_doc": ((T,), np.int32), "token_pos": ((T,), np.int32),
        "lat_ptr": ((D_SAE + 1,), np.int64), "lat_token": ((a["lat_ptr"][-1],), np.int32),
        "lat_value": ((a["lat_ptr"][-1],), np.float32), "decoder": ((D_SAE, D_MODEL), np.float32),
        "umap": ((D_SAE, 2), np.float32), "cluster_spectral": ((D_SAE,), np.int32),
        "cluster_components": ((D_SAE,), np.int32),
        "logit_top_id": ((D_SAE, 10), np.int32), "logit_bottom_id": ((D_SAE, 10), np.int32),
        "logit_top_val": ((D_SAE, 10), np.float32), "logit_bottom_val": ((D_SAE, 10), np.float32),
    }
    for name in ("cosine", "jaccard", "coact"):
        contract[f"edge_{name}_idx"] = ((D_SAE, 4), np.int32)
        contract[f"edge_{name}_val"] = ((D_SAE, 4), np.float32)
    assert set(a) == set(contract)
    for name, (shape, dtype) in contract.items():
        assert a[name].shape == shape and a[name].dtype == dtype, name
    np.testing.assert_array_equal(a["decoder"], decoder_rows(sae))
    assert len(s["labels"]) == D_SAE and s["hook_layer"] == 1 and s["d_in"] == D_MODEL
    assert all(str(int(t)) in s["vocab"] for t in np.unique(a["token_id"]))
    assert "4 prompts" in s["corpus_note"] and "fewer than the 10,000 asked" in s["corpus_note"]


def test_the_model_stops_at_the_hooked_layer(tiny_gpt2) -> None:
    sae = random_sae(layer=0)
    blocks = tiny_gpt2.adapter.blocks_of(tiny_gpt2.model)
    calls = [0] * len(blocks)
    handles = [block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(blocks)]
    head = tiny_gpt2.adapter.unembedding_of(tiny_gpt2.model)
    norm = tiny_gpt2.adapter.final_norm_of(tiny_gpt2.model)
    late = [0]
    handles += [m.register_forward_hook(lambda m, a, o: late.__setitem__(0, late[0] + 1)) for m in (head, norm)]
    try:
        result = run_sae(params(), tiny_gpt2, sae_loader=lambda source, device: sae)
    finally:
        for handle in handles:
            handle.remove()
    assert calls[0] > 0 and calls[1:] == [0] * (N_LAYERS - 1) and late == [0]
    assert result.summary["n_tokens"] > 0


def test_token_budget_and_short_corpus(tiny_llama) -> None:
    sae = random_sae()
    result = run_sae(params(n_tokens=50, corpus={"kind": "tokens", "token_ids": [list(range(1, 40))] * 3,
                                                 "info": {"source": "upload.txt", "format": "lines",
                                                          "documents": 3, "sequences": 3,
                                                          "tokens_per_sequence": 39}}),
                     tiny_llama, sae_loader=lambda source, device: sae)
    a = result.arrays
    assert a["token_id"].size == 50 and result.summary["n_tokens"] == 50
    assert a["token_doc"].tolist() == [0] * 39 + [1] * 11 and a["token_pos"][39] == 0
    assert "50 tokens in 2 sequences" in result.summary["corpus_note"]


def test_registered_on_the_gpu_queue() -> None:
    kind = get_kind("sae")
    assert kind.queue == "gpu" and kind.params is SaeParams and kind.reads_runs


def save(tmp_path: Path, sae, name: str = "mine") -> Path:
    directory = tmp_path / "saes" / name
    sae.save_model(str(directory))
    return directory


@pytest.fixture()
def portal(tmp_path, monkeypatch, tiny_gpt2_dir):
    """A settings object whose data dir holds SAEs, and whose catalogue has the tiny GPT-2."""
    from latent_atlas import settings as settings_module

    monkeypatch.setenv("ATLAS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATLAS_MODELS", json.dumps({"tiny": {"source": str(tiny_gpt2_dir)},
                                                   "other": {"source": str(tiny_gpt2_dir)}}))
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "tiny")
    settings_module.get_settings.cache_clear()
    yield tmp_path
    settings_module.get_settings.cache_clear()


def validate(raw: dict, limits: Limits | None = None, **ctx):
    context = {"models": {"tiny", "other"}, "limits": limits or Limits(), **ctx}
    return SaeParams.model_validate(raw, context=context)


def raw_params(**overrides) -> dict:
    raw = {"model": "tiny", "sae": {"kind": "disk", "path": "mine"},
           "corpus": {"kind": "prompts", "prompts": ["hello"]}, "n_tokens": 1000}
    raw.update(overrides)
    return raw


def test_checks_before_queueing(portal: Path) -> None:
    save(portal, random_sae(layer=1))
    save(portal, random_sae(layer=7), "deep")
    save(portal, random_sae(d_in=32), "narrow")
    assert validate(raw_params()).sae.path == "mine"
    cases = {
        "hooks layer 7 but model tiny has 3 layers": raw_params(sae={"kind": "disk", "path": "deep"}),
        "reads vectors of size 32 but model tiny has hidden size 64": raw_params(
            sae={"kind": "disk", "path": "narrow"}),
        "does not exist": raw_params(sae={"kind": "disk", "path": "nothing-here"}),
        "must lie under": raw_params(sae={"kind": "disk", "path": "/etc"}),
        "no-such-sae": raw_params(sae={"kind": "catalogue", "name": "no-such-sae"}),
        f"at most {PORTAL_MAX_TOKENS:,}".replace(",", ""): raw_params(n_tokens=PORTAL_MAX_TOKENS + 1),
        "not in this portal's catalogue": raw_params(model="gpt-17"),
    }
    for expected, raw in cases.items():
        with pytest.raises(ValidationError) as info:
            validate(raw)
        assert expected in str(info.value).replace(",", ""), (expected, str(info.value))
    # the portal's own limit, when its settings have one
    with pytest.raises(ValidationError, match="at most 500 tokens"):
        validate(raw_params(), Limits(max_sae_tokens=500))
    assert Limits().max_sae_tokens == PORTAL_MAX_TOKENS


@pytest.mark.parametrize("bad", [
    {"top_k": 101}, {"top_k": 0}, {"n_tokens": 0}, {"n_tokens": 10**9}, {"context_len": 1},
    {"interval_bins": 21}, {"edges_k": 65}, {"skip_positions": 128}, {"top_k": "5"}, {"cofire": 1},
    {"corpus": {"kind": "tokens", "token_ids": [[1, -2]], "info": {"source": "f", "format": "lines",
                "documents": 1, "sequences": 1, "tokens_per_sequence": 2}}},
    {"corpus": {"kind": "hub", "dataset": "../etc"}}, {"corpus": {"kind": "nope"}},
    {"corpus": {"kind": "prompts", "prompts": ["  "]}}, {"extra": 1},
])
def test_static_bounds(bad: dict) -> None:
    raw = {"model": "tiny", "sae": {"kind": "disk", "path": "x"}, "corpus": {"kind": "demo"}, **bad}
    with pytest.raises(ValidationError):
        SaeParams.model_validate_json(json.dumps(raw), strict=True)
