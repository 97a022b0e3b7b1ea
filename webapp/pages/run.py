"""The permanent page of one run: ``/runs/<run_id>``.

While the run is queued or running, an interval (1 s) polls
``runs_service.get_run`` and updates the status in place; once the run is
terminal the interval disables itself and sets ``run-finished``, and a callback
of its own then draws the kind's view (``webapp.views.<kind>.render``) once,
without a page reload. The view is never an output of the poll: Dash drops a
response when a newer request for the same outputs is in flight, so a view
that takes longer than one tick to build (a loaded machine, a big run) would be
superseded by every next tick and never appear.

A queued run shows its place in the dispatcher's plan (``webapp.run_queue``,
worded by ``webapp.queue_text``): "3rd in the GPU queue, estimated start ~14:05
UTC (in 4 min; median of 5 past grid runs of this size)", or why it is held.

A running run whose heartbeat is late (or whose worker process Celery reported
dead) shows "worker lost? ..." beside its status as soon as a poll sees it
(``run_health.heartbeat_state``); the Reproducibility card lists every
attempt (worker, device, start, end, outcome, error).

The management card (``webapp.run_manage``): title, tags, a Markdown note
(escaped), star, delete and the history of changes; a deleted run's page says
who deleted it and when.

Invariants: anyone logged in may view; the Cancel button is shown to the owner
and admins only and ``runs_service.cancel_run`` checks again; the traceback is
only ever obtained through ``runs_service.traceback_for``. Every user string
(title, prompts, error, traceback) is a text child, never HTML.
"""

from __future__ import annotations

import logging
from typing import Any

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from flask_login import current_user

from models.base import utcnow
from webapp import run_manage, run_management, run_queue, runs_service
from webapp.components import (
    attempts_table,
    card,
    flatten,
    format_duration,
    format_time,
    heartbeat_warning,
    kv_table,
    progress_percent,
    status_badge,
    status_colour,
)
from webapp.queue_text import place_text
from webapp.run_health import heartbeat_state
from webapp.runs_service import NotAllowed, RunNotFound
from webapp.shard_table import shards_table
from webapp.views import get_view

log = logging.getLogger(__name__)

dash.register_page(__name__, path_template="/runs/<run_id>", name="Run",
                   title="Run · Latent Atlas")

POLL_MS = 1000
EXPORT_FORMATS = (("JSON", "json"), ("NPZ", "npz"), ("ZIP", "zip"))


# --------------------------------------------------------------------------- parts


def _may_change(run) -> bool:
    return bool(current_user.is_admin or run.owner_id == current_user.id)


def status_line(run) -> list[Any]:
    parts: list[Any] = [status_badge(run.status, id="run-status-badge", class_name="me-2 fs-6")]
    if run.status == "queued":
        planned = run_queue.planned_run(run)
        if planned is not None:
            text = place_text(planned.position, planned.estimated_start, planned.basis, planned.held_reason,
                              run.queue, utcnow())
            parts.append(html.Span(text, id="run-queue-position",
                                   className="text-warning me-2" if planned.held_reason else "text-muted me-2"))
    if run.cancel_requested and not run.is_terminal:
        parts.append(html.Span("cancel requested", className="text-warning me-2"))
    warning = heartbeat_warning(heartbeat_state(run.status, run.heartbeat_at).warning)
    if warning is not None:
        parts.append(warning)
    return parts


def times_rows(run) -> list[tuple[str, str]]:
    return [
        ("created", format_time(run.created_at)),
        ("started", format_time(run.started_at)),
        ("finished", format_time(run.finished_at)),
        ("duration", format_duration(run.duration_s)),
    ]


def failure_part(run) -> Any:
    if run.status != "failed" and not run.error:
        return None
    children: list[Any] = [html.Strong("The run failed: " if run.status == "failed" else "Note: "),
                           html.Span(run.error or "no message recorded", id="run-error-message")]
    trace = runs_service.traceback_for(current_user, run)
    if trace:
        children.append(html.Details([html.Summary("Traceback (visible to the owner and admins)"),
                                      html.Pre(trace, className="atlas-traceback mb-0")],
                                     className="mt-2"))
    return dbc.Alert(children, color="danger" if run.status == "failed" else "warning",
                     id="run-failure")


def exports_part(run) -> Any:
    if run.deleted_at is not None:
        return html.P("A deleted run has nothing to export.", className="text-muted mb-0")
    formats = EXPORT_FORMATS if run.status == "succeeded" else EXPORT_FORMATS[:1]
    buttons = [
        dbc.Button(f"Download {label}", href=f"/api/runs/{run.id}/export?format={fmt}",
                   external_link=True, color="secondary", outline=True, size="sm",
                   class_name="me-2", id=f"run-export-{fmt}")
        for label, fmt in formats
    ]
    return html.Div(buttons)


def params_part(run) -> Any:
    params = dict(run.params or {})
    rows: list[tuple[str, Any]] = []
    prompts = params.pop("prompts", None)
    for key, value in params.items():
        rows.extend(flatten(value, key))
    if isinstance(prompts, list):
        rows.append((f"prompts ({len(prompts)})",
                     html.Ol([html.Li(html.Code(str(p), className="atlas-prompt")) for p in prompts],
                             className="mb-0 ps-3", id="run-prompts")))
    rows.append(("params hash", html.Code(run.params_hash[:16] + "…")))
    return kv_table(rows, id="run-params")


def record_part(run) -> Any:
    env = dict(run.environment or {})
    rows: list[tuple[str, Any]] = [("worker", run.worker or "—"), ("device", run.device or "—"),
                                   ("attempts", str(run.attempts)), ("queue", run.queue)]
    rows.extend(flatten(env) if env else [("environment", "recorded when the run starts")])
    timings = dict(run.timings or {})
    timing_rows = [(stage, format_duration(seconds) if isinstance(seconds, int | float) else str(seconds))
                   for stage, seconds in timings.items()]
    shard_rows = runs_service.shard_records(run.id)
    attempts = (html.P(f"Ran as {len(shard_rows)} shards: each shard's attempts are below.",
                       className="text-muted mb-0", id="run-attempts")
                if shard_rows and not run.attempt_records else attempts_table(run.attempt_records or []))
    return html.Div([
        kv_table(rows, id="run-environment"),
        html.H6("Attempts", className="mt-3"),
        attempts,
        shards_table(shard_rows),
        html.H6("Timings", className="mt-3"),
        kv_table(timing_rows, id="run-timings") if timing_rows
        else html.P("No timings yet.", className="text-muted mb-0"),
    ])


def view_part(run) -> Any:
    if run.deleted_at is not None:
        return html.P("This run was deleted; there is nothing to draw.", className="text-muted")
    if run.status != "succeeded":
        if run.is_terminal:
            verb = "failed" if run.status == "failed" else f"was {run.status}"
            return html.P(f"This run {verb}; there is nothing to draw.",
                          className="text-muted")
        return html.Div(
            [dbc.Spinner(size="sm", color="primary", spinner_class_name="me-2"),
             "The result appears here when the run has finished."],
            className="text-muted atlas-waiting",
        )
    view = get_view(run.kind)
    if view is None:
        return dbc.Alert(f"The portal has no view for run kind {run.kind!r} yet; "
                         "use the exports below.", color="info")
    try:
        # A view may name the arrays it draws (``ARRAYS``), so large ones it never shows stay on disk.
        return view.render(run, runs_service.load_arrays(run, getattr(view, "ARRAYS", None)))
    except Exception as exc:  # a broken artifact must not take the page down
        log.exception("could not render run %s", run.id)
        return dbc.Alert(f"Could not draw this run's view: {type(exc).__name__}: {exc}",
                         color="danger", id="run-view-error")


def live_outputs(run) -> tuple:
    """Values of the polled outputs, in the order of the poll callback."""
    percent = progress_percent(run.progress, run.status)
    active = run.status == "running"
    return (
        status_line(run),
        percent,
        f"{percent}%",
        status_colour(run.status),
        active,
        active,
        run.stage or run.status,
        kv_table(times_rows(run)),
        {"display": "inline-block" if (not run.is_terminal and _may_change(run)) else "none"},
        failure_part(run),
        exports_part(run),
        record_part(run),
        run.is_terminal,
    )


# --------------------------------------------------------------------------- layout


def _not_found(run_id: str):
    return html.Div(
        [
            html.H1("Run not found", className="h3"),
            html.P(["No run with ID ", html.Code(run_id), "."], id="run-not-found"),
            dbc.Button("Browse runs", href="/runs", color="primary"),
        ],
        id="run-page",
    )


def layout(run_id: str | None = None, **_kwargs):
    run_id = run_id or ""
    try:
        run = runs_service.get_run(run_id)
    except RunNotFound:
        return _not_found(run_id)
    (status, percent, label, colour, animated, _striped, stage, times, cancel_style,
     failure, exports, record, terminal) = live_outputs(run)
    return html.Div(
        [
            dcc.Store(id="run-id", data=run.id),
            dcc.Location(id="run-location", refresh=True),
            run_manage.deleted_banner(run),
            dcc.Interval(id="run-poll", interval=POLL_MS, disabled=terminal),
            dcc.Store(id="run-finished", data=terminal),
            html.H1(run.title or "Untitled run", className="h3 mb-1", id="run-title"),
            html.Div(
                [
                    html.Code(run.id, id="run-id-text", className="me-3"),
                    html.Span(f"{run.kind} · {run.model} · by {run.owner.username if run.owner else '?'}",
                              className="text-muted"),
                ],
                className="mb-3",
            ),
            dbc.Card(
                dbc.CardBody([
                    dbc.Row([
                        dbc.Col([
                            html.Div(status, id="run-status", className="mb-2"),
                            dbc.Progress(id="run-progress", value=percent, label=label,
                                         color=colour, striped=animated, animated=animated,
                                         style={"height": "1.25rem"}),
                            html.Div(stage, id="run-stage", className="text-muted small mt-1"),
                            html.Div([
                                dbc.Button("Cancel run", id="run-cancel", color="danger",
                                           outline=True, size="sm", n_clicks=0,
                                           style=cancel_style, class_name="mt-2"),
                                html.Span(id="run-cancel-message", className="ms-2 small"),
                            ]),
                        ], md=7),
                        dbc.Col(html.Div(times, id="run-times"), md=5),
                    ]),
                ]),
                class_name="mb-3",
            ),
            html.Div(failure, id="run-failure-area"),
            html.Div(view_part(run), id="run-view", className="mb-3"),
            dbc.Row([
                dbc.Col(card("Parameters", params_part(run)), lg=6),
                dbc.Col(card("Reproducibility", html.Div(record, id="run-record")), lg=6),
            ]),
            card("Export", html.Div(exports, id="run-exports")),
            card("Title, tags, note and history", run_manage.manage_part(run, current_user)),
        ],
        id="run-page",
    )


# --------------------------------------------------------------------------- callbacks


@callback(
    Output("run-status", "children"),
    Output("run-progress", "value"),
    Output("run-progress", "label"),
    Output("run-progress", "color"),
    Output("run-progress", "animated"),
    Output("run-progress", "striped"),
    Output("run-stage", "children"),
    Output("run-times", "children"),
    Output("run-cancel", "style"),
    Output("run-failure-area", "children"),
    Output("run-exports", "children"),
    Output("run-record", "children"),
    Output("run-poll", "disabled"),
    Output("run-finished", "data"),
    Input("run-poll", "n_intervals"),
    State("run-id", "data"),
    prevent_initial_call=True,
)
def _poll(_tick, run_id):
    try:
        run = runs_service.get_run(run_id)
    except RunNotFound:
        return (*([dash.no_update] * 12), True, dash.no_update)
    outputs = live_outputs(run)
    return (*outputs, True if run.is_terminal else dash.no_update)


@callback(
    Output("run-view", "children"),
    Input("run-finished", "data"),
    State("run-id", "data"),
    prevent_initial_call=True,
)
def _draw_view(finished, run_id):
    """The kind's view, drawn once when the poll saw the run end (never inside the 1-s poll)."""
    if not finished:
        return dash.no_update
    try:
        return view_part(runs_service.get_run(run_id))
    except RunNotFound:
        return dash.no_update


@callback(
    Output("run-cancel-message", "children"),
    Output("run-poll", "disabled", allow_duplicate=True),
    Output("run-history-area", "children", allow_duplicate=True),
    Input("run-cancel", "n_clicks"),
    State("run-id", "data"),
    prevent_initial_call=True,
)
def _cancel(clicks, run_id):
    keep = dash.no_update
    if not clicks:
        return keep, keep, keep
    try:
        run_management.cancel_recorded(current_user, run_id)  # recorded in the run's history
        run = runs_service.get_run(run_id)
    except NotAllowed as exc:
        return html.Span(str(exc), className="text-danger"), keep, keep
    except RunNotFound:
        return html.Span("The run no longer exists.", className="text-danger"), keep, keep
    history = run_manage.history_part(run_id)
    if run.status == "cancelled":
        return html.Span("Cancelled.", className="text-warning"), False, history
    return html.Span("Cancel requested; the worker stops after the current batch.",
                     className="text-warning"), False, history
