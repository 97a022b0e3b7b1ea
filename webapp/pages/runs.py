"""Browse runs: a sortable, filterable grid fed by ``runs_service.list_runs``.

The quick filters go to the service (the database filters; a tag, and "★ mine":
the runs the viewer starred); deleted runs are never listed; the grid's own
column filters and sorting act on the rows shown. The grid refreshes every few
seconds so running runs move on; the Note column says when a running run's
heartbeat is late (its worker may be lost and a retry is coming). Titles are
plain text cells; the ID column is Markdown built by
``components.run_link_markdown`` (escaped, HTML not allowed).

A queued run's Place and Est. start come from the dispatcher's plan (the
fields ``list_runs`` adds, worded by ``webapp.queue_text``; the tooltip gives
the whole phrase with the estimate's basis, or why the run is held).

Bulk actions: tick rows (the checkbox column), pick cancel / delete / add tag /
remove tag, confirm a dialog that names the count; ``run_bulk.bulk_apply``
checks every run first (a member may act on their own runs only, an admin on
any) and records each change in that run's history.
"""

from __future__ import annotations

import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from flask_login import current_user

from latent_atlas.analyses import KINDS
from latent_atlas.settings import get_settings
from models import RunStatus
from models.base import utcnow
from webapp import run_bulk, runs_service, users_service
from webapp.components import normalise_run_id, run_rows
from webapp.queue_text import row_place
from webapp.runs_service import NotAllowed, RunFilter, RunNotFound, SubmissionError

dash.register_page(__name__, path="/runs", name="Runs", title="Runs · Latent Atlas")

REFRESH_MS = 3000
ROW_LIMIT = 500
BULK_OPTIONS = [{"label": "Cancel", "value": "cancel"}, {"label": "Delete", "value": "delete"},
                {"label": "Add tag", "value": "add_tag"}, {"label": "Remove tag", "value": "remove_tag"}]

COLUMNS = [
    {"field": "id_link", "headerName": "ID", "cellRenderer": "markdown", "width": 150,
     "pinned": "left", "cellClass": "font-monospace"},
    {"field": "title", "headerName": "Title", "flex": 2, "minWidth": 160},
    {"field": "tags", "headerName": "Tags", "width": 150},
    {"field": "kind", "headerName": "Kind", "width": 120},
    {"field": "model", "headerName": "Model", "width": 170},
    {"field": "owner", "headerName": "Owner", "width": 120},
    {"field": "status", "headerName": "Status", "width": 125,
     "cellClassRules": {f"atlas-cell-{s.value}": f"params.value === '{s.value}'"
                        for s in RunStatus}},
    {"field": "queue_position", "headerName": "Place", "width": 100, "tooltipField": "place_text",
     "filter": "agNumberColumnFilter", "cellClass": "atlas-place",
     "valueFormatter": {"function": "params.data ? params.data.place : ''"}},
    {"field": "start", "headerName": "Est. start", "width": 190, "tooltipField": "place_text"},
    {"field": "progress", "headerName": "Progress", "width": 115, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '' : params.value + '%'"}},
    {"field": "warning", "headerName": "Note", "width": 260, "cellClass": "text-danger",
     "tooltipField": "warning"},
    {"field": "created", "headerName": "Created", "width": 200, "sort": "desc",
     "cellDataType": "text", "filter": "agTextColumnFilter"},
    {"field": "duration_s", "headerName": "Duration", "width": 120,
     "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.1f')(params.value) + ' s'"}},
]


def _options(values) -> list[dict]:
    return [{"label": v, "value": v} for v in values]


def _filters():
    settings = get_settings()
    users = [u["username"] for u in users_service.list_users()]
    select = dict(clearable=True, className="atlas-filter")
    return dbc.Row(
        [
            dbc.Col(dcc.Dropdown(id="runs-filter-kind", options=_options(KINDS),
                                 placeholder="Kind", **select), md=2),
            dbc.Col(dcc.Dropdown(id="runs-filter-model", options=_options(settings.models),
                                 placeholder="Model", **select), md=2),
            dbc.Col(dcc.Dropdown(id="runs-filter-owner", options=_options(users),
                                 placeholder="Owner", **select), md=2),
            dbc.Col(dcc.Dropdown(id="runs-filter-status", options=_options(s.value for s in RunStatus),
                                 placeholder="Status", **select), md=2),
            dbc.Col(dbc.Input(id="runs-filter-text", type="search", debounce=400,
                              placeholder="Search title or ID"), md=2),
            dbc.Col(dbc.Input(id="runs-filter-tag", type="search", debounce=400,
                              placeholder="Tag"), md=1),
            dbc.Col(dbc.Checklist(id="runs-filter-starred", options=[{"label": "★ mine", "value": "starred"}],
                                  value=[], switch=True), md=1, class_name="pt-1"),
        ],
        class_name="g-2 mb-3",
    )


def layout(**_kwargs):
    return html.Div(
        [
            dcc.Location(id="runs-location", refresh="callback-nav"),
            dbc.Row(
                [
                    dbc.Col(html.H1("Runs", className="h3 mb-0"), md=6),
                    dbc.Col(
                        dbc.InputGroup([
                            dbc.Input(id="runs-open-id", placeholder="Run ID", type="text",
                                      class_name="font-monospace"),
                            dbc.Button("Open run", id="runs-open-button", color="primary",
                                       n_clicks=0),
                        ], size="sm"),
                        md={"size": 4, "offset": 2},
                    ),
                ],
                class_name="align-items-center mb-3",
            ),
            html.Div(id="runs-open-message"),
            _filters(),
            _bulk_bar(),
            dag.AgGrid(
                id="runs-grid",
                columnDefs=COLUMNS,
                rowData=[],
                defaultColDef={"sortable": True, "filter": True, "resizable": True,
                               "floatingFilter": True},
                getRowId="params.data.id",
                dashGridOptions={"animateRows": False, "pagination": True,
                                 "paginationPageSize": 50, "tooltipShowDelay": 300,
                                 "rowSelection": {"mode": "multiRow", "checkboxes": True,
                                                  "headerCheckbox": True, "selectAll": "filtered",
                                                  "enableClickSelection": False}},
                style={"height": "70vh"},
                className="ag-theme-quartz atlas-grid",
            ),
            html.Div(id="runs-count", className="text-muted small mt-2"),
            dcc.Interval(id="runs-refresh", interval=REFRESH_MS),
        ],
        id="runs-page",
    )


def _bulk_bar():
    """Select rows (checkboxes), pick an action, confirm the count: ``webapp.run_bulk`` does the rest."""
    return dbc.Row(
        [
            dbc.Col(html.Span("No runs selected", id="runs-bulk-count", className="text-muted small"),
                    width="auto", class_name="pt-1"),
            dbc.Col(dbc.Select(id="runs-bulk-action", options=BULK_OPTIONS, value="cancel", size="sm"),
                    width="auto"),
            dbc.Col(dbc.Input(id="runs-bulk-tag", placeholder="Tag", size="sm", maxlength=50,
                              style={"display": "none"}), width="auto"),
            dbc.Col(dbc.Button("Apply to selected", id="runs-bulk-apply", size="sm", color="secondary",
                               n_clicks=0, disabled=True), width="auto"),
            dbc.Col(html.Div(id="runs-bulk-result"), class_name="small"),
            dcc.ConfirmDialog(id="runs-bulk-confirm", message=""),
            dcc.Store(id="runs-bulk-pending"),
        ],
        class_name="g-2 mb-2 align-items-center", id="runs-bulk",
    )


def filter_from(kind, model, owner, status, text, tag=None, starred_by: int | None = None) -> RunFilter:
    return RunFilter(kind=kind or None, model=model or None, owner=owner or None,
                     status=status or None, text=(text or "").strip() or None,
                     tag=(tag or "").strip() or None, starred_by=starred_by, limit=ROW_LIMIT)


@callback(
    Output("runs-grid", "rowData"),
    Output("runs-count", "children"),
    Input("runs-refresh", "n_intervals"),
    Input("runs-filter-kind", "value"),
    Input("runs-filter-model", "value"),
    Input("runs-filter-owner", "value"),
    Input("runs-filter-status", "value"),
    Input("runs-filter-text", "value"),
    Input("runs-filter-tag", "value"),
    Input("runs-filter-starred", "value"),
)
def _load_rows(_tick, kind, model, owner, status, text, tag, starred):
    mine = current_user.id if starred else None
    summaries = runs_service.list_runs(filter_from(kind, model, owner, status, text, tag, mine))
    now = utcnow()
    rows = [{**row, "queue_position": summary.get("queue_position"), **row_place(summary, now)}
            for row, summary in zip(run_rows(summaries), summaries, strict=True)]
    more = " (the newest; narrow the filters to see older ones)" if len(rows) >= ROW_LIMIT else ""
    return rows, f"{len(rows)} runs{more}"


@callback(
    Output("runs-location", "href"),
    Output("runs-open-message", "children"),
    Input("runs-open-button", "n_clicks"),
    Input("runs-open-id", "n_submit"),
    State("runs-open-id", "value"),
    prevent_initial_call=True,
)
def _open_run(_clicks, _submit, value):
    run_id = normalise_run_id(value)
    if run_id is None:
        return dash.no_update, dbc.Alert("Enter a run ID (letters, digits, '-' and '_').",
                                         color="warning", class_name="py-2")
    return f"/runs/{run_id}", None


@callback(
    Output("runs-bulk-count", "children"),
    Output("runs-bulk-apply", "disabled"),
    Output("runs-bulk-tag", "style"),
    Input("runs-grid", "selectedRows"),
    Input("runs-bulk-action", "value"),
)
def _bulk_selection(selected, action):
    count = len(selected or [])
    tag_style = {"display": "block"} if action in ("add_tag", "remove_tag") else {"display": "none"}
    text = f"{count} run{'s' if count != 1 else ''} selected" if count else "No runs selected"
    return text, count == 0, tag_style


@callback(
    Output("runs-bulk-confirm", "displayed"),
    Output("runs-bulk-confirm", "message"),
    Output("runs-bulk-pending", "data"),
    Output("runs-bulk-result", "children", allow_duplicate=True),
    Input("runs-bulk-apply", "n_clicks"),
    State("runs-grid", "selectedRows"),
    State("runs-bulk-action", "value"),
    State("runs-bulk-tag", "value"),
    prevent_initial_call=True,
)
def _bulk_ask(clicks, selected, action, tag):
    """Ask with the count ("Delete 3 runs?"); the IDs asked about are the ones acted on."""
    ids = [row["id"] for row in selected or [] if isinstance(row, dict) and row.get("id")]
    if not clicks or not ids:
        return False, dash.no_update, None, dash.no_update
    if action in ("add_tag", "remove_tag") and not (tag or "").strip():
        return False, dash.no_update, None, _result("Type the tag to add or remove.", "warning")
    pending = {"ids": ids, "action": action, "tag": (tag or "").strip() or None}
    return True, run_bulk.describe(action, len(ids), pending["tag"]), pending, None


@callback(
    Output("runs-bulk-result", "children"),
    Output("runs-grid", "deselectAll"),
    Output("runs-refresh", "n_intervals"),
    Input("runs-bulk-confirm", "submit_n_clicks"),
    State("runs-bulk-pending", "data"),
    State("runs-refresh", "n_intervals"),
    prevent_initial_call=True,
)
def _bulk_apply(confirmed, pending, ticks):
    if not confirmed or not pending:
        return dash.no_update, dash.no_update, dash.no_update
    try:
        result = run_bulk.bulk_apply(current_user, pending["ids"], pending["action"], pending.get("tag"))
    except (NotAllowed, RunNotFound, SubmissionError) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, SubmissionError) else (
            f"no run {exc.args[0]!r}" if isinstance(exc, RunNotFound) else str(exc))
        return _result(text, "danger"), dash.no_update, dash.no_update
    done = len(result.changed)
    words = {"cancel": "cancelled", "delete": "deleted", "add_tag": f"tagged {result.tag!r}",
             "remove_tag": f"untagged {result.tag!r}"}[result.action]
    text = f"{done} run{'s' if done != 1 else ''} {words}"
    if result.unchanged:
        text += f"; {len(result.unchanged)} already so (left alone)"
    return _result(text + ".", "success"), True, (ticks or 0) + 1


def _result(text: str, colour: str):
    return html.Span(text, className=f"text-{colour}", id="runs-bulk-message")
