"""JSON routes for the queue, fair-share settings and bulk actions (on the ``/api`` blueprint).

Admin only (403 JSON for anyone else, from ``NotAllowed``):

* ``GET /api/admin/queue``: every queued and running run in dispatch order
  (``queue_admin.queue_rows``) and the members' share settings and usage.
* ``POST /api/admin/queue/<id>/move`` ``{"to": "top" | "bottom"}``: move a queued run.
* ``POST /api/admin/queue/<id>/cancel``: cancel any queued or running run.
* ``GET /api/admin/members``; ``PATCH /api/admin/members/<username>``
  ``{"share_weight": 0.1..100, "daily_gpu_cap_s": 60..86400 | null}``.

Any member (their own runs only; an admin any run):

* ``POST /api/runs/bulk`` ``{"ids": [...], "action": "cancel" | "delete" |
  "add_tag" | "remove_tag", "tag": "..."}``: answers what changed and what
  already was so (``run_bulk.BulkResult``).

Bodies are strict (no coercion between JSON types, unknown keys refused);
errors are ``{"error", "messages"}`` with a 4xx status, never a 500.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webapp import queue_admin, run_bulk, runs_service
from webapp.api_errors import read_json_object
from webapp.auth import request_user
from webapp.runs_service import SubmissionError, format_validation_error


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: Literal["top", "bottom"]


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[str] = Field(min_length=1, max_length=run_bulk.MAX_BULK_RUNS)
    action: Literal["cancel", "delete", "add_tag", "remove_tag"]
    tag: str | None = Field(None, max_length=1_000)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise SubmissionError(format_validation_error(exc)) from None


def admin_queue():
    queue_admin.require_admin(request_user(), "see the queue")
    return jsonify(runs=queue_admin.queue_rows(), members=queue_admin.member_rows())


def admin_move(run_id: str):
    body = _validated(MoveRequest, read_json_object())
    moved = queue_admin.move_run(request_user(), run_id, body.to)
    return jsonify(moved=moved, runs=queue_admin.queue_rows())


def admin_cancel(run_id: str):
    queue_admin.cancel_any(request_user(), run_id)
    return jsonify(runs_service.run_detail(runs_service.get_run(run_id)))


def admin_members():
    queue_admin.require_admin(request_user(), "see the members' shares")
    return jsonify(members=queue_admin.member_rows())


def admin_member_change(username: str):
    member = queue_admin.set_member_share(request_user(), username, read_json_object())
    return jsonify(member)


def bulk():
    body = _validated(BulkRequest, read_json_object())
    result = run_bulk.bulk_apply(request_user(), body.ids, body.action, body.tag)
    return jsonify(result.as_json())


def _no_member(exc: queue_admin.MemberNotFound):
    return jsonify(error=f"no user {exc.args[0]!r}", messages=[f"no user {exc.args[0]!r}"]), 404


def register(api: Blueprint) -> None:
    """Add the routes to the ``/api`` blueprint (its error handlers answer in JSON)."""
    api.register_error_handler(queue_admin.MemberNotFound, _no_member)
    api.add_url_rule("/admin/queue", view_func=admin_queue, methods=["GET"])
    api.add_url_rule("/admin/queue/<run_id>/move", view_func=admin_move, methods=["POST"])
    api.add_url_rule("/admin/queue/<run_id>/cancel", view_func=admin_cancel, methods=["POST"])
    api.add_url_rule("/admin/members", view_func=admin_members, methods=["GET"])
    api.add_url_rule("/admin/members/<username>", view_func=admin_member_change, methods=["PATCH"])
    api.add_url_rule("/runs/bulk", view_func=bulk, methods=["POST"])
