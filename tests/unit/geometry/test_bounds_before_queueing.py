"""Geometry layer ranges and token ids are checked against the model before anything is queued.

``webapp.runs_service.validate_params`` reads the block count and the
vocabulary size from the model's config (never its weights) and the params
model refuses what the worker could not run; the run itself uses the same
checks (``check_layers``, ``check_token_ids``).
"""

from __future__ import annotations

import json

import pytest

from latent_atlas.analyses.geometry import run_geometry
from latent_atlas.analyses.geometry.params import GeometryParams
from tiny_models import N_LAYERS, VOCAB_SIZE

BASE = {"model": "tiny", "prompts": ["ab ab"], "max_tokens": 8}


@pytest.fixture
def service(monkeypatch, tiny_gpt2_dir):
    from latent_atlas.settings import get_settings
    from webapp import model_shape, runs_service

    monkeypatch.setenv("ATLAS_MODELS", json.dumps({"tiny": {"source": str(tiny_gpt2_dir)}}))
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "tiny")
    get_settings.cache_clear()
    model_shape.clear_cache()
    yield runs_service
    get_settings.cache_clear()
    model_shape.clear_cache()


def test_the_shape_comes_from_the_config(service):
    from webapp.model_shape import model_shape

    shape = model_shape("tiny")
    assert (shape.n_layers, shape.vocab_size) == (N_LAYERS, VOCAB_SIZE)


@pytest.mark.parametrize(("over", "message"), [
    ({"layer_start": N_LAYERS},
     f"the layer range {N_LAYERS}..{N_LAYERS} does not fit a model of {N_LAYERS} layers (0..{N_LAYERS})"),
    ({"layer_stop": N_LAYERS + 1},
     f"the layer range 0..{N_LAYERS + 1} does not fit a model of {N_LAYERS} layers (0..{N_LAYERS})"),
    ({"positional_layer": N_LAYERS},
     f"positional_layer is {N_LAYERS}; the model has layers 0..{N_LAYERS - 1}"),
    ({"token_ids": [[1, 2, VOCAB_SIZE]]},
     f"sequence 1 has token id {VOCAB_SIZE}; the model's vocabulary is 0..{VOCAB_SIZE - 1}"),
    ({"token_ids": [[1, 2], [3, 10**9]], "prompts": ["a", "b"]},
     f"sequence 2 has token id 1000000000; the model's vocabulary is 0..{VOCAB_SIZE - 1}"),
])
def test_out_of_range_is_refused_before_queueing(service, over, message):
    with pytest.raises(service.SubmissionError) as caught:
        service.validate_params("geometry", {**BASE, **over})
    assert caught.value.messages == [message]


def test_the_edges_of_the_ranges_are_accepted(service):
    params = service.validate_params("geometry", {
        **BASE, "layer_start": N_LAYERS - 1, "layer_stop": N_LAYERS, "positional_layer": N_LAYERS - 1,
        "token_ids": [[0, VOCAB_SIZE - 1]]})
    assert params.layer_range(N_LAYERS) == range(N_LAYERS - 1, N_LAYERS)
    assert params.token_ids == [[0, VOCAB_SIZE - 1]]


def test_the_run_uses_the_same_checks(tiny_gpt2):
    """Without a context (e.g. a model whose config was unreadable) the worker refuses with the same words."""
    params = GeometryParams.model_validate({**BASE, "token_ids": [[1, VOCAB_SIZE]]})
    with pytest.raises(ValueError, match=f"sequence 1 has token id {VOCAB_SIZE}; the model's vocabulary"):
        run_geometry(params, tiny_gpt2)
    params = GeometryParams.model_validate({**BASE, "positional_layer": N_LAYERS})
    with pytest.raises(ValueError, match=f"positional_layer is {N_LAYERS}"):
        run_geometry(params, tiny_gpt2)
