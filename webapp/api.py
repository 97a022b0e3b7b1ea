"""The JSON API (``/api``): submit, list, show, cancel and export runs.

Run management: ``PATCH /api/runs/<id>`` ``{"title", "tags", "note"}`` (owner or
admin), ``DELETE /api/runs/<id>`` (owner or admin; the record stays, its data goes:
an export answers 410), ``POST /api/runs/<id>/star`` ``{"starred": bool}`` (anyone,
for themselves); ``GET /api/runs/<id>`` lists every change (``events``);
``GET /api/runs?tag=...&starred=true`` filters. The queue, fair-share settings and
bulk actions (``/api/admin/queue``, ``/api/admin/members``, ``POST /api/runs/bulk``)
are in ``webapp.queue_api``.

``POST /api/runs`` answers 201 with a new queued run (``"reused": false``), or
200 with an identical succeeded run (``"reused": true``; see ``webapp.reuse``)
unless the body says ``"force": true``.

Grid runs also export their token map: ``/api/runs/<id>/grid.json`` and
``/api/runs/<id>/grid.png`` (``?color=token|probability|entropy``, ``?cell=``
pixels per cell); see ``webapp.views.grid``.

API tokens: ``GET /api/tokens`` (yours; an admin may add ``?user=NAME`` or
``?user=*``), ``POST /api/tokens`` ``{"name": ...}`` (answers the secret once),
``DELETE /api/tokens/<id>`` (revoke; the owner or an admin).

Errors are JSON ``{"error": ..., "messages": [...]}`` with a 4xx status
(``webapp.api_errors``: every ``/api/`` answer is JSON); a malformed, oversized
or too deeply nested body and a field of the wrong type are 4xx, never a 500.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webapp import run_management, runs_service, users_service
from webapp.api_errors import read_json_object
from webapp.auth import request_user
from webapp.runs_service import (
    NotAllowed,
    RunDeleted,
    RunFilter,
    RunNotFound,
    SubmissionError,
    format_validation_error,
)

api = Blueprint("api", __name__, url_prefix="/api")


def _error(status: int, error: str, messages: list[str] | None = None):
    return jsonify(error=error, messages=messages or [error]), status


@api.errorhandler(RunNotFound)
def _not_found(exc: RunNotFound):
    return _error(404, f"no run with ID {exc.args[0]!r}")


@api.errorhandler(RunDeleted)
def _gone(exc: RunDeleted):
    return _error(410, f"run {exc.args[0]} was deleted; its data is gone")


@api.errorhandler(NotAllowed)
def _forbidden(exc: NotAllowed):
    return _error(403, str(exc))


@api.errorhandler(SubmissionError)
def _invalid(exc: SubmissionError):
    return _error(400, "invalid submission", exc.messages)


class Submission(BaseModel):
    """The body of ``POST /api/runs``; strict: no coercion between JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str = Field(min_length=1, max_length=64)
    params: dict[str, Any]
    title: str | None = Field(None, max_length=10_000)
    tags: list[str] | None = Field(None, max_length=1_000)
    parent_id: str | None = Field(None, min_length=1, max_length=64)
    force: bool = False  # true: queue a new run even when an identical one has succeeded


class RunChange(BaseModel):
    """The body of ``PATCH /api/runs/<id>``: any of title, tags, note (absent: unchanged)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str | None = Field(None, max_length=10_000)
    tags: list[str] | None = Field(None, max_length=1_000)
    note: str | None = Field(None, max_length=100_000)


class StarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    starred: bool


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=users_service.MAX_TOKEN_NAME)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise SubmissionError(format_validation_error(exc)) from None


@api.post("/runs")
def submit():
    body = _validated(Submission, read_json_object())
    submitted = runs_service.submit(
        request_user().id,
        body.kind,
        body.params,
        title=body.title,
        tags=body.tags,
        parent_id=body.parent_id,
        force=body.force,
    )
    detail = {**runs_service.run_detail(submitted.run), "reused": submitted.reused}
    return jsonify(detail), 200 if submitted.reused else 201


@api.get("/tokens")
def list_tokens():
    user = request_user()
    wanted = request.args.get("user") or user.username
    if wanted != user.username and not user.is_admin:
        return _error(403, "only an admin may list another user's tokens")
    return jsonify(tokens=users_service.list_tokens(None if wanted == "*" else wanted))


@api.post("/tokens")
def create_token():
    body = _validated(TokenRequest, read_json_object())
    try:
        record = users_service.create_token_record(request_user().username, body.name)
    except users_service.UserError as exc:
        return _error(400, str(exc))
    return jsonify(record), 201


@api.delete("/tokens/<int:token_id>")
def revoke_token(token_id: int):
    try:
        return jsonify(users_service.revoke_token(request_user(), token_id))
    except users_service.UserError as exc:
        return _error(404, str(exc))


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SubmissionError([f"{name}: must be an integer"]) from None
    if not low <= value <= high:
        raise SubmissionError([f"{name}: must be between {low} and {high}"])
    return value


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise SubmissionError([f"{name}: must be true or false"])


@api.get("/runs")
def list_runs():
    flt = RunFilter(
        kind=request.args.get("kind") or None,
        model=request.args.get("model") or None,
        owner=request.args.get("owner") or None,
        status=request.args.get("status") or None,
        text=request.args.get("q") or None,
        tag=request.args.get("tag") or None,
        starred_by=request_user().id if _bool_arg("starred") else None,
        limit=_int_arg("limit", 200, 1, 1000),
        offset=_int_arg("offset", 0, 0, 10**9),
    )
    return jsonify(runs=runs_service.list_runs(flt))


@api.get("/runs/<run_id>")
def show(run_id: str):
    run = runs_service.get_run(run_id)
    detail = runs_service.run_detail(run)
    detail["traceback"] = runs_service.traceback_for(request_user(), run)
    detail["events"] = run_management.run_events(run.id)
    detail["starred"] = run.id in run_management.starred_by(request_user().id, [run.id])
    return jsonify(detail)


@api.patch("/runs/<run_id>")
def change(run_id: str):
    body = _validated(RunChange, read_json_object())
    run = run_management.update_run(request_user(), run_id, title=body.title, tags=body.tags, note=body.note)
    return show(run.id)


@api.delete("/runs/<run_id>")
def delete(run_id: str):
    run = run_management.delete_run(request_user(), run_id)
    return show(run.id)


@api.post("/runs/<run_id>/star")
def star(run_id: str):
    body = _validated(StarRequest, read_json_object())
    run_management.set_star(request_user(), run_id, body.starred)
    return show(run_id)


@api.post("/runs/<run_id>/cancel")
def cancel(run_id: str):
    run_management.cancel_recorded(request_user(), run_id)  # recorded in the run's change log
    return jsonify(runs_service.run_detail(runs_service.get_run(run_id)))


def export_bundle(run) -> bytes:
    """A zip with ``<id>.json`` (the run record) and ``<id>.npz`` (its arrays)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{run.id}.json", runs_service.export_json(run))
        archive.writestr(f"{run.id}.npz", runs_service.export_npz(run))
    return buffer.getvalue()


@api.get("/runs/<run_id>/export")
def export(run_id: str):
    run = runs_service.get_run(run_id)
    if run.deleted_at is not None:
        raise RunDeleted(run.id)
    fmt = request.args.get("format", "zip")
    if fmt == "json":
        data, mime, ext = runs_service.export_json(run), "application/json", "json"
    elif fmt == "npz":
        data, mime, ext = runs_service.export_npz(run), "application/octet-stream", "npz"
    elif fmt == "zip":
        data, mime, ext = export_bundle(run), "application/zip", "zip"
    else:
        return _error(400, "format must be one of json, npz, zip")
    return Response(
        data,
        mimetype=mime,
        headers={"Content-Disposition": f'attachment; filename="latent-atlas-{run.id}.{ext}"'},
    )


def _grid_problem(run):
    """An error response when ``run`` has no token map (wrong kind, not finished), else None."""
    if run.kind != "grid":
        return _error(400, f"run {run.id} is a {run.kind} run; token maps exist for grid runs only")
    if run.status != "succeeded":
        return _error(409, f"run {run.id} is {run.status}; its token map exists once it has succeeded")
    return None


@api.get("/runs/<run_id>/grid.json")
def grid_json(run_id: str):
    from webapp.views import grid as grid_view

    run = runs_service.get_run(run_id)
    problem = _grid_problem(run)
    if problem is not None:
        return problem
    arrays = runs_service.load_arrays(run)
    data = grid_view.GridData.from_arrays(run.id, run.summary or {}, run.params or {}, arrays)
    document = grid_view.export_document(data, runs_service.run_summary(run), arrays)
    return Response(
        json.dumps(document, separators=(",", ":")),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="latent-atlas-{run.id}-grid.json"'},
    )


@api.get("/runs/<run_id>/grid.png")
def grid_png(run_id: str):
    from webapp.views import grid as grid_view

    run = runs_service.get_run(run_id)
    problem = _grid_problem(run)
    if problem is not None:
        return problem
    mode = request.args.get("color", "token")
    if mode not in grid_view.COLOR_MODES:
        return _error(400, f"color must be one of {', '.join(grid_view.COLOR_MODES)}")
    data = grid_view.load_grid(run.id)
    try:
        cell = grid_view.png_cell_px(data.n, request.args.get("cell"))
    except ValueError as exc:
        return _error(400, str(exc))
    return Response(
        grid_view.token_map_png(data, mode, cell),
        mimetype="image/png",
        headers={"Content-Disposition": f'attachment; filename="latent-atlas-{run.id}-grid-{mode}.png"'},
    )


# Run kinds' own routes on this blueprint (added before the app registers it).
from webapp.views.sae.api import register as _register_sae_routes  # noqa: E402

_register_sae_routes(api)
from webapp.views.scan.api import register as _register_scan_routes  # noqa: E402

_register_scan_routes(api)
from webapp.views.sae_train.api import register as _register_sae_train_routes  # noqa: E402

_register_sae_train_routes(api)
from webapp.views.geometry.api import register as _register_geometry_routes  # noqa: E402

_register_geometry_routes(api)
from webapp.views.anatomy.api import register as _register_anatomy_routes  # noqa: E402

_register_anatomy_routes(api)
from webapp.queue_api import register as _register_queue_routes  # noqa: E402

_register_queue_routes(api)
