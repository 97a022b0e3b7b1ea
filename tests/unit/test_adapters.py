"""Architecture adapters pick the right modules; unknown families fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from latent_atlas.lm import (
    ADAPTERS,
    LanguageModel,
    ModelLoadError,
    UnsupportedArchitecture,
    adapter_for,
    load_model,
)
from latent_atlas.lm.adapters import GPT2, LLAMA
from tiny_models import FAMILIES


def test_gpt2_modules(tiny_gpt2: LanguageModel) -> None:
    model, adapter = tiny_gpt2.model, tiny_gpt2.adapter
    assert adapter is GPT2
    blocks = adapter.blocks_of(model)
    assert blocks == list(model.transformer.h)
    for block in blocks:
        assert adapter.attention_of(block) is block.attn
        assert adapter.post_attention_norm_of(block) is block.ln_2
        assert adapter.mlp_of(block) is block.mlp
    assert adapter.final_norm_of(model) is model.transformer.ln_f
    assert adapter.unembedding_of(model) is model.lm_head
    assert adapter.token_embedding_of(model) is model.transformer.wte
    assert adapter.position_embedding_of(model) is model.transformer.wpe


def test_llama_modules(tiny_llama: LanguageModel) -> None:
    model, adapter = tiny_llama.model, tiny_llama.adapter
    assert adapter is LLAMA
    blocks = adapter.blocks_of(model)
    assert blocks == list(model.model.layers)
    for block in blocks:
        assert adapter.attention_of(block) is block.self_attn
        assert adapter.post_attention_norm_of(block) is block.post_attention_layernorm
        assert adapter.mlp_of(block) is block.mlp
    assert adapter.final_norm_of(model) is model.model.norm
    assert adapter.unembedding_of(model) is model.lm_head
    assert adapter.token_embedding_of(model) is model.model.embed_tokens
    assert adapter.position_embedding_of(model) is None


def test_supported_families_are_the_tested_ones() -> None:
    assert sorted(ADAPTERS) == sorted(FAMILIES)  # each one runs in tests/unit/test_families.py


def test_adapter_for_unknown_module() -> None:
    with pytest.raises(UnsupportedArchitecture, match=r"architecture Linear is not supported \(supported: gpt2, llama, "):
        adapter_for(torch.nn.Linear(2, 2))


def test_load_unsupported_architecture(tmp_path: Path) -> None:
    config = OPTConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32,
    )
    OPTForCausalLM(config).save_pretrained(str(tmp_path))
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(str(tmp_path), name="opt")
    message = str(info.value)
    assert message.startswith("could not load model 'opt': ")
    assert "architecture OPTForCausalLM is not supported (supported: gpt2, llama, mistral" in message
    assert isinstance(info.value, ModelLoadError)
