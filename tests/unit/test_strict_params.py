"""Strict types and blank prompts in the shared validation (``latent_atlas.analyses.validation``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from latent_atlas.analyses.geometry import GeometryParams
from latent_atlas.analyses.grid import GridParams
from latent_atlas.analyses.validation import StrictBool, StrictInt, is_blank


def _messages(model, raw) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(raw)
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors()]


@pytest.mark.parametrize("prompt", ["\x00", "\x00\x01\x1f", " \x00\t\u200b\ufeff", "\u2028"])
def test_a_prompt_of_control_characters_is_empty(prompt):
    assert is_blank(prompt)
    assert _messages(GeometryParams, {"model": "m", "prompts": ["ok", prompt]}) == [
        "prompts: prompt 2 is empty"]


def test_a_nul_inside_a_prompt_is_refused():
    assert _messages(GeometryParams, {"model": "m", "prompts": ["a\x00b"]}) == [
        "prompts: prompt 1 contains a NUL character"]
    assert not is_blank("a\x00b") and not is_blank("é") and not is_blank("\u4e2d")


@pytest.mark.parametrize("value", [True, False, "8"])
def test_max_tokens_is_a_strict_integer(value):
    for model, base in ((GeometryParams, {"model": "m", "prompts": ["hi"]}),
                        (GridParams, {"model": "m", "layer": 0})):
        messages = _messages(model, {**base, "max_tokens": value})
        assert len(messages) == 1 and messages[0].startswith("max_tokens: Input should be a valid integer")
        assert model.model_validate({**base, "max_tokens": 8}).max_tokens == 8


def test_shared_strict_types():
    class Example(BaseModel):
        count: StrictInt = Field(0, ge=0)
        flag: StrictBool = False

    assert Example.model_validate({"count": 3, "flag": True}).count == 3
    for raw in ({"count": True}, {"count": "3"}, {"flag": 1}, {"flag": "true"}):
        with pytest.raises(ValidationError):
            Example.model_validate(raw)
