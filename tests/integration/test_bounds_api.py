"""The JSON API refuses layers and token ids the model does not have, and queues nothing.

The real app (Flask test client) on its own SQLite database with a tiny GPT-2
in the catalogue; the bounds come from the model's config, read by the web
process without loading weights.
"""

from __future__ import annotations

import pytest
from web_app import PASSWORD, app_env

from tiny_models import N_LAYERS, VOCAB_SIZE

pytestmark = pytest.mark.integration

GEOMETRY = {"model": "tiny-gpt2", "prompts": ["hello there"], "max_tokens": 16}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_gpt2_dir):
    from webapp import model_shape

    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with app_env(tmp_path_factory.mktemp("bounds-api"), models, ATLAS_UMAP_WARMUP="false"):
        from webapp import users_service
        from webapp.app import create_app

        model_shape.clear_cache()
        server = create_app().server
        users_service.create_user("bounded", PASSWORD)
        secret = users_service.create_api_token("bounded", "tests")
        client = server.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
        yield client
        model_shape.clear_cache()


def _count(api) -> int:
    return len(api.get("/api/runs").get_json()["runs"])


@pytest.mark.parametrize(("kind", "params", "fragment"), [
    ("geometry", {**GEOMETRY, "layer_start": N_LAYERS}, f"does not fit a model of {N_LAYERS} layers"),
    ("geometry", {**GEOMETRY, "layer_stop": 99}, "the layer range 0..99 does not fit"),
    ("geometry", {**GEOMETRY, "positional_layer": N_LAYERS},
     f"positional_layer is {N_LAYERS}; the model has layers 0..{N_LAYERS - 1}"),
    ("geometry", {**GEOMETRY, "token_ids": [[5, VOCAB_SIZE + 7]]},
     f"sequence 1 has token id {VOCAB_SIZE + 7}; the model's vocabulary is 0..{VOCAB_SIZE - 1}"),
    ("grid", {"model": "tiny-gpt2", "layer": N_LAYERS + 1, "size": 8},
     f"layer {N_LAYERS + 1} is out of range for this model (0..{N_LAYERS})"),
])
def test_out_of_range_is_a_400_and_nothing_is_queued(api, kind, params, fragment):
    before = _count(api)
    response = api.post("/api/runs", json={"kind": kind, "params": params})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert any(fragment in message for message in body["messages"]), body
    assert _count(api) == before


def test_the_edges_are_queued(api):
    params = {**GEOMETRY, "layer_start": N_LAYERS - 1, "positional_layer": N_LAYERS - 1,
              "token_ids": [[0, VOCAB_SIZE - 1]]}
    response = api.post("/api/runs", json={"kind": "geometry", "params": params})
    assert response.status_code in (200, 201, 202), response.get_data(as_text=True)[:300]
    assert response.get_json()["status"] == "queued"
