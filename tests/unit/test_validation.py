"""Geometry params: static bounds always, the portal's limits and catalogue from the context."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from latent_atlas.analyses.geometry import GeometryParams
from latent_atlas.analyses.validation import token_counter
from latent_atlas.lm import LanguageModel
from latent_atlas.settings import Limits


def _errors(raw: dict[str, Any], context: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ValidationError) as info:
        GeometryParams.model_validate(raw, context=context)
    return [error["msg"] for error in info.value.errors()]


def test_defaults_without_context() -> None:
    params = GeometryParams.model_validate({"model": "anything", "prompts": ["hi"]})
    assert (params.max_tokens, params.average, params.reduction, params.dims) == (32, "none", "pca", 3)
    # Unit-normalised and fitted without position 0 by default: raw states put 99.6 % on PC1.
    assert (params.batch_size, params.seed, params.unit_normalise, params.exclude_position0) == (8, 0, True, True)


def test_empty_prompt_names_its_index() -> None:
    assert _errors({"model": "m", "prompts": ["ok", "  \n\t"]}) == ["prompt 2 is empty"]


def test_no_prompts() -> None:
    messages = _errors({"model": "m", "prompts": []})
    assert len(messages) == 1 and "at least 1 item" in messages[0]


def test_too_many_prompts_and_long_prompt_with_limits() -> None:
    limits = Limits(max_prompts=2, max_prompt_chars=10)
    assert _errors({"model": "m", "prompts": ["a", "b", "c"]}, {"limits": limits}) == [
        "too many prompts: 3 given; the limit is 2"
    ]
    assert _errors({"model": "m", "prompts": ["short", "x" * 11]}, {"limits": limits}) == [
        "prompt 2 has 11 characters; the limit is 10"
    ]
    # Without the context the same params are fine (notebook use).
    GeometryParams.model_validate({"model": "m", "prompts": ["a", "b", "c"]})


def test_max_tokens_limit() -> None:
    limits = Limits(max_tokens_per_prompt=16)
    assert _errors({"model": "m", "prompts": ["a"], "max_tokens": 17}, {"limits": limits}) == [
        "max_tokens is 17; this portal allows at most 16 tokens per prompt"
    ]
    assert _errors({"model": "m", "prompts": ["a"], "max_tokens": 5000}) == [
        "Input should be less than or equal to 4096"
    ]


def test_token_limit_with_counter(tiny_gpt2: LanguageModel) -> None:
    prompts = ["short", "fine too", "this one has far too many tokens"]
    context = {"count_tokens": token_counter(tiny_gpt2.tokenizer)}
    assert _errors({"model": "m", "prompts": prompts, "max_tokens": 10}, context) == [
        "prompt 3 has 32 tokens; the limit is 10 (max_tokens)"
    ]
    GeometryParams.model_validate({"model": "m", "prompts": prompts, "max_tokens": 32}, context=context)


def test_model_not_in_catalogue() -> None:
    context = {"models": {"smollm2-135m", "gpt2"}}
    assert _errors({"model": "llama-70b", "prompts": ["hi"]}, context) == [
        "model 'llama-70b' is not in this portal's catalogue (allowed: gpt2, smollm2-135m)"
    ]
    GeometryParams.model_validate({"model": "gpt2", "prompts": ["hi"]}, context=context)


def test_extra_field_and_literals() -> None:
    assert any("Extra inputs are not permitted" in m for m in _errors({"model": "m", "prompts": ["a"], "colour": 1}))
    assert _errors({"model": "m", "prompts": ["a"], "dims": 4}) == ["Input should be 2 or 3"]
    assert len(_errors({"model": "m", "prompts": ["a"], "reduction": "tsne"})) == 1
    assert len(_errors({"model": "m", "prompts": ["a"], "average": "tokens"})) == 1
    assert len(_errors({"model": "", "prompts": ["a"]})) == 1
    assert len(_errors({"model": "m" * 201, "prompts": ["a"]})) == 1
    assert len(_errors({"model": "m", "prompts": ["a"], "batch_size": 0})) == 1
    assert len(_errors({"model": "m", "prompts": ["a"], "seed": -1})) == 1
