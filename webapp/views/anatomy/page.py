"""The anatomy run page: layout (``render``) and callbacks.

Sections: the model (summary table, parameter tree, the architecture
diagram: clicking a block opens that layer below; drawn flat (SVG) at load, in
3D (WebGL: seconds to draw in a browser without a GPU) on request), then tabs
for attention (one head at a time, every layer x head as a thumbnail sheet,
rollout), token activations (click a cell: that token's top MLP neurons),
embeddings, saliency and the logit lens.

What is drawn at load is what the page needs first, all in the layout (no
callback round trip; built once per run, ``first_view``): the diagram, the
thumbnail sheet and head 0 of layer 0 (a URL's head replaces it through
``_choose``). The rollout, below them, is drawn on request ("Draw the
rollout", then it follows the layer): drawn at load, its reply arrived just
as the visible figures were done and kept the page busy for another second.
A hidden tab's graphs are not in the layout at all (an empty ``dcc.Graph``
is still a Plotly plot to build): its callback puts them in the tab's
``...-box`` container when the tab is opened.

Invariants:

* the layer and head come from inputs, the URL (``?layer=3&head=2``), a
  diagram click or a thumbnail click; every source goes through
  ``data.check_index`` / ``data.parse_query``, and an out-of-range value shows
  a message naming the valid range and changes nothing else;
* a head or a rollout layer is read alone from the stored tensor
  (``data.head_pattern`` / ``data.rollout_layer``), never the whole tensor;
* figures come from ``latent_atlas.analyses.anatomy.figures`` (shared with
  the notebook); component IDs start with ``anatomy-``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html

from latent_atlas.analyses.anatomy import figures as af
from webapp.components import kv_table
from webapp.views.anatomy import parts
from webapp.views.anatomy.data import (
    AnatomyData,
    check_index,
    from_run,
    load,
    parse_query,
    rollout_layer,
)
from webapp.views.anatomy.export import html_bundle_zip
from webapp.views.anatomy.first_view import first_figures, head_figure

LENS_WINDOW = 32
GRAPH_CONFIG = {"displaylogo": False}


def _graph(ident: str, figure: Any = None, **kwargs: Any) -> dcc.Graph:
    return dcc.Graph(id=ident, figure=figure if figure is not None else {"data": [], "layout": {"height": 80}},
                     config=GRAPH_CONFIG, **kwargs)


def _index_input(ident: str, label: str, high: int) -> Any:
    return dbc.InputGroup([dbc.InputGroupText(label),
                           dbc.Input(id=ident, type="number", value=0, min=0, max=high, step=1,
                                     debounce=True)], size="sm", style={"width": "11rem"})


def _box(ident: str) -> html.Div:
    """Where a hidden tab's graph ``ident`` goes once its tab is opened (``ident``-box)."""
    return html.Div(html.P("Drawn when this tab is opened.", className="text-muted small"), id=f"{ident}-box")


def _model_section(data: AnatomyData) -> Any:
    s = data.summary
    return dbc.Row([
        dbc.Col([dbc.Card([dbc.CardHeader("Model"), dbc.CardBody(kv_table(parts.summary_rows(data),
                                                                             id="anatomy-summary"))],
                          class_name="mb-3"),
                 dbc.Card([dbc.CardHeader("Parameters per module"),
                           dbc.CardBody(parts.parameter_tree(s.get("parameters") or {}), id="anatomy-tree",
                                        style={"maxHeight": "26rem", "overflowY": "auto"})], class_name="mb-3")],
                lg=5),
        dbc.Col([dbc.Row([
                     dbc.Col(html.P("Click a block to open its layer in the views below (hover shows shapes).",
                                    className="text-muted small mb-1")),
                     dbc.Col(dbc.RadioItems(id="anatomy-arch-view", value="flat", inline=True,
                                            options=[{"label": "flat", "value": "flat"},
                                                     {"label": "3D (rotate)", "value": "3d"}],
                                            class_name="small"), width="auto")]),
                 _graph("anatomy-architecture", first_figures(data)[0])], lg=7),
    ])


def _activations_tab(data: AnatomyData) -> Any:
    return dbc.Row([
        dbc.Col([
            html.P("Click a cell to list that token's top MLP neurons at that layer.", className="text-muted small"),
            _box("anatomy-resid"),
            _box("anatomy-mlp"),
        ], lg=9),
        dbc.Col(dbc.Card([dbc.CardHeader("Top MLP neurons"),
                          dbc.CardBody(html.P("Click a cell of a heatmap.", className="text-muted mb-0"),
                                       id="anatomy-neurons")]), lg=3),
    ])


def _attention_tab(data: AnatomyData) -> Any:
    kv = int(data.summary.get("n_kv_heads") or data.n_heads)
    note = (f"Grouped-query attention: {data.n_heads} query heads share {kv} key/value heads; "
            "each query head has its own pattern and is shown on its own." if kv != data.n_heads else "")
    return html.Div([
        dbc.Row([
            dbc.Col(_index_input("anatomy-layer", "layer", data.n_layers - 1), width="auto"),
            dbc.Col(_index_input("anatomy-head", "head", data.n_heads - 1), width="auto"),
            dbc.Col(html.Small(f"layers 0..{data.n_layers - 1}, query heads 0..{data.n_heads - 1}. {note}",
                               className="text-muted"), class_name="pt-1"),
        ], class_name="g-2 mb-2"),
        html.Div(id="anatomy-url-error"),
        html.Div(id="anatomy-index-error"),
        dbc.Row([
            dbc.Col(dcc.Loading(_graph("anatomy-head-figure", first_figures(data)[2])), lg=7),
            dbc.Col([html.P("Every layer × head (pooled; shade = √(value ÷ that head’s maximum)); click one to enlarge it.",
                            className="text-muted small mb-1"),
                     _graph("anatomy-sheet", first_figures(data)[1])], lg=5),
        ]),
        html.P(["Attention rollout (Abnar & Zuidema 2020): head-mean attention plus the residual, "
                "multiplied through the layers up to the chosen one. ",
                dbc.Button("Draw the rollout", id="anatomy-rollout-show", n_clicks=0, size="sm", color="secondary",
                           outline=True, class_name="ms-1")], className="text-muted small mt-3 mb-1"),
        dcc.Loading(html.Div(id="anatomy-rollout-box")),
    ])


def _embeddings_tab(data: AnatomyData) -> Any:
    emb = data.summary.get("embedding") or {}
    rows = int(emb.get("prompt_rows") or 0)
    ids = data.arrays["embed_ids"][:rows]
    options = [{"label": f"{parts.visible(data.vocab(int(i)))}", "value": r} for r, i in enumerate(ids)]
    return dbc.Row([
        dbc.Col([dbc.RadioItems(id="anatomy-embed-dims", value=2, inline=True,
                                options=[{"label": "2D", "value": 2}, {"label": "3D", "value": 3}]),
                 _box("anatomy-embed")], lg=8),
        dbc.Col([dbc.Label("Nearest tokens (cosine, whole vocabulary) of"),
                 dbc.Select(id="anatomy-embed-token", options=options, value=0 if options else None),
                 html.Div(parts.neighbour_table(data, 0) if options else None, id="anatomy-neighbours",
                          className="mt-2"),
                 html.Small(f"{emb.get('projection', 'pca').upper()} of the prompt's {rows} distinct tokens and "
                            f"{emb.get('sample', 0)} sampled vocabulary rows.", className="text-muted")], lg=4),
    ])


def _saliency_tab(data: AnatomyData) -> Any:
    methods = [{"label": label, "value": key} for key, label in parts.SALIENCY_METHODS.items()
               if parts.saliency_scores(data, key) is not None]
    return html.Div([
        dbc.RadioItems(id="anatomy-sal-method", value="grad_input", inline=True, options=methods),
        html.Div(id="anatomy-sal-text", className="my-2"),
        _box("anatomy-sal-bars"),
        kv_table(parts.saliency_info(data.summary, data.vocab), id="anatomy-sal-info"),
    ])


def _lens_tab(data: AnatomyData) -> Any:
    t = len(data.tokens)
    start = max(0, t - LENS_WINDOW)
    decoded = int(data.summary.get("lens_decoded_from") or 0)
    note = (f"The run decoded positions {decoded}–{t - 1} (its lens_positions); earlier cells are blank. "
            "Each decoded state costs a vocabulary × width product, so a run decodes a window; "
            "submit again with a larger lens_positions for more.") if decoded > 0 else None
    return html.Div([
        dbc.InputGroup([dbc.InputGroupText("first position"),
                        dbc.Input(id="anatomy-lens-start", type="number", min=0, max=max(t - 1, 0), step=1,
                                  value=start, debounce=True),
                        dbc.InputGroupText(f"showing {LENS_WINDOW} positions of {t}")],
                       size="sm", style={"maxWidth": "28rem"}),
        html.Small(note, className="text-muted", id="anatomy-lens-window-note") if note else None,
        html.Div(id="anatomy-lens-error"),
        _box("anatomy-lens"),
        dbc.Row([
            dbc.Col(_box("anatomy-lens-last"), lg=6),
            dbc.Col(html.Div(id="anatomy-lens-table-box", style={"maxHeight": "28rem", "overflowY": "auto"}), lg=6),
        ]),
    ])


def render(run: Any, arrays: Mapping[str, np.ndarray], store_url: str | None = None) -> Any:
    """The anatomy view of a finished run (called by the run page; ``store_url``: the portal's store)."""
    try:
        data = from_run(run, arrays, store_url)
    except ValueError as exc:
        return dbc.Alert(f"This run has nothing to draw: {exc}", color="warning")
    return html.Div([
        dcc.Store(id="anatomy-run", data=run.id),
        dcc.Location(id="anatomy-location", refresh=False),
        dcc.Download(id="anatomy-download"),
        dbc.Button("Download HTML", id="anatomy-download-html", color="secondary", outline=True, size="sm",
                   n_clicks=0, class_name="mb-2 float-end",
                   title="Every view as a self-contained interactive page (the head shown below included), zipped"),
        _model_section(data),
        dbc.Tabs([
            dbc.Tab(_attention_tab(data), label="Attention", tab_id="attention"),
            dbc.Tab(_activations_tab(data), label="Activations", tab_id="activations"),
            dbc.Tab(_embeddings_tab(data), label="Embeddings", tab_id="embeddings"),
            dbc.Tab(_saliency_tab(data), label="Saliency", tab_id="saliency"),
            dbc.Tab(_lens_tab(data), label="Logit lens", tab_id="lens"),
        ], id="anatomy-tabs", active_tab="attention", class_name="mt-3"),
    ], id="anatomy-view")


# --------------------------------------------------------------------------- callbacks


def _alert(messages: list[str], ident: str = "anatomy-index-alert") -> Any:
    return dbc.Alert([html.Div(m) for m in messages], color="warning", class_name="py-1 small",
                     id=ident) if messages else None


@callback(
    Output("anatomy-layer", "value"),
    Output("anatomy-head", "value"),
    Output("anatomy-tabs", "active_tab"),
    Output("anatomy-url-error", "children"),
    Input("anatomy-location", "search"),
    Input("anatomy-architecture", "clickData"),
    Input("anatomy-sheet", "clickData"),
    State("anatomy-run", "data"),
)
def _choose(search, block_click, sheet_click, run_id):
    data = load(run_id)
    trigger = ctx.triggered_id
    no = dash.no_update
    if trigger == "anatomy-architecture":
        points = (block_click or {}).get("points") or []
        layer = next((p.get("customdata") for p in points if isinstance(p.get("customdata"), int)), None)
        if layer is None or layer < 0:
            return no, no, no, no
        return check_index("layer", layer, data.n_layers), no, "attention", None
    if trigger == "anatomy-sheet":
        point = ((sheet_click or {}).get("points") or [{}])[0]
        cell = af.sheet_cell(float(point.get("x", -1)), float(point.get("y", -1)), data.n_layers, data.n_heads)
        if cell is None:
            return no, no, no, no
        return cell[0], cell[1], "attention", None
    layer, head, errors = parse_query(search, data.n_layers, data.n_heads)
    return (no if layer is None else layer, no if head is None else head, no, _alert(errors, "anatomy-url-alert"))


@callback(
    Output("anatomy-architecture", "figure"),
    Input("anatomy-arch-view", "value"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,
)
def _show_architecture(view, run_id):
    diagram = load(run_id).summary.get("diagram") or []
    return af.architecture_figure(diagram) if view == "3d" else af.architecture_flat_figure(diagram)


@callback(
    Output("anatomy-head-figure", "figure"),
    Output("anatomy-index-error", "children"),
    Input("anatomy-layer", "value"),
    Input("anatomy-head", "value"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,  # head 0 of layer 0 is in the layout; a URL's head comes through _choose
)
def _show_head(layer, head, run_id):
    data = load(run_id)
    try:
        layer = check_index("layer", layer, data.n_layers)
        head = check_index("head", head, data.n_heads)
    except ValueError as exc:
        return dash.no_update, _alert([str(exc)])
    return head_figure(data, layer, head), None


@callback(
    Output("anatomy-rollout-box", "children"),
    Input("anatomy-layer", "value"),
    Input("anatomy-rollout-show", "n_clicks"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,
)
def _show_rollout(layer, shown, run_id):
    """The rollout through the chosen layer, once asked for (then it follows the layer)."""
    if not shown:
        return dash.no_update
    data = load(run_id)
    try:
        layer = check_index("layer", layer, data.n_layers)
    except ValueError:
        return dash.no_update  # _show_head says why
    return _graph("anatomy-rollout", af.attention_figure(rollout_layer(data, layer), data.tokens,
                                                         f"Attention rollout through block {layer}"))


@callback(
    Output("anatomy-resid-box", "children"),
    Output("anatomy-mlp-box", "children"),
    Input("anatomy-tabs", "active_tab"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,  # the page opens on the attention tab: nothing to draw here yet
)
def _show_activations(tab, run_id):
    if tab != "activations":  # a tab's graphs are made when it is opened (every graph slows the page's load)
        return dash.no_update, dash.no_update
    data = load(run_id)
    a, tokens = data.arrays, data.tokens
    return (_graph("anatomy-resid", af.layer_token_heatmap(a["resid_norm"], tokens, "Residual norm after each block")),
            _graph("anatomy-mlp", af.layer_token_heatmap(a["mlp_norm"], tokens, "MLP activity (output norm)")))


@callback(
    Output("anatomy-neurons", "children"),
    Input("anatomy-resid", "clickData"),
    Input("anatomy-mlp", "clickData"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,
)
def _show_neurons(resid_click, mlp_click, run_id):
    click = resid_click if ctx.triggered_id == "anatomy-resid" else mlp_click
    point = ((click or {}).get("points") or [{}])[0]
    data = load(run_id)
    try:
        position = int(str(point.get("x", "")).split("·", 1)[0])
        layer = int(str(point.get("y", "")).removeprefix("layer "))
        position = check_index("token", position, len(data.tokens))
        layer = check_index("layer", layer, data.n_layers)
    except ValueError:
        return dash.no_update
    return parts.neuron_table(data, layer, position)


@callback(
    Output("anatomy-embed-box", "children"),
    Output("anatomy-neighbours", "children"),
    Input("anatomy-embed-dims", "value"),
    Input("anatomy-embed-token", "value"),
    Input("anatomy-tabs", "active_tab"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,  # the page opens on the attention tab: nothing to draw here yet
)
def _show_embeddings(dims, row, tab, run_id):
    if tab != "embeddings":
        return dash.no_update, dash.no_update
    data = load(run_id)
    emb = data.summary.get("embedding") or {}
    rows = int(emb.get("prompt_rows") or 0)
    coords = data.arrays["embed_3d"] if dims == 3 else data.arrays["embed_2d"]
    strings = [data.vocab(int(i)) for i in data.arrays["embed_ids"]]
    figure = af.embedding_figure(coords, strings, rows, f"Token embeddings ({str(emb.get('projection', 'pca')).upper()}, "
                                                        f"{3 if dims == 3 else 2}D)")
    try:
        neighbours = parts.neighbour_table(data, check_index("token", row, rows)) if rows else None
    except ValueError as exc:
        neighbours = dbc.Alert(str(exc), color="warning")
    return _graph("anatomy-embed", figure), neighbours


@callback(
    Output("anatomy-sal-text", "children"),
    Output("anatomy-sal-bars-box", "children"),
    Input("anatomy-sal-method", "value"),
    Input("anatomy-tabs", "active_tab"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,  # the page opens on the attention tab: nothing to draw here yet
)
def _show_saliency(method, tab, run_id):
    if tab != "saliency":
        return dash.no_update, dash.no_update
    data = load(run_id)
    scores = parts.saliency_scores(data, method if method in parts.SALIENCY_METHODS else "grad_input")
    if scores is None:
        return dbc.Alert("This run has no such saliency.", color="warning"), dash.no_update
    label = parts.SALIENCY_METHODS.get(method, method)
    return parts.saliency_text(data.tokens, scores), _graph("anatomy-sal-bars", af.saliency_figure(
        scores, data.tokens, f"Saliency: {label}"))


@callback(
    Output("anatomy-lens-box", "children"),
    Output("anatomy-lens-error", "children"),
    Output("anatomy-lens-last-box", "children"),
    Output("anatomy-lens-table-box", "children"),
    Input("anatomy-lens-start", "value"),
    Input("anatomy-tabs", "active_tab"),
    State("anatomy-run", "data"),
    prevent_initial_call=True,  # the page opens on the attention tab: nothing to draw here yet
)
def _show_lens(start, tab, run_id):
    if tab != "lens":
        return dash.no_update, dash.no_update, dash.no_update, dash.no_update
    data = load(run_id)
    a = data.arrays
    opened = ctx.triggered_id != "anatomy-lens-start"
    last = (_graph("anatomy-lens-last", af.lens_last_figure(data.summary.get("lens_labels") or [],
                                                            a["lens_final_prob"], a["lens_entropy"], a["lens_kl"]))
            if opened else dash.no_update)
    table = parts.lens_last_table(data) if opened else dash.no_update
    try:
        start = check_index("first position", start, len(data.tokens))
    except ValueError as exc:
        return dash.no_update, _alert([str(exc)]), last, table
    ids = a["lens_ids"][:, start:start + LENS_WINDOW]
    vocab = {str(int(i)): data.vocab(int(i)) for i in np.unique(ids) if i >= 0}
    return _graph("anatomy-lens", af.lens_figure(a["lens_ids"], a["lens_probs"], data.summary.get("lens_labels") or [],
                                                 data.tokens, vocab, start, start + LENS_WINDOW)), None, last, table


@callback(
    Output("anatomy-download", "data"),
    Input("anatomy-download-html", "n_clicks"),
    State("anatomy-run", "data"),
    State("anatomy-layer", "value"),
    State("anatomy-head", "value"),
    prevent_initial_call=True,
    running=[(Output("anatomy-download-html", "disabled"), True, False)],
)
def _download(clicks, run_id, layer, head):
    if not clicks:
        return dash.no_update
    data = load(run_id)
    try:
        layer = check_index("layer", layer, data.n_layers)
        head = check_index("head", head, data.n_heads)
    except ValueError:
        layer, head = 0, 0
    return dcc.send_bytes(html_bundle_zip(data, layer, head), f"latent-atlas-{run_id}-html.zip")
