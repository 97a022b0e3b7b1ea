"""The run page's management card: title, tags, note, star, delete, and the history of changes.

``manage_part(run, user)`` is the card; its callbacks call
``webapp.run_management`` (which checks permissions again). Invariants: the
note is rendered as Markdown by ``dcc.Markdown`` without raw HTML (never
``dangerously_allow_html``); titles, tags and history are text children; the
edit and delete controls are shown to the owner and admins only, the star to
everyone; a deleted run shows who deleted it and when, and no controls but its
history.
"""

from __future__ import annotations

from typing import Any

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from flask_login import current_user

from webapp import run_management
from webapp.components import format_time
from webapp.runs_service import NotAllowed, RunNotFound, SubmissionError

ACTION_WORDS = {"rename": "renamed", "tags": "set tags", "note": "edited the note", "star": "starred",
                "unstar": "unstarred", "delete": "deleted the run", "cancel": "cancelled the run",
                "move": "moved the run"}


def _may_change(run: Any, user: Any) -> bool:
    return bool(getattr(user, "is_admin", False) or run.owner_id == getattr(user, "id", None))


def deleted_banner(run: Any) -> Any:
    """The alert a deleted run's page opens with (None for a live run)."""
    if run.deleted_at is None:
        return None
    events = [e for e in run_management.run_events(run.id) if e["action"] == "delete"]
    who = events[-1]["user"] if events and events[-1]["user"] else "someone"
    return dbc.Alert(f"This run was deleted by {who} on {format_time(run.deleted_at)}. Its record and "
                     "history remain; its data is gone.", color="warning", id="run-deleted")


def _what(event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    words = ACTION_WORDS.get(event["action"], event["action"])
    if event["action"] == "rename":
        return f"{words}: {detail.get('from') or '(untitled)'} → {detail.get('to') or '(untitled)'}"
    if event["action"] == "tags":
        return f"{words}: {', '.join(detail.get('to') or []) or '(none)'}"
    if event["action"] == "move":
        return (f"{words} to the {detail.get('where', '?')} of the {detail.get('queue', '')} queue "
                f"(priority {detail.get('from')} → {detail.get('to')})")
    if event["action"] == "cancel" and detail.get("to") == "running":
        return "asked the running run to stop"
    return words


def history_part(run_id: str) -> Any:
    events = run_management.run_events(run_id)
    if not events:
        return html.P("No changes yet.", className="text-muted small mb-0", id="run-history")
    return html.Ul([html.Li([html.Span(e["at"][:19].replace("T", " "), className="text-muted me-2"),
                             html.Strong(e["user"] or "?", className="me-1"), _what(e)])
                    for e in reversed(events)], className="small mb-0 ps-3", id="run-history")


def note_view(note: str) -> Any:
    """The note as Markdown (raw HTML is shown as text, never rendered)."""
    if not note:
        return html.P("No note.", className="text-muted small mb-0")
    return dcc.Markdown(note, className="atlas-note", id="run-note-view")


def manage_part(run: Any, user: Any) -> Any:
    starred = run.id in run_management.starred_by(user.id, [run.id])
    deleted = run.deleted_at is not None
    editable = _may_change(run, user) and not deleted
    controls: list[Any] = []
    if not deleted:
        controls.append(dbc.Button("★ Starred" if starred else "☆ Star", id="run-star", size="sm",
                                   color="warning", outline=not starred, n_clicks=0, class_name="me-2"))
    if editable:
        controls.append(dbc.Button("Delete run", id="run-delete", size="sm", color="danger", outline=True,
                                   n_clicks=0))
        controls.append(dcc.ConfirmDialog(id="run-delete-confirm",
                                          message="Delete this run? Its data goes; its record stays."))
    edit: list[Any] = []
    if editable:
        edit = [
            dbc.Label("Title", class_name="small mt-3 mb-0"),
            dbc.Input(id="run-edit-title", value=run.title, size="sm", maxlength=200),
            dbc.Label("Tags (comma-separated)", class_name="small mt-2 mb-0"),
            dbc.Input(id="run-edit-tags", value=", ".join(run.tags or []), size="sm"),
            dbc.Label("Note (Markdown)", class_name="small mt-2 mb-0"),
            dbc.Textarea(id="run-edit-note", value=run.note or "", rows=3, size="sm",
                         maxlength=run_management.MAX_NOTE_CHARS),
            dbc.Button("Save", id="run-edit-save", size="sm", color="primary", n_clicks=0, class_name="mt-2"),
        ]
    tags = [dbc.Badge(t, color="light", text_color="dark", class_name="me-1") for t in run.tags or []]
    return html.Div([
        html.Div(controls + [html.Span(id="run-manage-message", className="ms-2 small")]),
        html.Div(tags, id="run-tags", className="mt-2"),
        html.Div(note_view(run.note or ""), id="run-note", className="mt-2"),
        *edit,
        html.H6("History", className="mt-3"),
        html.Div(history_part(run.id), id="run-history-area"),
    ], id="run-manage")


def _tags_from(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@callback(
    Output("run-manage-message", "children"),
    Output("run-tags", "children"),
    Output("run-note", "children"),
    Output("run-title", "children"),
    Output("run-history-area", "children"),
    Input("run-edit-save", "n_clicks"),
    State("run-id", "data"),
    State("run-edit-title", "value"),
    State("run-edit-tags", "value"),
    State("run-edit-note", "value"),
    prevent_initial_call=True,
)
def _save(clicks, run_id, title, tags, note):
    keep = dash.no_update
    if not clicks:
        return keep, keep, keep, keep, keep
    try:
        run = run_management.update_run(current_user, run_id, title=title or "", tags=_tags_from(tags),
                                         note=note or "")
    except (NotAllowed, SubmissionError, RunNotFound) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, SubmissionError) else str(exc)
        return html.Span(text, className="text-danger"), keep, keep, keep, keep
    badges = [dbc.Badge(t, color="light", text_color="dark", class_name="me-1") for t in run.tags or []]
    return (html.Span("Saved.", className="text-success"), badges, note_view(run.note or ""),
            run.title or "Untitled run", history_part(run.id))


@callback(
    Output("run-star", "children"),
    Output("run-star", "outline"),
    Output("run-history-area", "children", allow_duplicate=True),
    Input("run-star", "n_clicks"),
    State("run-id", "data"),
    State("run-star", "outline"),
    prevent_initial_call=True,
)
def _star(clicks, run_id, outline):
    if not clicks:
        return dash.no_update, dash.no_update, dash.no_update
    starred = run_management.set_star(current_user, run_id, bool(outline))  # outline: not starred yet
    return ("★ Starred" if starred else "☆ Star"), not starred, history_part(run_id)


@callback(Output("run-delete-confirm", "displayed"), Input("run-delete", "n_clicks"),
          prevent_initial_call=True)
def _ask_delete(clicks):
    return bool(clicks)


@callback(
    Output("run-manage-message", "children", allow_duplicate=True),
    Output("run-location", "href"),
    Input("run-delete-confirm", "submit_n_clicks"),
    State("run-id", "data"),
    prevent_initial_call=True,
)
def _delete(confirmed, run_id):
    if not confirmed:
        return dash.no_update, dash.no_update
    try:
        run_management.delete_run(current_user, run_id)
    except (NotAllowed, SubmissionError, RunNotFound) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, SubmissionError) else str(exc)
        return html.Span(text, className="text-danger"), dash.no_update
    return html.Span("Deleted.", className="text-warning"), f"/runs/{run_id}"
