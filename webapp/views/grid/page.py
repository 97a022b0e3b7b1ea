"""The grid run page: the map's layout (``map_part``, ``side_part``, ``render``) and its callbacks.

The package ``webapp.views.grid`` re-exports the public names of its modules
(``data``, ``figures``, ``export``, ``form`` and this one), so callers import
from the package.

A grid result (``latent_atlas.analyses.grid``) holds ``top_ids`` and
``top_probs`` (N, N, k), ``entropy`` (N, N) and the axes ``xs``, ``ys``;
cell ``(j, i)`` is the point ``(xs[i], ys[j])``. Token strings live in the
summary (``tokens``: top-1 ids, ``topk_tokens``: the other top-k ids).

The map is one Plotly figure with fixed trace order: 0 the ``Heatmap`` of the
cells (x = ``xs``, y = ``ys``, so row j is drawn at ``ys[j]``), 1 a text
``Scatter`` with the token written on the cells of the visible window (only
when that window is at most ``MAX_TEXT_SIDE`` cells a side: every cell's text
at 200 x 200 is unreadable and slow), 2 (through_states only) the three
states. Colour by probability or entropy uses a continuous scale; colour by
token gives each top-1 id a slot of a Glasbey palette (``assign_colour_slots``
in ``colours``): most frequent first, each taking the free slot farthest from
the colours of the tokens whose cells touch its own, so neighbouring regions
differ. A colour context is one run (run page, PNG, JSON) or the runs shown
together (side by side), so within a context distinct tokens get distinct
colours (up to the palette's 256) and one token has one colour in the map, the
legend, the text and the PNG.

Invariants:

* token strings are model output: in Plotly text and hover (HTML-ish) they are
  ``html.escape``d; in Dash components they are plain text children;
* component IDs are pattern-matching dicts ``{"type": "grid-...", "slot": s}``
  so that one page can hold several maps (``slot`` "main" on the run page,
  "a" and "b" on ``/compare``) and the callbacks here serve them all;
* the callbacks mirror the visible axis ranges into the figure, so a patch
  (colour mode, text) never resets the user's zoom;
* exports are pure functions of the arrays and summary (``export_document``,
  ``token_map_png``); ``webapp.api`` serves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import MATCH, Input, Output, State, callback, clientside_callback, ctx, dcc, html

from webapp.components import kv_table
from webapp.views.grid.data import (
    COLOR_MODES,
    MAX_TEXT_SIDE,
    GridData,
    describe,
    load_grid,
    pid,
)
from webapp.views.grid.figures import (
    cell_at,
    cell_details,
    legend_component,
    legend_entries,
    map_patch,
    token_map_figure,
)

# --------------------------------------------------------------------------- layout


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    seconds = summary.get("seconds") or {}
    rate = summary.get("cells_per_second")
    return [
        ("grid", f"{summary.get('size', '?')} × {summary.get('size', '?')}"),
        ("layer", f"{summary.get('layer', '?')} of {summary.get('n_layers', '?')}"),
        ("plane", str(summary.get("plane", "—"))),
        ("distinct top-1 tokens", f"{summary.get('distinct_top1', '—')}"),
        ("top-k", str(summary.get("top_k", "—"))),
        ("fast path", "yes" if summary.get("fast_path") else "no"),
        ("compute dtype", str(summary.get("dtype", "—"))),
        ("cells / s", "—" if rate is None else f"{float(rate):,.0f}"),
        ("cell time", "—" if seconds.get("cells") is None else f"{float(seconds['cells']):.2f} s"),
    ]


def map_controls(run_id: str, slot: str, *, compare_link: bool = True) -> Any:
    buttons = [
        dbc.Button("Download PNG", href=f"/api/runs/{run_id}/grid.png", external_link=True,
                   color="secondary", outline=True, size="sm", class_name="me-2",
                   id=pid("png", slot)),
        dbc.Button("Download JSON", href=f"/api/runs/{run_id}/grid.json", external_link=True,
                   color="secondary", outline=True, size="sm", class_name="me-2",
                   id=pid("json", slot)),
    ]
    if compare_link:
        buttons.append(dbc.Button("Side by side…", href=f"/compare?runs={run_id}",
                                  color="link", size="sm", id=pid("compare", slot)))
    return dbc.Row([
        dbc.Col([html.Span("Colour by", className="me-2 text-muted small"),
                 dbc.RadioItems(id=pid("mode", slot), value="token", inline=True,
                                options=[{"label": v, "value": k} for k, v in COLOR_MODES.items()],
                                class_name="d-inline-block")], width="auto"),
        dbc.Col(buttons, width="auto", class_name="ms-auto"),
    ], class_name="align-items-center mb-1 g-2")


def map_part(data: GridData, slot: str, *, compare_link: bool = True,
             context: list[str] | None = None) -> list[Any]:
    """Controls, stores and the map graph of one grid run (shared with ``/compare``).

    ``context``: the run IDs of the colour context ``data`` was coloured in
    (default: this run alone); the callbacks colour in the same context.
    """
    return [
        dcc.Store(id=pid("run", slot), data=data.run_id),
        dcc.Store(id=pid("palette", slot), data=list(context or [data.run_id])),
        dcc.Store(id=pid("window", slot), data={"x": None, "y": None}),
        map_controls(data.run_id, slot, compare_link=compare_link),
        html.P(f"Zoom in (drag a box) to {MAX_TEXT_SIDE} × {MAX_TEXT_SIDE} cells or fewer to "
               "read the tokens on the cells; double-click to zoom out; click a cell for its top-k.",
               className="text-muted small mb-1"),
        dcc.Graph(id=pid("map", slot), figure=token_map_figure(data), className="atlas-grid-map",
                  config={"displaylogo": False, "scrollZoom": True}),
    ]


def side_part(data: GridData, slot: str) -> list[Any]:
    return [
        dbc.Card([dbc.CardHeader("Selected cell"),
                  dbc.CardBody(html.P("Click a cell to see its top-k tokens.", className="text-muted mb-0"),
                               id=pid("cell", slot))], class_name="mb-3"),
        dbc.Card([dbc.CardHeader("Most frequent top tokens"),
                  dbc.CardBody(legend_component(legend_entries(data)), id=pid("legend", slot))],
                 class_name="mb-3"),
    ]


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The grid view of a finished run (called by the run page)."""
    try:
        data = GridData.from_arrays(run.id, run.summary or {}, run.params or {}, arrays)
    except ValueError as exc:
        return dbc.Alert(f"This run has no token map to draw: {exc}", color="warning")
    summary = data.summary
    note = summary.get("fast_path_note")
    return html.Div(
        dbc.Row([
            dbc.Col([html.H2(describe(summary), className="h6 text-muted"), *map_part(data, "main")], lg=8),
            dbc.Col([
                *side_part(data, "main"),
                dbc.Card([dbc.CardHeader("Result"), dbc.CardBody([
                    kv_table(summary_rows(summary)),
                    html.P(str(note), className="text-muted small mt-2 mb-0") if note else None,
                ])], class_name="mb-3"),
            ], lg=4),
        ]),
        id="grid-view",
    )


# --------------------------------------------------------------------------- callbacks


# Runs in the browser on every relayout event of a map: the window store becomes the axis
# ranges the map shows now (``null`` for an axis on autorange), and changes only when they
# do. Events that move no axis (Plotly's ``{"autosize": true}`` when a map is first sized,
# which can come after a zoom) leave the store alone, so they never reach the server.
WINDOW_JS = """
function(relayout, current, id) {
    const dc = window.dash_clientside;
    const holder = document.getElementById(JSON.stringify({slot: id.slot, type: 'grid-map'}));
    const gd = holder && holder.querySelector('.js-plotly-plot');
    if (!gd || !gd._fullLayout) { return dc.no_update; }
    const next = {};
    for (const axis of ['x', 'y']) {
        const full = gd._fullLayout[axis + 'axis'];
        next[axis] = full.autorange ? null : [Math.min(full.range[0], full.range[1]),
                                               Math.max(full.range[0], full.range[1])];
    }
    const same = (a, b) => (a === null && b === null) || (a !== null && b !== null
        && Math.abs(a[0] - b[0]) < 1e-9 && Math.abs(a[1] - b[1]) < 1e-9);
    const previous = current || {};
    if (same(previous.x || null, next.x) && same(previous.y || null, next.y)) { return dc.no_update; }
    return next;
}
"""

clientside_callback(
    WINDOW_JS,
    Output(pid("window", MATCH), "data"),
    Input(pid("map", MATCH), "relayoutData"),
    State(pid("window", MATCH), "data"),
    State(pid("map", MATCH), "id"),
    prevent_initial_call=True,
)


@callback(
    Output(pid("map", MATCH), "figure"),
    Input(pid("mode", MATCH), "value"),
    Input(pid("window", MATCH), "data"),
    State(pid("run", MATCH), "data"),
    State(pid("palette", MATCH), "data"),
    prevent_initial_call=True,
)
def _update_map(mode, window, run_id, context):
    """Token text for the window the map shows (and colours on a mode change).

    Triggered only by a change of the colour mode or of the window store, whose
    value is always the map's current ranges: of several requests in flight the
    renderer keeps the last one's answer, and that one is for the window shown.
    """
    data = load_grid(run_id, context)
    trigger = ctx.triggered_id or {}
    if trigger.get("type") == "grid-mode":
        return map_patch(data, mode or "token", window, colours=True)
    return map_patch(data, mode or "token", window, ranges=True)


@callback(
    Output(pid("cell", MATCH), "children"),
    Input(pid("map", MATCH), "clickData"),
    State(pid("run", MATCH), "data"),
    prevent_initial_call=True,
)
def _show_cell(click, run_id):
    points = (click or {}).get("points") or []
    point = next((p for p in points if p.get("curveNumber", 0) == 0), None)
    if point is None or point.get("x") is None:
        return dash.no_update
    data = load_grid(run_id)
    cell = cell_at(data, point["x"], point["y"])
    if cell is None:
        return dash.no_update
    return cell_details(data, *cell)


