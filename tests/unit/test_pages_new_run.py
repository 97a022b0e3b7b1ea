"""The New-run form logic: collecting pattern-matched fields and building geometry params."""

from __future__ import annotations

import pytest

from latent_atlas.analyses.geometry import GeometryParams
from latent_atlas.settings import Limits
from webapp.views import FIELD_TYPE, FormError, field_id, form_values
from webapp.views.geometry import params_from_form, parse_prompts

LIMITS = Limits(max_prompts=3, max_tokens_per_prompt=64, max_prompt_chars=20)


def values(**overrides):
    base = {"prompts": "The capital of France is\nOnce upon a time", "max_tokens": 32,
            "unit_normalise": False, "average": "none", "dims": 3}
    return {**base, **overrides}


def test_parse_prompts_ignores_empty_lines_and_strips():
    assert parse_prompts("a\n\n  \n b \r\nc\n") == ["a", "b", "c"]
    assert parse_prompts(None) == []


def test_params_from_form_builds_valid_geometry_params():
    params = params_from_form("tiny-gpt2", values(unit_normalise=True, exclude_position0=True,
                                                  average="positions", dims="2"), Limits())
    assert params == {"model": "tiny-gpt2", "prompts": ["The capital of France is", "Once upon a time"],
                      "max_tokens": 32, "unit_normalise": True, "exclude_position0": True,
                      "average": "positions", "dims": 2}
    GeometryParams.model_validate(params)


def test_params_from_form_accepts_float_whole_numbers():
    assert params_from_form("m", values(max_tokens=16.0), Limits())["max_tokens"] == 16


def test_params_from_form_lists_every_problem():
    with pytest.raises(FormError) as caught:
        params_from_form(None, values(prompts="\n\n", max_tokens=None, average="bogus", dims=4),
                         LIMITS)
    messages = caught.value.messages
    assert any(m.startswith("model:") for m in messages)
    assert any(m.startswith("prompts:") for m in messages)
    assert any(m.startswith("max_tokens:") for m in messages)
    assert any(m.startswith("average:") for m in messages)
    assert any(m.startswith("dims:") for m in messages)


@pytest.mark.parametrize("raw", [0, 65, 2.5, "abc", None])
def test_max_tokens_bounds(raw):
    with pytest.raises(FormError, match="max_tokens"):
        params_from_form("m", values(max_tokens=raw), LIMITS)


def test_prompt_count_and_length_limits():
    with pytest.raises(FormError, match="at most 3 prompts"):
        params_from_form("m", values(prompts="a\nb\nc\nd"), LIMITS)
    with pytest.raises(FormError, match="prompt 2 has 21 characters"):
        params_from_form("m", values(prompts="ok\n" + "x" * 21), LIMITS)


def test_form_values_picks_the_selected_kinds_fields():
    states = [
        {"id": field_id("geometry", "prompts"), "property": "value", "value": "a"},
        {"id": field_id("geometry", "dims"), "property": "value", "value": 2},
        {"id": {"type": FIELD_TYPE, "kind": "grid", "name": "size"}, "property": "value", "value": 9},
    ]
    assert form_values("geometry", states) == {"prompts": "a", "dims": 2}
    assert form_values("grid", states) == {"size": 9}
