"""The page of a finished scan run: the layer-time animation, the divergence curve and heatmap, exports.

Invariants:

* the animation runs in the browser: frames live in the figure, and
  ``webapp/assets/scan.js`` plays, pauses, steps (buttons, ``space``, ``[`` and
  ``]``), follows the slider and jumps to the layer clicked on the curve or the
  heatmap, without a server round trip per frame; it keeps the current frame
  in ``scan-current`` so that a redraw (colour, trails, rendering: one server
  call) starts where the user was;
* component IDs start with ``scan-``; the run page loads only ``ARRAYS``;
* user text (prompts, tokens) is a text child or ``hover_safe`` in figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, callback, dcc, html

from webapp.components import kv_table
from webapp.views.scan.data import ScanData, load_scan
from webapp.views.scan.figures import (
    COLOUR_MODES,
    RENDER_MODES,
    TRAIL_MODES,
    animation_figure,
    auto_render,
    divergence_figure,
    heatmap_figure,
)

GRAPH_ID, CURVE_ID, HEATMAP_ID = "scan-graph", "scan-curve", "scan-heatmap"
LABEL_ID, SPEED_ID, CURRENT_ID, RUN_ID = "scan-frame-label", "scan-speed", "scan-current", "scan-run"
COLOUR_ID, TRAILS_ID, RENDER_ID = "scan-colour", "scan-trails", "scan-render"
SPEEDS = {"1000": "slow (1 s)", "400": "normal (0.4 s)", "150": "fast (0.15 s)", "50": "very fast (50 ms)"}
GRAPH_CONFIG = {"displaylogo": False, "scrollZoom": True}  # not "responsive": that ignores layout.height


def summary_rows(data: ScanData) -> list[tuple[str, str]]:
    summary = data.summary
    basis = summary.get("basis") or {}
    ratio = basis.get("explained_variance_ratio") or []
    explained = ", ".join(f"{v:.1%}" for v in ratio if v is not None) or "—"
    rows = [
        ("mode", "A vs B" if data.is_diff else "one prompt"),
        ("frames", f"{data.n_frames} ({summary.get('points', '?')}; {summary.get('n_layers', '?')} blocks)"),
        ("tokens", " + ".join(str(n) for n in summary.get("n_tokens") or [])),
        ("projection", f"{basis.get('kind', '?').upper()}" + (" of unit-normalised states"
                                                            if basis.get("unit_normalise") else "")
         + (f", basis of run {basis['source_run']}" if basis.get("source_run") else "")),
        ("explained variance", explained),
    ]
    diff = summary.get("diff") or {}
    if diff:
        crossing = diff.get("first_crossing_label")
        rows += [("aligned positions", f"{diff.get('aligned')} (shared prefix {diff.get('shared_prefix')})"),
                 ("first crossing", f"{crossing} ({diff.get('threshold_metric')} > {diff.get('threshold')})"
                  if crossing else f"none ({diff.get('threshold_metric')} stays ≤ {diff.get('threshold')})")]
    return rows


def _select(ident: str, value: str, options: Mapping[str, str], label: str) -> dbc.Col:
    return dbc.Col(dbc.InputGroup([dbc.InputGroupText(label), dbc.Select(
        id=ident, value=value, options=[{"label": v, "value": k} for k, v in options.items()])], size="sm"),
        width="auto")


def _button(text: str, action: str, title: str) -> html.Button:
    return html.Button(text, className="btn btn-outline-secondary btn-sm", title=title,
                       id=f"scan-{action}", **{"data-scan-action": action})


def controls(data: ScanData) -> Any:
    return html.Div([
        dbc.Row([
            dbc.Col(html.Div([
                _button("first", "first", "first frame"), _button("◀", "prev", "step back ( [ )"),
                _button("▶ play", "play", "play (space)"), _button("❚❚ pause", "pause", "pause (space)"),
                _button("▶", "next", "step forward ( ] )"), _button("last", "last", "last frame"),
            ], className="btn-group"), width="auto"),
            _select(SPEED_ID, "400", SPEEDS, "speed"),
            dbc.Col(html.Span(["frame ", html.Strong(data.labels[0], id=LABEL_ID, **{"data-frame": "0"})],
                              className="align-middle"), width="auto", class_name="pt-1"),
        ], class_name="g-2 align-items-center mb-2"),
        dbc.Row([
            _select(COLOUR_ID, "position" if data.n_prompts == 1 else "prompt", COLOUR_MODES, "colour"),
            _select(TRAILS_ID, "last", TRAIL_MODES, "trails"),
            _select(RENDER_ID, auto_render(data), RENDER_MODES, "rendering"),
        ], class_name="g-2 mb-2"),
        html.P("Keys: space plays / pauses, [ and ] step. Drag to rotate; the axes are the same in every frame.",
               className="text-muted small mb-1"),
    ])


def exports(run_id: str) -> Any:
    links = [("HTML animation", f"/api/runs/{run_id}/scan.html", "scan-export-html"),
             ("GIF", f"/api/runs/{run_id}/scan.gif", "scan-export-gif"),
             ("arrays (NPZ)", f"/api/runs/{run_id}/export?format=npz", "scan-export-npz")]
    return html.Div(["Export: ", *[html.A(text, href=href, id=ident, className="me-3", download="")
                                   for text, href, ident in links]], className="small")


def prompts_part(data: ScanData) -> Any:
    rows = []
    for prompt in range(data.n_prompts):
        tokens = data.tokens(prompt)
        rows.append(html.Div([html.Strong(f"{'AB'[prompt]}: "), html.Span("".join(tokens),
                                                                           className="font-monospace")]))
    return html.Div(rows, className="small mb-2")


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The scan view of a finished run (called by the run page)."""
    try:
        data = ScanData.from_arrays(run.id, run.summary or {}, arrays)
    except ValueError as exc:
        return dbc.Alert(f"This run has nothing to animate: {exc}", color="warning")
    colour = "position" if data.n_prompts == 1 else "prompt"
    graph = dcc.Graph(id=GRAPH_ID, figure=animation_figure(data, colour=colour), config=GRAPH_CONFIG)
    if data.is_diff:
        side = [
            dcc.Graph(id=CURVE_ID, figure=divergence_figure(data), config=GRAPH_CONFIG),
            dcc.Graph(id=HEATMAP_ID, figure=heatmap_figure(data), config=GRAPH_CONFIG),
        ]
    else:
        side = [html.P("One prompt: no divergence curve (run in diff mode to compare two prompts).",
                       className="text-muted")]
    return html.Div([
        dcc.Store(id=RUN_ID, data=run.id), dcc.Store(id=CURRENT_ID, data=0),
        prompts_part(data),
        dbc.Row([
            dbc.Col([controls(data), graph, exports(run.id)], lg=7),
            dbc.Col([*side, dbc.Card([dbc.CardHeader("Result"), dbc.CardBody(kv_table(summary_rows(data)))],
                                     class_name="mt-2")], lg=5),
        ]),
    ], id="scan-view")


@callback(Output(GRAPH_ID, "figure"), Input(COLOUR_ID, "value"), Input(TRAILS_ID, "value"),
          Input(RENDER_ID, "value"), State(RUN_ID, "data"), State(CURRENT_ID, "data"), prevent_initial_call=True)
def _redraw(colour: str, trails: str, render_mode: str, run_id: str, current: Any):
    """A new figure for new drawing options, starting at the frame the user was on."""
    data = load_scan(str(run_id))
    colour = colour if colour in COLOUR_MODES else "position"
    trails = trails if trails in TRAIL_MODES else "last"
    render_mode = render_mode if render_mode in RENDER_MODES else auto_render(data)
    start = current if isinstance(current, int) and 0 <= current < data.n_frames else 0
    return animation_figure(data, colour=colour, trails=trails, render=render_mode, start=start)
