"""Model summary on the meta device: counts equal the loaded model's, and a GPT-2 XL config needs no weights."""

from __future__ import annotations

import pytest
from transformers import GPT2Config

from latent_atlas.analyses.anatomy import config_fields, diagram, parameter_tree
from latent_atlas.lm import LanguageModel


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _check_sums(node: dict) -> None:
    own = sum(_numel(shape) for shape in node["params"].values())
    assert node["count"] == own + sum(child["count"] for child in node["children"])
    for child in node["children"]:
        _check_sums(child)


def _numel(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def test_meta_counts_equal_the_loaded_model(lm: LanguageModel) -> None:
    tree = parameter_tree(lm.model.config)
    assert tree["count"] == sum(p.numel() for p in lm.model.parameters())
    assert tree["share"] == 1.0
    _check_sums(tree)
    # Per block, the meta tree's count equals the loaded block's.
    blocks = lm.adapter.blocks_of(lm.model)
    parts = diagram(tree, lm.model.config, lm.adapter)
    block_parts = [p for p in parts if p["kind"] == "block"]
    assert len(block_parts) == len(blocks)
    for part, block in zip(block_parts, blocks, strict=True):
        assert part["count"] == sum(p.numel() for p in block.parameters())
        assert part["attention"] == sum(p.numel() for p in lm.adapter.attention_of(block).parameters())
        assert part["mlp"] == sum(p.numel() for p in lm.adapter.mlp_of(block).parameters())
    assert parts[0]["kind"] == "embedding" and parts[-1]["kind"] == "unembedding"
    assert parts[-1]["tied"] is bool(lm.model.config.tie_word_embeddings)


def test_config_fields(tiny_llama: LanguageModel, tiny_gpt2: LanguageModel) -> None:
    llama = config_fields(tiny_llama.model.config)
    assert llama["key/value heads"] == 2 and llama["attention heads"] == 4
    assert llama["positional scheme"] == "rotary" and llama["norm"] == "RMSNorm"
    gpt2 = config_fields(tiny_gpt2.model.config)
    assert gpt2["MLP size"] == 4 * 64 and gpt2["positional scheme"] == "learned absolute"
    assert gpt2["tied embeddings"] is True


def test_gpt2_xl_sized_config_without_weights() -> None:
    config = GPT2Config(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024)
    tree = parameter_tree(config)
    # GPT-2 XL has 1,557,611,200 parameters (lm_head tied to wte, counted once).
    assert tree["count"] == 1_557_611_200
    parts = diagram(tree, config)
    assert sum(p["kind"] == "block" for p in parts) == 48
    assert parts[0]["shapes"]["weight"] == [50257, 1600]
