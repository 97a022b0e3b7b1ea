"""The queue, for admins: ``/admin/queue``.

Every queued and running run in dispatch order (``queue_admin.queue_rows``:
the dispatcher's own plan), each with its owner, kind, size, place, estimated
start and the estimate's basis or why it is held, and buttons to move it to
the top or the bottom of its queue or cancel it (with a confirmation); below,
each member's share weight, daily cap and recent GPU use. Weights and caps are
changed on the Users page.

Invariants: the page and every callback check ``current_user.is_admin``
themselves (``queue_admin`` checks again); the table is rebuilt from the
database after each action and every few seconds, never edited in place; user
text (titles, usernames) is a text child, never HTML.
"""

from __future__ import annotations

from typing import Any

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, callback, clientside_callback, dcc, html
from flask_login import current_user

from webapp import queue_admin
from webapp.components import format_duration, status_badge
from webapp.queue_text import ordinal
from webapp.runs_service import NotAllowed, RunNotFound, SubmissionError

dash.register_page(__name__, path="/admin/queue", name="Queue", title="Queue · Latent Atlas")

REFRESH_MS = 3000
HEADERS = ("#", "Run", "Owner", "Kind", "Size", "Queue", "Status", "Place", "Estimated start",
           "Basis / held", "Priority", "")


def _place(row: dict[str, Any]) -> str:
    if row["status"] == "running":
        return "running"
    if row["held_reason"]:
        return "held"
    if row["sent"]:
        return "sent" if row["queue_position"] is None else f"{ordinal(row['queue_position'])} (sent)"
    return ordinal(row["queue_position"]) if row["queue_position"] is not None else "—"


def _actions(row: dict[str, Any]) -> Any:
    movable = row["status"] == "queued" and not row["sent"]
    index = row["id"]
    return dbc.ButtonGroup([
        dbc.Button("Top", id={"type": "queue-top", "index": index}, size="sm", outline=True,
                   color="primary", disabled=not movable, n_clicks=0, title="Move to the top of its queue"),
        dbc.Button("Bottom", id={"type": "queue-bottom", "index": index}, size="sm", outline=True,
                   color="secondary", disabled=not movable, n_clicks=0,
                   title="Move to the bottom of its queue"),
        dbc.Button("Cancel", id={"type": "queue-cancel", "index": index}, size="sm", outline=True,
                   color="danger", disabled=row["cancel_requested"], n_clicks=0),
    ], size="sm")


def queue_table(rows: list[dict[str, Any]]) -> Any:
    """The queue as a table (one row per run, in dispatch order)."""
    if not rows:
        return html.P("Nothing is queued or running.", className="text-muted mb-0", id="admin-queue-empty")
    body = []
    for row in rows:
        basis = row["held_reason"] or row.get("estimate_basis") or ""
        body.append(html.Tr([
            html.Td(str(row["order"])),
            html.Td([dcc.Link(row["id"], href=f"/runs/{row['id']}", className="font-monospace"),
                     html.Div(row["title"], className="small text-muted")]),
            html.Td(row["owner"]),
            html.Td(row["kind"]),
            html.Td(row["size"]),
            html.Td(row["queue"]),
            html.Td(status_badge(row["status"])),
            html.Td(_place(row), className="atlas-queue-place"),
            html.Td(row.get("estimated_start_text") or ("—" if row["status"] == "queued" else "")),
            html.Td(basis, className="small " + ("text-warning" if row["held_reason"] else "text-muted")),
            html.Td(str(row["priority"])),
            html.Td(_actions(row)),
        ], id=f"admin-queue-row-{row['order']}", **{"data-run": row["id"]}))
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in HEADERS])), html.Tbody(body)],
                     size="sm", hover=True, responsive=True, class_name="align-middle mb-0",
                     id="admin-queue-table")


def members_table(members: list[dict[str, Any]]) -> Any:
    head = ("Member", "Weight", "Daily cap", "GPU today", "Recent GPU (decayed)", "Recent / weight",
            "Queued", "Running")
    body = [html.Tr([
        html.Td(m["username"] + ("" if m["active"] else " (disabled)")),
        html.Td(f"{m['share_weight']:g}"),
        html.Td(format_duration(m["daily_gpu_cap_s"]) if m["daily_gpu_cap_s"] is not None else "none"),
        html.Td(format_duration(m["gpu_s_today"])),
        html.Td(format_duration(m["recent_gpu_s"])),
        html.Td(format_duration(m["weighted_usage"])),
        html.Td(str(m["queued"])),
        html.Td(str(m["running"])),
    ]) for m in members]
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                     size="sm", hover=True, responsive=True, class_name="mb-0", id="admin-members-table")


def layout(**_kwargs):
    if not current_user.is_admin:
        return html.Div([
            html.H1("Queue", className="h3 mb-3"),
            html.P("Only administrators see the whole queue. Your queued runs show their place and "
                   "estimated start on their pages and in Runs.", className="text-muted",
                   id="admin-queue-refused"),
        ], id="admin-queue-page")
    return html.Div([
        html.H1("Queue", className="h3 mb-1"),
        html.P(["Queued and running runs in the order the dispatcher sends them: per member fair share "
                "of recent GPU time (weighted), small runs first within a member; an admin's move "
                "comes before fair share. Weights and daily caps are set on the ",
                dcc.Link("Users", href="/admin/users"), " page."], className="text-muted small"),
        html.Div(id="admin-queue-message", className="mb-2"),
        dbc.Card([dbc.CardHeader("Dispatch order"),
                  dbc.CardBody(html.Div(queue_table(queue_admin.queue_rows()), id="admin-queue-area"))],
                 class_name="mb-3"),
        dbc.Card([dbc.CardHeader("Members: share weight and recent GPU use"),
                  dbc.CardBody(html.Div(members_table(queue_admin.member_rows()), id="admin-members-area"))],
                 class_name="mb-3"),
        dcc.ConfirmDialog(id="admin-queue-confirm", message=""),
        dcc.Store(id="admin-queue-pending"),
        dcc.Store(id="admin-queue-request"),
        dcc.Interval(id="admin-queue-refresh", interval=REFRESH_MS),
    ], id="admin-queue-page")


def _message(text: str, colour: str) -> Any:
    return dbc.Alert(text, color=colour, class_name="py-2 mb-0", id="admin-queue-alert")


def _error_text(exc: Exception) -> str:
    if isinstance(exc, SubmissionError):
        return "; ".join(exc.messages)
    if isinstance(exc, RunNotFound):
        return f"no run {exc.args[0]!r}"
    return str(exc)


@callback(
    Output("admin-queue-area", "children"),
    Output("admin-members-area", "children"),
    Input("admin-queue-refresh", "n_intervals"),
    prevent_initial_call=True,
)
def _refresh(_tick):
    if not current_user.is_admin:
        return dash.no_update, dash.no_update
    return queue_table(queue_admin.queue_rows()), members_table(queue_admin.member_rows())


# A click becomes a request in a store, in the browser: the table is rebuilt every few seconds, and
# each rebuild fires a callback on the buttons (new components); done on the server, that call
# would supersede a click's call in flight and Dash would drop the click's answer.
clientside_callback(
    """
    function(top, bottom, cancel) {
        const clicked = (window.dash_clientside.callback_context.triggered || []).filter(t => t.value);
        if (!clicked.length) { return window.dash_clientside.no_update; }
        const id = JSON.parse(clicked[0].prop_id.slice(0, clicked[0].prop_id.lastIndexOf(".")));
        return {run: id.index, action: id.type, at: Date.now()};
    }
    """,
    Output("admin-queue-request", "data"),
    Input({"type": "queue-top", "index": ALL}, "n_clicks"),
    Input({"type": "queue-bottom", "index": ALL}, "n_clicks"),
    Input({"type": "queue-cancel", "index": ALL}, "n_clicks"),
    prevent_initial_call=True,
)


@callback(
    Output("admin-queue-message", "children"),
    Output("admin-queue-area", "children", allow_duplicate=True),
    Output("admin-queue-confirm", "displayed"),
    Output("admin-queue-confirm", "message"),
    Output("admin-queue-pending", "data"),
    Input("admin-queue-request", "data"),
    prevent_initial_call=True,
)
def _act(request):
    keep = dash.no_update
    if not isinstance(request, dict) or not isinstance(request.get("run"), str):
        return keep, keep, False, keep, keep
    if not current_user.is_admin:
        return _message("Only administrators may change the queue.", "danger"), keep, False, keep, keep
    run_id, kind = request["run"], request.get("action")
    if kind == "queue-cancel":
        return keep, keep, True, f"Cancel run {run_id}? Its owner sees that you cancelled it.", run_id
    if kind not in ("queue-top", "queue-bottom"):
        return keep, keep, False, keep, keep
    where = "top" if kind == "queue-top" else "bottom"
    try:
        moved = queue_admin.move_run(current_user, run_id, where)
    except (NotAllowed, RunNotFound, SubmissionError) as exc:
        return _message(_error_text(exc), "danger"), queue_table(queue_admin.queue_rows()), False, keep, keep
    text = f"Moved {run_id} to the {where} of its queue." if moved else f"{run_id} already was at the {where}."
    return _message(text, "success"), queue_table(queue_admin.queue_rows()), False, keep, keep


@callback(
    Output("admin-queue-message", "children", allow_duplicate=True),
    Output("admin-queue-area", "children", allow_duplicate=True),
    Input("admin-queue-confirm", "submit_n_clicks"),
    State("admin-queue-pending", "data"),
    prevent_initial_call=True,
)
def _confirm_cancel(confirmed, run_id):
    if not confirmed or not run_id:
        return dash.no_update, dash.no_update
    try:
        changed = queue_admin.cancel_any(current_user, run_id)
    except (NotAllowed, RunNotFound, SubmissionError) as exc:
        return _message(_error_text(exc), "danger"), dash.no_update
    text = f"Cancelled {run_id}." if changed else f"{run_id} had already ended or was being cancelled."
    return _message(text, "warning"), queue_table(queue_admin.queue_rows())
