"""Side by side: two grid runs' token maps on one page, ``/compare?runs=ID1,ID2``.

Each map is the grid view's own map (``webapp.views.grid.map_part``) in slot
"a" or "b", so hover, click, colour mode and token text work as on the run
page. With "Link zoom" on, zooming or panning one map moves the other to the
same coordinates (meaningful when both use the same plane, e.g. one plane at
two layers); this runs in the browser (``LINK_ZOOM_JS``). Both maps are coloured
in one colour context, so a token has the same colour on both sides.

Invariants: run IDs from the query string are checked against
``RUN_ID_PATTERN`` before use; titles and token strings are text children.
A run that is not a succeeded grid run gets a message in its column, never an
error page. Nothing given is dropped silently: parts that are not run IDs,
IDs past the two shown, and runs that cannot be shown (unknown, not a grid
run, not finished) are listed with the reason above the maps (``notes``).
"""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, clientside_callback, dcc, html

from webapp import runs_service
from webapp.components import status_badge
from webapp.runs_service import RunFilter, RunNotFound
from webapp.views import grid as grid_view
from webapp.views.grid import pid, split_run_ids

dash.register_page(__name__, path="/compare", name="Side by side",
                   title="Side by side · Latent Atlas")

SLOTS = ("a", "b")
RECENT = 15


def _picker(ids: list[str]) -> html.Form:
    return html.Form(
        dbc.InputGroup([
            dbc.InputGroupText("Grid runs"),
            dbc.Input(name="runs", id="compare-runs", value=",".join(ids),
                      placeholder="ID1,ID2", class_name="font-monospace"),
            dbc.Button("Compare", type="submit", color="primary", id="compare-submit"),
        ]),
        action="/compare", method="GET", className="mb-3",
    )


def _recent_grid_runs() -> html.Div:
    rows = runs_service.list_runs(RunFilter(kind="grid", status="succeeded", limit=RECENT))
    if not rows:
        return html.P("No finished grid runs yet.", className="text-muted")
    return html.Div([
        html.H2("Recent grid runs", className="h6 mt-2"),
        dbc.Table(html.Tbody([
            html.Tr([html.Td(html.Code(r["id"])), html.Td(r.get("title") or ""), html.Td(r.get("model"))])
            for r in rows
        ]), size="sm", hover=True, class_name="mb-0", id="compare-recent"),
    ])


def _panel(run_id: str, slot: str, context: list[str]) -> html.Div:
    try:
        run = runs_service.get_run(run_id)
    except RunNotFound:
        return dbc.Alert(["No run with ID ", html.Code(run_id), "."], color="warning")
    header = html.Div([
        html.H2([dcc.Link(run.title or run.id, href=f"/runs/{run.id}"),
                 status_badge(run.status, class_name="ms-2")], className="h5 mb-0"),
        html.Div(f"{run.kind} · {run.model} · {run.id}", className="text-muted small"),
    ], className="mb-2")
    if run.kind != grid_view.KIND:
        return html.Div([header, dbc.Alert(f"This is a {run.kind} run; only grid runs can be "
                                           "shown side by side.", color="warning")])
    if run.status != "succeeded":
        position = runs_service.queue_position(run)
        where = f" (position {position} in the {run.queue} queue)" if position else ""
        return html.Div([header, dbc.Alert(f"This run is {run.status}{where}; its map appears "
                                           "here once it has succeeded.", color="info")])
    data = grid_view.load_grid(run.id, context)
    return html.Div([
        header,
        html.Div(grid_view.describe(data.summary), className="fw-semibold mb-1",
                 id=f"compare-label-{slot}"),
        *grid_view.map_part(data, slot, compare_link=False, context=context),
        dbc.Row([dbc.Col(part, md=6) for part in grid_view.side_part(data, slot)], class_name="g-2"),
    ], className="atlas-compare-panel")


def _why_not_shown(run_id: str) -> str | None:
    """Why run ``run_id`` has no map here (``None``: a succeeded grid run)."""
    try:
        run = runs_service.get_run(run_id)
    except RunNotFound:
        return f"{run_id}: no run with this ID."
    if run.kind != grid_view.KIND:
        return f"{run_id} is a {run.kind} run; only grid runs can be shown side by side."
    if run.status != "succeeded":
        return f"{run_id} is {run.status}; its map appears once it has succeeded."
    return None


def notes(text: str | None) -> tuple[list[str], list[str]]:
    """(the run IDs to show, a sentence for everything given that is not shown or cannot be)."""
    ids, extra, invalid = split_run_ids(text, len(SLOTS))
    said: list[str] = []
    if invalid:
        shown = ", ".join(repr(part[:40]) for part in invalid[:5]) + (" …" if len(invalid) > 5 else "")
        said.append(f"Not a run ID, ignored: {shown}.")
    if extra:
        said.append(f"Only {len(SLOTS)} runs can be shown side by side; ignored: {', '.join(extra)}.")
    said.extend(reason for reason in map(_why_not_shown, ids) if reason)
    return ids, said


def _is_grid_result(run_id: str) -> bool:
    return _why_not_shown(run_id) is None


def layout(runs: str | None = None, **_kwargs):
    ids, said = notes(runs)
    children: list = [html.H1("Side by side", className="h3 mb-3"), _picker(ids)]
    if said:
        children.append(dbc.Alert([html.Ul([html.Li(line) for line in said], className="mb-0 ps-3")],
                                  color="warning", class_name="small py-2", id="compare-notes"))
    if len(ids) < len(SLOTS):
        children.append(html.P("Enter two grid run IDs (for example the same plane at two layers).",
                               className="text-muted"))
        children.append(_recent_grid_runs())
        return html.Div(children, id="compare-page")
    context = [run_id for run_id in ids if _is_grid_result(run_id)]
    children.append(dbc.Switch(id="compare-link", value=True, label="Link zoom", class_name="mb-2"))
    children.append(dcc.Store(id="compare-link-sink"))
    children.append(html.P("Both maps share one colour per token.", className="text-muted small mb-2"))
    children.append(dbc.Row([dbc.Col(_panel(run_id, slot, context), lg=6)
                             for run_id, slot in zip(ids, SLOTS, strict=True)]))
    return html.Div(children, id="compare-page")


# Runs in the browser: copy the axis ranges of the map just zoomed to the other one with
# Plotly.relayout, which raises the other map's own relayout event, so its callback
# writes the token text for the new window. Ranges already equal end the exchange.
LINK_ZOOM_JS = """
function(relayoutA, relayoutB, link) {
    const dc = window.dash_clientside;
    const triggered = (dc.callback_context.triggered || [])[0];
    if (!link || !triggered || !triggered.prop_id) { return dc.no_update; }
    const id = JSON.parse(triggered.prop_id.slice(0, triggered.prop_id.lastIndexOf('.')));
    const relayout = (id.slot === 'a' ? relayoutA : relayoutB) || {};
    const other = document.getElementById(JSON.stringify({slot: id.slot === 'a' ? 'b' : 'a', type: 'grid-map'}));
    const gd = other && other.querySelector('.js-plotly-plot');
    if (!gd || !gd._fullLayout) { return dc.no_update; }
    const update = {};
    for (const axis of ['xaxis', 'yaxis']) {
        const now = gd._fullLayout[axis];
        if (relayout[axis + '.autorange']) {
            if (!now.autorange) { update[axis + '.autorange'] = true; }
            continue;
        }
        let range = relayout[axis + '.range'];
        if (!range && (axis + '.range[0]') in relayout) {
            range = [relayout[axis + '.range[0]'], relayout[axis + '.range[1]']];
        }
        if (range && (Math.abs(now.range[0] - range[0]) > 1e-9 || Math.abs(now.range[1] - range[1]) > 1e-9)) {
            update[axis + '.range'] = [range[0], range[1]];
        }
    }
    if (Object.keys(update).length) { window.Plotly.relayout(gd, update); }
    return dc.no_update;
}
"""

clientside_callback(
    LINK_ZOOM_JS,
    Output("compare-link-sink", "data"),
    Input(pid("map", "a"), "relayoutData"),
    Input(pid("map", "b"), "relayoutData"),
    State("compare-link", "value"),
    prevent_initial_call=True,
)
