"""Every ``/api/`` answer is JSON with a clear message, and nothing a client sends is a 500.

The real app (Flask test client) on its own SQLite database; requests carry an
API token, as scripts do.
"""

from __future__ import annotations

import io
import logging

import pytest
from web_app import PASSWORD, app_env

pytestmark = pytest.mark.integration

GEOMETRY = {"model": "tiny-gpt2", "prompts": ["hello there"]}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with app_env(tmp_path_factory.mktemp("api-errors"), models, ATLAS_UMAP_WARMUP="false"):
        from webapp import users_service
        from webapp.app import create_app

        server = create_app().server
        users_service.create_user("scripter", PASSWORD)
        secret = users_service.create_api_token("scripter", "tests")
        client = server.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
        yield client


def _json_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    body = response.get_json()
    text = " | ".join([body["error"], *body["messages"]])
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_unknown_endpoints_and_methods(api):
    _json_error(api.get("/api/nope"), 404, "no API endpoint /api/nope")
    _json_error(api.post("/api/runs/abc/nope"), 404)
    response = api.get("/api/runs/abc/cancel")
    _json_error(response, 405, "GET is not allowed", "POST")
    assert response.headers["Allow"] == "POST"
    _json_error(api.put("/api/runs"), 405, "allowed: GET, HEAD, POST")
    _json_error(api.delete("/api/tokens/x"), 404)
    _json_error(api.get("/api/runs/abc"), 404, "no run with ID 'abc'")


def test_a_body_over_the_limit_is_413_also_when_chunked(api):
    big = b"x" * (33 * 2**20)
    _json_error(api.post("/api/runs", data=big, content_type="application/json"), 413, "too large")
    chunked = api.post(
        "/api/runs", input_stream=io.BytesIO(b"[" + b"1," * (25 * 2**20) + b"1]"),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},  # what gunicorn sets for chunked bodies
    )
    _json_error(chunked, 413, "too large")


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{bad", "malformed JSON"),
    (b"", "no body"),
    (b"\xff\xfe{", "not UTF-8"),
    (b'{"kind": "geometry", "params": {"model": NaN}}', "NaN is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested too deeply"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_bodies_that_are_not_a_json_object(api, body, fragment):
    _json_error(api.post("/api/runs", data=body, content_type="application/json"), 400, fragment)


@pytest.mark.parametrize(("submission", "fragment"), [
    ({"kind": "geometry", "params": GEOMETRY, "title": {}}, "title: Input should be a valid string"),
    ({"kind": "geometry", "params": GEOMETRY, "tags": [1]}, "tags.0: Input should be a valid string"),
    ({"kind": "geometry", "params": GEOMETRY, "parent_id": 5}, "parent_id"),
    ({"kind": "geometry", "params": GEOMETRY, "titel": "typo"}, "titel: Extra inputs are not permitted"),
    ({"kind": 3, "params": GEOMETRY}, "kind: Input should be a valid string"),
    ({"kind": "geometry", "params": []}, "params: must be a JSON object"),
    ({"kind": "geometry"}, "params: Field required"),
    ({"kind": "geometry", "params": {**GEOMETRY, "max_tokens": True}},
     "max_tokens: Input should be a valid integer"),
    ({"kind": "geometry", "params": {**GEOMETRY, "layer_start": True}},
     "layer_start: Input should be a valid integer"),
    ({"kind": "geometry", "params": {**GEOMETRY, "unit_normalise": 1}},
     "unit_normalise: Input should be a valid boolean"),
    ({"kind": "geometry", "params": {**GEOMETRY, "max_tokens": "16"}},
     "max_tokens: Input should be a valid integer"),
    ({"kind": "geometry", "params": {**GEOMETRY, "prompts": ["\x00"]}}, "prompt 1 is empty"),
    ({"kind": "geometry", "params": {**GEOMETRY, "prompts": ["ok\x00"]}}, "NUL"),
    ({"kind": "geometry", "params": GEOMETRY, "title": "a\x00b"}, "title: may not contain NUL"),
    ({"kind": "grid", "params": {"model": "tiny-gpt2", "layer": 0, "size": True}},
     "size: Input should be a valid integer"),
    ({"kind": "nope", "params": {}}, "unknown run kind"),
])
def test_wrong_types_are_refused_before_queueing(api, submission, fragment):
    before = len(api.get("/api/runs").get_json()["runs"])
    _json_error(api.post("/api/runs", json=submission), 400, fragment)
    assert len(api.get("/api/runs").get_json()["runs"]) == before


def test_strict_types_still_take_what_json_means(api):
    """A JSON array fills a tuple, a JSON integer a float field: strictness refuses only coercion."""
    response = api.post("/api/runs", json={"kind": "grid", "params": {
        "model": "tiny-gpt2", "layer": 1, "size": 4, "center": [0, 1.5], "spacing": 2}})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["params"]["center"] == [0.0, 1.5]


def test_an_unexpected_error_is_logged_and_answered_in_json(tmp_path, caplog):
    with app_env(tmp_path):
        from webapp import users_service
        from webapp.app import create_server

        server = create_server()

        @server.get("/api/test-failure")
        def _failure():
            raise RuntimeError("a bug in a view")

        users_service.create_user("sam", PASSWORD)
        secret = users_service.create_api_token("sam", "tests")
        with caplog.at_level(logging.ERROR, logger="webapp.api_errors"):
            response = server.test_client().get(
                "/api/test-failure", headers={"Authorization": f"Bearer {secret}"})
        _json_error(response, 500, "internal error")
        assert "a bug in a view" not in response.get_data(as_text=True)
        assert any("RuntimeError: a bug in a view" in (r.exc_text or "") for r in caplog.records)
