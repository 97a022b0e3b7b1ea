"""The ``sae`` run page's layout: four linked views over one store of the current latent.

Views (tabs): the latent browser (← → step, ``g`` focuses the id box, search by
label), the UMAP explorer (every latent, WebGL; a click shows its examples
beside the map), the similarity graph (a latent's neighbourhood, its cluster or
every latent; cosine / Jaccard / co-activation edges) and the cluster point
cloud (picked latents, PCA 2D/3D, incremental updates with their time shown).

Invariants: the run page loads no arrays for this view (``ARRAYS`` is empty);
``webapp.views.sae.data`` reads what each view needs, row by row; the current
latent is ``sae-latent`` (an int), set only through ``parse_latent``; the
picked latents of the cloud are ``sae-cloud-picked``; component IDs start with
``sae-``. Keys come from ``webapp/assets/sae_keys.js`` (it clicks
``sae-prev`` / ``sae-next`` and focuses ``sae-goto``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import dcc, html

from webapp.views.sae.data import EDGE_KINDS, SaeData, load_sae_data
from webapp.views.sae.figures import umap_figure
from webapp.views.sae.graph import SCOPES

ARRAYS: list[str] = []  # the run page loads nothing; see the module docstring
UMAP_COLOURS = {"spectral": "spectral cluster", "components": "top-2 component", "density": "density"}
CLOUD_COLOURS = {"token": "token", "latent": "latent (largest)", "position": "position"}
CLICK_MODES = {"open": "opens the latent", "add": "adds it to the cloud"}


def umap_colours(data: SaeData, mode: str) -> dict[str, Any]:
    if mode == "density":
        return {"colour": "density", "density": data.small["density"]}
    return {"colour": "cluster", "clusters": data.small[f"cluster_{mode}"]}


def _radio(component_id: str, options: Mapping[str, str], value: str) -> dbc.RadioItems:
    return dbc.RadioItems(id=component_id, value=value, inline=True, class_name="small",
                          options=[{"label": label, "value": key} for key, label in options.items()])


def browser_tab(data: SaeData) -> html.Div:
    return html.Div([
        dbc.Row([
            dbc.Col(dbc.ButtonGroup([
                dbc.Button("◀ prev", id="sae-prev", n_clicks=0, size="sm", outline=True, color="secondary"),
                dbc.Button("next ▶", id="sae-next", n_clicks=0, size="sm", outline=True, color="secondary"),
            ]), width="auto"),
            dbc.Col(dbc.InputGroup([
                dbc.InputGroupText("go to (g)"),
                dbc.Input(id="sae-goto", type="text", size="sm", debounce=False, maxlength=20,
                          placeholder=f"0–{data.d_sae - 1}", style={"width": "7rem"}),
                dbc.Button("Go", id="sae-goto-button", n_clicks=0, size="sm", color="primary"),
            ], size="sm"), width="auto"),
            dbc.Col(dbc.Input(id="sae-search", type="search", size="sm", debounce=True, maxlength=100,
                              placeholder="search labels…"), md=3),
            dbc.Col(dbc.Button("Add to cloud", id="sae-browser-add", n_clicks=0, size="sm", outline=True,
                               color="success"), width="auto"),
            dbc.Col(html.Span(id="sae-latent-timing", className="small text-muted"), width="auto"),
        ], class_name="g-2 align-items-center mb-2"),
        html.Div(id="sae-search-results", className="mb-2"),
        html.Div(id="sae-latent-error"),
        dcc.Loading(html.Div(id="sae-latent-view"), type="circle", delay_show=400),
        html.P("Keys: ← → previous / next latent, g: type an id.", className="small text-muted mt-2"),
    ], id="sae-browser", className="pt-2")


def umap_tab(data: SaeData) -> html.Div:
    figure = umap_figure(data.small["umap"], data.labels, **umap_colours(data, "spectral"))
    return html.Div([
        dbc.Row([dbc.Col(html.Span("colour:", className="small"), width="auto"),
                 dbc.Col(_radio("sae-umap-colour", UMAP_COLOURS, "spectral"), width="auto")],
                class_name="g-2 align-items-center"),
        dbc.Row([
            dbc.Col(dcc.Graph(id="sae-umap", figure=figure, config={"scrollZoom": True, "displaylogo": False}),
                    lg=8),
            dbc.Col([
                html.Div([dbc.Button("Open in browser", id="sae-umap-open", n_clicks=0, size="sm",
                                     color="primary", class_name="me-2"),
                          dbc.Button("Add to cloud", id="sae-umap-add", n_clicks=0, size="sm", outline=True,
                                     color="success")], className="mb-2"),
                html.Div(html.P("Click a latent on the map to see its examples here.", className="text-muted"),
                         id="sae-umap-examples"),
            ], lg=4),
        ]),
    ], className="pt-2")


def graph_tab(data: SaeData, edges_k: int) -> html.Div:
    return html.Div([
        dbc.Row([
            dbc.Col([html.Span("edges: ", className="small"), _radio("sae-graph-edges", EDGE_KINDS, "cosine")],
                    width="auto"),
            dbc.Col([html.Span("show: ", className="small"), _radio("sae-graph-scope", SCOPES, "neighbourhood")],
                    width="auto"),
            dbc.Col(dbc.InputGroup([dbc.InputGroupText("top-k"),
                                    dbc.Input(id="sae-graph-k", type="number", min=1, max=edges_k, step=1,
                                              value=min(5, edges_k), style={"width": "5rem"})], size="sm"),
                    width="auto"),
            dbc.Col(dbc.InputGroup([dbc.InputGroupText("depth"),
                                    dbc.Select(id="sae-graph-depth", value="2",
                                               options=[{"label": "1", "value": "1"}, {"label": "2", "value": "2"}])],
                                   size="sm"), width="auto"),
            dbc.Col([html.Span("a click ", className="small"), _radio("sae-graph-click", CLICK_MODES, "open")],
                    width="auto"),
        ], class_name="g-2 align-items-center"),
        html.Div(id="sae-graph-info", className="small text-muted"),
        dcc.Graph(id="sae-graph", config={"scrollZoom": True, "displaylogo": False}),
    ], className="pt-2")


def cloud_tab(data: SaeData) -> html.Div:
    return html.Div([
        dbc.Row([
            dbc.Col(dbc.InputGroup([
                dbc.Input(id="sae-cloud-input", type="text", size="sm", maxlength=20, placeholder="latent id",
                          style={"width": "7rem"}),
                dbc.Button("Add", id="sae-cloud-add-button", n_clicks=0, size="sm", color="success"),
            ], size="sm"), width="auto"),
            dbc.Col(dbc.InputGroup([
                dbc.Button("Add the current latent's cluster", id="sae-cloud-add-cluster", n_clicks=0, size="sm",
                           outline=True, color="success"),
                dbc.Select(id="sae-cloud-cluster-kind", value="spectral", size="sm",
                           options=[{"label": "spectral", "value": "spectral"},
                                    {"label": "top-2 component", "value": "components"}]),
            ], size="sm"), width="auto"),
            dbc.Col(dbc.Button("Clear", id="sae-cloud-clear", n_clicks=0, size="sm", outline=True,
                               color="secondary"), width="auto"),
            dbc.Col(_radio("sae-cloud-dims", {"2": "2D", "3": "3D"}, "2"), width="auto"),
            dbc.Col([html.Span("colour: ", className="small"), _radio("sae-cloud-colour", CLOUD_COLOURS, "latent")],
                    width="auto"),
        ], class_name="g-2 align-items-center mb-2"),
        html.Div(id="sae-cloud-message"),
        html.Div(id="sae-cloud-chips", className="mb-1"),
        html.Div(id="sae-cloud-timing", className="small text-muted mb-1"),
        dcc.Graph(id="sae-cloud", config={"scrollZoom": True, "displaylogo": False}),
    ], className="pt-2")


def summary_part(data: SaeData) -> html.Div:
    s = data.summary
    note = s.get("corpus_note")
    parts = [f"{data.d_sae:,} latents", f"d_in {s.get('d_in', '?')}", f"hook layer {s.get('hook_layer', '?')}",
             f"{data.n_tokens:,} tokens harvested"]
    requested = s.get("tokens_requested")
    if isinstance(requested, int) and requested != data.n_tokens:
        parts.append(f"{requested:,} asked for")
    dropped = s.get("outliers_dropped")
    if isinstance(dropped, int) and str(s.get("outlier_rule", "")).startswith("rows"):
        parts.append(f"{dropped:,} attention-sink outlier{'' if dropped == 1 else 's'} not encoded "
                     "(norm > 10× the batch median)")
    elif isinstance(dropped, int):
        parts.append("outliers kept (drop_outliers off)")
    return html.Div([html.Span(" · ".join(parts)),
                     html.Div(str(note), className="text-muted small") if note else None],
                    id="sae-summary", className="mb-2")


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The four linked views of a finished ``sae`` run (the run page calls this)."""
    del arrays  # nothing is preloaded; SaeData reads per view
    try:
        data = load_sae_data(run.id)
    except LookupError as exc:
        return dbc.Alert(f"This run cannot be drawn: {exc}", color="warning", id="sae-missing")
    edges_k = int(data.store_shape("edge_cosine_idx")[1]) if data.d_sae else 1
    return html.Div([
        dcc.Store(id="sae-run", data={"run": run.id, "d_sae": data.d_sae}),
        dcc.Store(id="sae-latent", data=None),
        dcc.Store(id="sae-umap-clicked", data=None),
        dcc.Store(id="sae-cloud-picked", data=[]),
        dcc.Store(id="sae-cloud-key", data=uuid.uuid4().hex),
        summary_part(data),
        dbc.Tabs([
            dbc.Tab(browser_tab(data), label="Latent browser", tab_id="sae-tab-browser"),
            dbc.Tab(umap_tab(data), label="UMAP explorer", tab_id="sae-tab-umap"),
            dbc.Tab(graph_tab(data, max(edges_k, 1)), label="Similarity graph", tab_id="sae-tab-graph"),
            dbc.Tab(cloud_tab(data), label="Point cloud", tab_id="sae-tab-cloud"),
        ], id="sae-tabs", active_tab="sae-tab-browser"),
    ], id="sae-view")
