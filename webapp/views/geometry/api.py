"""``GET /api/runs/<id>/figure/<view>``: the Plotly figure a geometry run page shows, as JSON.

Registered on the JSON API's blueprint by ``register(api)`` (``webapp.api``
calls it). ``<view>`` is a view's slug (``page.FIGURES``: ``layer-evolution``,
``attention-vs-mlp``, ``position-0-norm``, ``positional-structure``,
``layer-norms``, ``animation``); the figure is built by the same function the
run page calls, with the page's initial options, from the same arrays. The
body is Plotly's own JSON (``plotly.io.from_json`` reads it back; the Python
client does). Answers: 200; 400 for a run of another kind or an unknown view
(the message lists the views); 404 for an unknown run; 409 for a run that has
not succeeded.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from webapp import runs_service

KINDS = ("geometry", "geometry_reproject")


def _error(status: int, message: str):
    return jsonify(error=message, messages=[message]), status


def geometry_figure(run_id: str, view: str):
    from webapp.views.geometry.page import ARRAYS, FIGURES

    run = runs_service.get_run(run_id)
    if run.kind not in KINDS:
        return _error(400, f"run {run.id} is a {run.kind} run; figures are served for "
                           f"{', '.join(KINDS)} runs only")
    views = {figure.slug: figure for figure in FIGURES}
    if view not in views:
        return _error(400, f"unknown view {view!r}; the views are {', '.join(views)}")
    if run.status != "succeeded":
        return _error(409, f"run {run.id} is {run.status}; its figures exist once it has succeeded")
    figure = views[view].figure(runs_service.load_arrays(run, ARRAYS), dict(run.summary or {}))
    return Response(figure.to_json(), mimetype="application/json")


def register(api: Blueprint) -> None:
    api.add_url_rule("/runs/<run_id>/figure/<view>", "geometry_figure", geometry_figure, methods=["GET"])
