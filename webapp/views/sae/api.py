"""``GET /api/runs/<id>/latents/<n>.json``: one latent of an ``sae`` run as JSON.

Registered on the JSON API's blueprint by ``register(api)`` (``webapp.api``
calls it before the blueprint is attached to the app). Answers: 200 with
``latent_document``; 400 for a run of another kind; 404 for an unknown run
or a latent id out of range (the message names the valid range); 409 for a
run that has not succeeded. Never a 500 for what a client sends: the latent
id is parsed from the path as text.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from webapp import runs_service
from webapp.views.sae.data import KIND, LatentError, data_for_run, latent_document, load_sae_data


def _error(status: int, message: str):
    return jsonify(error=message, messages=[message]), status


def latent_json(run_id: str, latent: str):
    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        return _error(400, f"run {run.id} is a {run.kind} run; latents exist for {KIND} runs only")
    if run.status != "succeeded":
        return _error(409, f"run {run.id} is {run.status}; its latents exist once it has succeeded")
    try:
        data = load_sae_data(run.id)
    except LookupError:
        data = data_for_run(run)
    try:
        document = latent_document(data, data.latent_id(latent))
    except LatentError as exc:
        return _error(404, str(exc))
    response = jsonify(document)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="latent-atlas-{run.id}-latent-{document["latent"]}.json"')
    return response


def register(api: Blueprint) -> None:
    """Add the route to the API blueprint (before the blueprint is registered on the app)."""
    api.add_url_rule("/runs/<run_id>/latents/<latent>.json", "sae_latent_json", latent_json, methods=["GET"])


__all__ = ["latent_json", "register"]
