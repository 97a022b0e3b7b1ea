"""``GET /api/runs/<id>/scan.html`` and ``/api/runs/<id>/scan.gif``: a scan run's animation as files.

Registered on the JSON API's blueprint by ``register(api)`` (``webapp.api``
calls it before the blueprint is attached to the app). Answers: 200 with the
file (an attachment); 400 for a run of another kind; 404 for an unknown run
(the API's own handler); 409 for a run that has not succeeded. The arrays are
the API's generic export (``/api/runs/<id>/export?format=npz``). A GIF is
rendered once per run and process (a finished run never changes).
"""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, Response, jsonify

from webapp import runs_service
from webapp.views.scan.data import KIND, load_scan
from webapp.views.scan.export import animation_gif, animation_html


def _error(status: int, message: str):
    return jsonify(error=message, messages=[message]), status


def _problem(run_id: str):
    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        return run, _error(400, f"run {run.id} is a {run.kind} run; the animation exists for {KIND} runs only")
    if run.status != "succeeded":
        return run, _error(409, f"run {run.id} is {run.status}; its animation exists once it has succeeded")
    return run, None


def _attachment(data: bytes | str, mimetype: str, name: str) -> Response:
    return Response(data, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def scan_html(run_id: str):
    run, problem = _problem(run_id)
    if problem is not None:
        return problem
    title = run.title or f"Scan {run.id}"
    return _attachment(animation_html(load_scan(run.id), title), "text/html",
                       f"latent-atlas-{run.id}-scan.html")


@lru_cache(maxsize=8)
def _gif(run_id: str) -> bytes:
    return animation_gif(load_scan(run_id))


def scan_gif(run_id: str):
    run, problem = _problem(run_id)
    if problem is not None:
        return problem
    return _attachment(_gif(run.id), "image/gif", f"latent-atlas-{run.id}-scan.gif")


def register(api: Blueprint) -> None:
    """Add the routes to the API blueprint (before the blueprint is registered on the app)."""
    api.add_url_rule("/runs/<run_id>/scan.html", "scan_html", scan_html, methods=["GET"])
    api.add_url_rule("/runs/<run_id>/scan.gif", "scan_gif", scan_gif, methods=["GET"])


__all__ = ["register", "scan_gif", "scan_html"]
