"""Bounds of the grid run kind: clear errors before anything is queued, and at the start of a run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.lm import LanguageModel
from latent_atlas.settings import Limits

BASE: dict[str, Any] = {"model": "smollm2-135m", "layer": 10}
CONTEXT: dict[str, Any] = {
    "limits": Limits(max_grid_size=256, max_tokens_per_prompt=32, max_prompt_chars=100),
    "models": {"smollm2-135m", "gpt2"},
    "n_layers": 30,
    "count_tokens": lambda prompts: [len(p.split()) for p in prompts],
}


def _error(raw: dict[str, Any], context: dict[str, Any] | None = None) -> str:
    with pytest.raises(ValidationError) as info:
        GridParams.model_validate(raw, context=context)
    return str(info.value)


def test_defaults_and_a_valid_request() -> None:
    params = GridParams.model_validate({**BASE, "size": 256, "plane": "pca"}, context=CONTEXT)
    assert (params.size, params.spacing, params.center, params.top_k, params.dtype) == (
        256, 1.0, (0.0, 0.0), 5, "float32"
    )
    assert GridParams.model_validate({**BASE, "layer": 30}, context=CONTEXT).layer == 30


def test_grid_size_bounds() -> None:
    assert "grid size 257 is too large; this portal allows at most 256 x 256" in _error(
        {**BASE, "size": 257}, CONTEXT
    )
    assert "less than or equal to 4096" in _error({**BASE, "size": 5000})
    assert "greater than or equal to 2" in _error({**BASE, "size": 1})


def test_layer_bounds() -> None:
    assert "layer 31 is out of range for this model (0..30)" in _error({**BASE, "layer": 31}, CONTEXT)
    assert "greater than or equal to 0" in _error({**BASE, "layer": -1})


def test_layer_out_of_range_at_run_start(tiny_llama: LanguageModel) -> None:
    params = GridParams(model="tiny-llama", layer=40, size=4)
    calls: list[float] = []
    with pytest.raises(ValueError, match=r"layer 40 is out of range for model tiny-llama \(0\.\.3\)"):
        run_grid(params, tiny_llama, lambda fraction, stage: calls.append(fraction))
    assert calls == []  # nothing ran


def test_unknown_plane_and_model() -> None:
    message = _error({**BASE, "plane": "spiral"})
    assert "plane" in message and "'direct'" in message and "'through_states'" in message
    assert "model 'llama-70b' is not in this portal's catalogue" in _error({**BASE, "model": "llama-70b"}, CONTEXT)


def test_numeric_bounds() -> None:
    assert "spacing" in _error({**BASE, "spacing": 0})
    assert "spacing" in _error({**BASE, "spacing": float("inf")})
    assert "center" in _error({**BASE, "center": [float("nan"), 0]})
    assert "top_k" in _error({**BASE, "top_k": 11})
    assert "dtype" in _error({**BASE, "dtype": "float16"})
    assert "Extra inputs are not permitted" in _error({**BASE, "colour": "red"})


def test_through_states_needs_three_real_states() -> None:
    raw = {**BASE, "plane": "through_states", "prompts": ["one two three", "four five"]}
    assert "needs exactly 3 states" in _error(raw)
    assert "needs prompts" in _error({**BASE, "plane": "through_states"})
    states = [{"prompt": 0, "position": 0}, {"prompt": 1, "position": 1}, {"prompt": 2, "position": 0}]
    assert "state 3 names prompt 2, but there are only 2 prompts (0..1)" in _error({**raw, "states": states})
    states[2] = {"prompt": 0, "position": 5}
    assert "state 3: position 5 is out of range for prompt 0 (3 tokens: 0..2)" in _error(
        {**raw, "states": states}, CONTEXT
    )
    states[2] = {"prompt": 0, "position": -3}  # the same token as state 1
    assert "must be distinct" in _error({**raw, "states": states}, CONTEXT)
    states[2] = {"prompt": 0, "position": -1}
    assert GridParams.model_validate({**raw, "states": states}, context=CONTEXT).states is not None


def test_context_and_prompt_bounds() -> None:
    assert GridParams.model_validate({**BASE, "context": "   "}).context is None
    many_tokens = " ".join(["w"] * 33)
    assert "the context has 33 tokens; the limit is 32" in _error(
        {**BASE, "context": many_tokens, "max_tokens": 32}, CONTEXT
    )
    assert "the context has 101 characters; the limit is 100" in _error({**BASE, "context": "x" * 101}, CONTEXT)
    assert "max_tokens is 64; this portal allows at most 32" in _error({**BASE, "max_tokens": 64}, CONTEXT)
    assert "prompt 2 is empty" in _error({**BASE, "plane": "pca", "prompts": ["fine", " "]})
