"""Every ``/api/`` answer is JSON: request bodies read safely and errors turned into JSON.

Invariants: a client can never make ``/api/`` answer HTML or a 500 by what it
sends. ``read_json_object`` refuses a body that is too large (413, also when
chunked: Werkzeug counts the bytes against ``MAX_CONTENT_LENGTH`` while
reading), not JSON, not UTF-8, with NaN/Infinity, nested deeper than
``MAX_JSON_DEPTH`` or not an object (400), each with its own message. Any
HTTP error under ``/api/`` (404, 405, 413, 429, ...) is ``{"error",
"messages"}`` with its status; any other exception is logged with its
traceback and answered as a JSON 500 (a bug to fix, never the client's fault).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 32
READ_CHUNK = 1 << 16


class BodyError(ValueError):
    """The request body cannot be used; ``status`` and a message for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_body(limit: int | None) -> bytes:
    """The whole request body, or ``RequestEntityTooLarge`` past ``limit`` bytes.

    Read in chunks: Werkzeug's stream for a chunked body stops quietly at
    ``MAX_CONTENT_LENGTH`` when read whole (the cut body then looks like
    malformed JSON); reading on past the limit raises the 413 instead.
    """
    chunks, total = [], 0
    while True:
        chunk = request.stream.read(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if limit is not None and total > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object; ``BodyError`` (or a 413) says what is wrong."""
    raw = read_body(current_app.config.get("MAX_CONTENT_LENGTH"))
    if not raw.strip():
        raise BodyError("the request has no body: send a JSON object")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BodyError(f"the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except UnicodeDecodeError:
        raise BodyError("malformed JSON: the body is not UTF-8 text") from None
    except ValueError as exc:
        raise BodyError(f"malformed JSON: {exc}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise BodyError(f"the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    if not isinstance(value, dict):
        raise BodyError(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def json_error(status: int, error: str, messages: list[str] | None = None):
    return jsonify(error=error, messages=messages or [error]), status


ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
unknown_api = Blueprint("api_unknown", __name__, url_prefix="/api")


@unknown_api.route("/", defaults={"rest": ""}, methods=ANY_METHOD)
@unknown_api.route("/<path:rest>", methods=ANY_METHOD)
def _unknown(rest: str):
    """Any ``/api/`` path no endpoint serves (else Dash's page route would answer HTML):
    a 405 listing the methods of the endpoint that has this path, or a 404."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in ANY_METHOD:
        try:
            endpoint, _args = adapter.match(request.path, method=method)
        except HTTPException:
            continue
        if endpoint != "api_unknown._unknown":
            allowed.append(method)
    if allowed:
        message = f"method {request.method} is not allowed here (allowed: {', '.join(allowed)})"
        response = json_error(405, message)
        response[0].headers["Allow"] = ", ".join(allowed)
        return response
    return json_error(404, f"no API endpoint {request.path}")


def init_api_errors(server: Flask) -> None:
    """JSON for every error under ``/api/``; other paths keep Flask's own pages."""
    server.register_blueprint(unknown_api)

    @server.errorhandler(BodyError)
    def _body(exc: BodyError):
        return json_error(exc.status, str(exc))

    @server.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if not request.path.startswith("/api/"):
            return exc
        if isinstance(exc, RequestEntityTooLarge):
            limit = server.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body is too large (at most {limit // 2**20} MB)" if limit else (
                "the request body is too large")
        elif exc.code == 405:
            allowed = ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
            message = f"method {request.method} is not allowed here" + (
                f" (allowed: {allowed})" if allowed else "")
        elif exc.code == 404:
            message = f"no API endpoint {request.path}"
        else:
            message = exc.description or exc.name
        response = json_error(exc.code or 500, message)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response[0].headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @server.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return _http(exc)
        if not request.path.startswith("/api/"):
            raise exc
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return json_error(500, "internal error; it was logged for the portal's admin")
