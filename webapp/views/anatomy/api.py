"""The anatomy run's attention through the JSON API: one head, or the thumbnail sheet.

* ``GET /api/runs/<id>/anatomy/attention?layer=L&head=H``: the (T, T) pattern
  of one (layer, query head), read alone from the stored tensor as the page
  reads it (``data.head_pattern``), values rounded to 5 decimals;
* ``GET /api/runs/<id>/anatomy/thumbnails[?layer=L]``: the pooled uint8
  thumbnails (``attention_thumbs``, L * H images of s x s, each scaled to its
  own maximum) of every layer, or of one layer's heads.

Registered on the API blueprint by ``register(api)`` (login required there).
Invariants: ``layer`` and ``head`` go through ``data.check_index`` (a whole
number in range, else a 400 naming the range) before any array is indexed;
every answer is JSON: 400 for a bad index or a run of another kind, 404 for an
unknown run (the API's handler), 409 for a run that has not succeeded, never a
500 for bad input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request

from webapp import runs_service
from webapp.views.anatomy.data import KIND, AnatomyData, check_index, head_pattern, load

__all__ = ["register"]


def _error(status: int, message: str):
    return jsonify(error=message, messages=[message]), status


def _data(run_id: str) -> tuple[AnatomyData | None, Any]:
    run = runs_service.get_run(run_id)  # RunNotFound: the API's 404
    if run.deleted_at is not None:
        raise runs_service.RunDeleted(run.id)
    if run.kind != KIND:
        return None, _error(400, f"run {run.id} is a {run.kind} run; attention exists for {KIND} runs only")
    if run.status != "succeeded":
        return None, _error(409, f"run {run.id} is {run.status}; its attention exists once it has succeeded")
    return load(run.id), None


def _index(name: str, count: int, required: bool) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        if required:
            raise ValueError(f"{name} is required: a whole number from 0 to {count - 1}")
        return None
    return check_index(name, raw[:20], count)


def attention_head(run_id: str):
    data, problem = _data(run_id)
    if problem is not None:
        return problem
    try:
        layer = _index("layer", data.n_layers, True)
        head = _index("head", data.n_heads, True)
    except ValueError as exc:
        return _error(400, str(exc))
    pattern = np.round(head_pattern(data, layer, head).astype(np.float64), 5)
    return jsonify(run=data.run_id, layer=layer, head=head, n_layers=data.n_layers, n_heads=data.n_heads,
                   tokens=data.tokens, pattern=pattern.tolist())


def attention_thumbnails(run_id: str):
    data, problem = _data(run_id)
    if problem is not None:
        return problem
    try:
        layer = _index("layer", data.n_layers, False)
    except ValueError as exc:
        return _error(400, str(exc))
    thumbs = data.arrays["attention_thumbs"]
    heads = data.n_heads
    if layer is not None:
        thumbs = thumbs[layer * heads:(layer + 1) * heads]
    return jsonify(run=data.run_id, layer=layer, n_layers=data.n_layers, n_heads=heads,
                   size=int(thumbs.shape[-1]), order="row layer * n_heads + head",
                   scale="255 * sqrt(pooled / the thumbnail's own maximum)", thumbnails=thumbs.tolist())


def register(api: Blueprint) -> None:
    """Add the routes to the API blueprint (before the blueprint is registered on the app)."""
    api.add_url_rule("/runs/<run_id>/anatomy/attention", "anatomy_attention", attention_head, methods=["GET"])
    api.add_url_rule("/runs/<run_id>/anatomy/thumbnails", "anatomy_thumbnails", attention_thumbnails,
                     methods=["GET"])
