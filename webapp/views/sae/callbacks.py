"""The ``sae`` run page's callbacks: latent navigation, the four views, the cloud's picks and redraws.

Invariants: every latent id from the user (URL ``?latent=``, the ``g`` box, the
cloud's box) goes through ``parse_latent`` and a bad one shows its message
without changing anything; the browser panel and the cloud report their
server time; the UMAP highlight is patched, never redrawn; the cloud is
moved to the new pick set incrementally (``cloud_state.update``).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import ALL, Input, Output, State, callback, ctx, html

from webapp.views.sae import cloud_state
from webapp.views.sae import graph as sg
from webapp.views.sae.browser import error_box, latent_panel, short_examples, visible
from webapp.views.sae.data import LatentError, SaeData, load_sae_data
from webapp.views.sae.figures import (
    cloud_figure,
    empty_figure,
    graph_figure,
    highlight_xy,
    umap_figure,
)
from webapp.views.sae.page import CLOUD_COLOURS, umap_colours

MAX_CLOUD_POINTS = 20_000
HOVER_WINDOW = 4
ALL_GRAPH_LIMIT = 20_000  # "every latent" draws at most this many nodes


def _data(run_info: Any) -> SaeData:
    return load_sae_data((run_info or {})["run"])


def _clicked_latent(event: Any) -> int | None:
    points = (event or {}).get("points") or []
    if not points:
        return None
    value = points[0].get("customdata")
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int | float) else None


def _clicked_now() -> bool:
    """Whether the triggering pattern-matched button was really clicked (not just created)."""
    return bool(ctx.triggered and ctx.triggered[0].get("value"))


# --------------------------------------------------------------------------- navigation


@callback(
    Output("sae-latent", "data"),
    Output("sae-latent-error", "children"),
    Output("sae-tabs", "active_tab"),
    Input("url", "search"),
    Input("sae-prev", "n_clicks"),
    Input("sae-next", "n_clicks"),
    Input("sae-goto-button", "n_clicks"),
    Input("sae-goto", "n_submit"),
    Input({"type": "sae-goto-latent", "latent": ALL}, "n_clicks"),
    Input("sae-umap-open", "n_clicks"),
    Input("sae-graph", "clickData"),
    State("sae-goto", "value"),
    State("sae-latent", "data"),
    State("sae-umap-clicked", "data"),
    State("sae-graph-click", "value"),
    State("sae-run", "data"),
)
def _navigate(search, _prev, _next, _go, _submit, _hits, _open, graph_click, goto, current, umap_clicked,
              click_mode, run_info):
    data = _data(run_info)
    trigger = ctx.triggered_id
    no = dash.no_update
    try:
        if trigger in (None, "url"):
            raw = (parse_qs((search or "").lstrip("?")).get("latent") or [None])[0]
            if raw is None:
                return (current if current is not None else 0), None, no
            return data.latent_id(raw), None, no
        if trigger in ("sae-prev", "sae-next"):
            step = -1 if trigger == "sae-prev" else 1
            return ((current or 0) + step) % data.d_sae, None, no
        if trigger in ("sae-goto-button", "sae-goto"):
            return data.latent_id(goto if goto is not None else ""), None, no
        if isinstance(trigger, dict) and trigger.get("type") == "sae-goto-latent":
            if not _clicked_now():
                return no, no, no
            return data.latent_id(trigger["latent"]), None, "sae-tab-browser"
        if trigger == "sae-umap-open":
            if umap_clicked is None:
                return no, error_box("Click a latent on the map first."), no
            return data.latent_id(umap_clicked), None, "sae-tab-browser"
        if trigger == "sae-graph":
            latent = _clicked_latent(graph_click)
            if latent is None or click_mode == "add":
                return no, no, no
            return data.latent_id(latent), None, "sae-tab-browser"
    except LatentError as exc:
        return no, error_box(str(exc)), no
    return no, no, no


@callback(
    Output("sae-latent-view", "children"),
    Output("sae-latent-timing", "children"),
    Output("sae-umap", "figure", allow_duplicate=True),
    Input("sae-latent", "data"),
    State("sae-run", "data"),
    prevent_initial_call=True,
)
def _show_latent(latent, run_info):
    if latent is None:
        return dash.no_update, dash.no_update, dash.no_update
    data = _data(run_info)
    start = time.perf_counter()
    panel = latent_panel(data, data.latent(int(latent)))
    elapsed = time.perf_counter() - start
    patch = dash.Patch()
    for axis, values in highlight_xy(data.small["umap"], int(latent)).items():
        patch["data"][2][axis] = values
    timing = html.Span(f"server {1000 * elapsed:.0f} ms", id="sae-latent-ms",
                       **{"data-ms": f"{1000 * elapsed:.1f}"})
    return panel, timing, patch


@callback(
    Output("sae-search-results", "children"),
    Input("sae-search", "value"),
    State("sae-run", "data"),
    prevent_initial_call=True,
)
def _search(text, run_info):
    if not (text or "").strip():
        return None
    data = _data(run_info)
    hits = data.search(str(text)[:100])
    if not hits:
        return html.Span("no latent's label matches", className="small text-muted", id="sae-search-none")
    return html.Div([
        dbc.Button([html.Strong(f"#{j} "), visible(data.label(j))], id={"type": "sae-goto-latent", "latent": j},
                   n_clicks=0, size="sm", outline=True, color="secondary", class_name="me-1 mb-1 sae-search-hit")
        for j in hits
    ])


# --------------------------------------------------------------------------- UMAP


@callback(
    Output("sae-umap", "figure"),
    Input("sae-umap-colour", "value"),
    State("sae-latent", "data"),
    State("sae-run", "data"),
    prevent_initial_call=True,
)
def _umap_colour(mode, latent, run_info):
    data = _data(run_info)
    return umap_figure(data.small["umap"], data.labels, highlight=latent, **umap_colours(data, mode or "spectral"))


@callback(
    Output("sae-umap-clicked", "data"),
    Output("sae-umap-examples", "children"),
    Input("sae-umap", "clickData"),
    State("sae-run", "data"),
    prevent_initial_call=True,
)
def _umap_click(event, run_info):
    latent = _clicked_latent(event)
    if latent is None:
        return dash.no_update, dash.no_update
    data = _data(run_info)
    return latent, short_examples(data, data.latent(latent))


# --------------------------------------------------------------------------- graph


@callback(
    Output("sae-graph", "figure"),
    Output("sae-graph-info", "children"),
    Input("sae-latent", "data"),
    Input("sae-graph-edges", "value"),
    Input("sae-graph-scope", "value"),
    Input("sae-graph-k", "value"),
    Input("sae-graph-depth", "value"),
    State("sae-run", "data"),
)
def _graph(latent, kind, scope, k, depth, run_info):
    data = _data(run_info)
    latent = 0 if latent is None else int(latent)
    idx, val = data.edges(kind or "cosine")
    if not isinstance(k, int) or not 1 <= k <= idx.shape[1]:
        return dash.no_update, f"top-k must be a whole number from 1 to {idx.shape[1]}"
    start = time.perf_counter()
    if scope == "cluster":
        sub = sg.cluster(latent, data.cluster_members(latent), data.small["umap"], idx, val, k)
    elif scope == "all":
        if data.d_sae > ALL_GRAPH_LIMIT:
            return dash.no_update, f"every latent: at most {ALL_GRAPH_LIMIT:,} nodes are drawn; this SAE has {data.d_sae:,}"
        sub = sg.everything(data.small["umap"], idx, val, k, latent)
    else:
        sub = sg.neighbourhood(latent, idx, val, k, int(depth or 1))
    colours = data.small["cluster_spectral"][sub.nodes]
    figure = graph_figure(sub.nodes, sub.xy, sub.edges, [data.label(int(j)) for j in sub.nodes],
                          node_colour=colours, centre=sub.centre, edge_name=kind or "cosine")
    elapsed = time.perf_counter() - start
    info = (f"{len(sub.nodes):,} latents, {len(sub.edges):,} {kind} edges (top-{k}) around latent {latent}; "
            f"built in {1000 * elapsed:.0f} ms. Colour: spectral cluster.")
    return figure, info


# --------------------------------------------------------------------------- cloud


def _parse_box(data: SaeData, raw: Any) -> list[int]:
    """One id, or several separated by commas / spaces."""
    text = str(raw or "").replace(",", " ").split()
    if not text:
        raise LatentError(f"type a latent id from 0 to {data.d_sae - 1}")
    if len(text) > cloud_state.MAX_PICKED:
        raise LatentError(f"at most {cloud_state.MAX_PICKED} latents at once")
    return [data.latent_id(part) for part in text]


@callback(
    Output("sae-cloud-picked", "data"),
    Output("sae-cloud-message", "children"),
    Input("sae-cloud-add-button", "n_clicks"),
    Input("sae-cloud-input", "n_submit"),
    Input("sae-cloud-add-cluster", "n_clicks"),
    Input("sae-cloud-clear", "n_clicks"),
    Input({"type": "sae-cloud-remove", "latent": ALL}, "n_clicks"),
    Input("sae-umap-add", "n_clicks"),
    Input("sae-browser-add", "n_clicks"),
    Input("sae-graph", "clickData"),
    State("sae-graph-click", "value"),
    State("sae-cloud-input", "value"),
    State("sae-cloud-cluster-kind", "value"),
    State("sae-cloud-picked", "data"),
    State("sae-umap-clicked", "data"),
    State("sae-latent", "data"),
    State("sae-run", "data"),
    prevent_initial_call=True,
)
def _pick(_add, _submit, _cluster, _clear, removes, _umap_add, _browser_add, graph_click, click_mode, box,
          cluster_kind, picked, umap_clicked, latent, run_info):
    data = _data(run_info)
    picked = list(picked or [])
    trigger = ctx.triggered_id
    no = dash.no_update
    try:
        if trigger in ("sae-cloud-add-button", "sae-cloud-input"):
            new = _parse_box(data, box)
        elif trigger == "sae-cloud-add-cluster":
            new = data.cluster_members(data.latent_id(latent if latent is not None else 0), cluster_kind or "spectral")
        elif trigger == "sae-cloud-clear":
            return [], None
        elif isinstance(trigger, dict) and trigger.get("type") == "sae-cloud-remove":
            if not _clicked_now():
                return no, no
            return [j for j in picked if j != trigger["latent"]], None
        elif trigger == "sae-umap-add":
            if umap_clicked is None:
                return no, error_box("Click a latent on the map first.", "sae-cloud-error")
            new = [data.latent_id(umap_clicked)]
        elif trigger == "sae-browser-add":
            new = [data.latent_id(latent if latent is not None else 0)]
        elif trigger == "sae-graph":
            clicked = _clicked_latent(graph_click)
            if clicked is None or click_mode != "add":
                return no, no
            new = [data.latent_id(clicked)]
        else:
            return no, no
    except LatentError as exc:
        return no, error_box(str(exc), "sae-cloud-error")
    merged = list(dict.fromkeys([*picked, *new]))
    if len(merged) > cloud_state.MAX_PICKED:
        return no, error_box(f"at most {cloud_state.MAX_PICKED} latents in a cloud "
                             f"({len(merged)} asked)", "sae-cloud-error")
    return merged, None


def hover_texts(data: SaeData, tokens: np.ndarray, dominant: np.ndarray, window: int = HOVER_WINDOW) -> list[str]:
    """Plain-text hover per cloud point: its context (the token in brackets), position and latent."""
    arrays = data.token_arrays()
    token_id, token_doc, token_pos = arrays["token_id"], arrays["token_doc"], arrays["token_pos"]
    offsets = np.arange(-window, window + 1)
    at = np.clip(tokens[:, None] + offsets[None, :], 0, len(token_id) - 1)
    same = (token_doc[at] == token_doc[tokens][:, None]) & (tokens[:, None] + offsets[None, :] >= 0) \
        & (tokens[:, None] + offsets[None, :] < len(token_id))
    ids = token_id[at]
    unique, inverse = np.unique(ids, return_inverse=True)
    strings = np.asarray([visible(data.token_text(int(u))) for u in unique], dtype=object)[inverse.reshape(ids.shape)]
    strings[:, window] = "[" + strings[:, window] + "]"
    contexts = ["".join(row) for row in np.where(same, strings, "").tolist()]
    return [f"{text}<br>doc {doc} pos {pos} · latent {latent}" for text, doc, pos, latent in
            zip(contexts, token_doc[tokens].tolist(), token_pos[tokens].tolist(), dominant.tolist(), strict=True)]


@callback(
    Output("sae-cloud", "figure"),
    Output("sae-cloud-timing", "children"),
    Output("sae-cloud-chips", "children"),
    Input("sae-cloud-picked", "data"),
    Input("sae-cloud-dims", "value"),
    Input("sae-cloud-colour", "value"),
    State("sae-cloud-key", "data"),
    State("sae-run", "data"),
)
def _draw_cloud(picked, dims, colour, key, run_info):
    data = _data(run_info)
    picked = [int(j) for j in (picked or [])]
    chips = [dbc.Badge([f"#{j} ", html.Span(visible(data.label(j))[:30]),
                        html.Button("×", id={"type": "sae-cloud-remove", "latent": j}, n_clicks=0,
                                    className="btn-close btn-close-white ms-1 sae-cloud-remove",
                                    title=f"remove latent {j}", **{"aria-label": f"remove latent {j}"})],
                       color="secondary", class_name="me-1 mb-1 sae-cloud-chip", id=f"sae-cloud-chip-{j}")
             for j in picked]
    entry, update = cloud_state.update(data, str(key), picked)
    start = time.perf_counter()
    with entry.lock:
        projection = entry.cloud.project(int(dims or 2))
    pca_s = time.perf_counter() - start
    if not picked or not len(projection.tokens):
        message = "Pick latents: add ids, a cluster, or click in the UMAP / graph."
        return empty_figure(message), _timing(update, pca_s, 0.0, 0, 0), chips
    start = time.perf_counter()
    shown = np.arange(len(projection.tokens))
    if len(shown) > MAX_CLOUD_POINTS:
        shown = np.linspace(0, len(shown) - 1, MAX_CLOUD_POINTS).astype(np.int64)
    tokens = projection.tokens[shown]
    arrays = data.token_arrays()
    colour = colour if colour in CLOUD_COLOURS else "latent"
    if colour == "token":
        values, discrete = arrays["token_id"][tokens], True
    elif colour == "position":
        values, discrete = arrays["token_pos"][tokens], False
    else:
        values, discrete = projection.dominant[shown], True
    figure = cloud_figure(projection.coords[shown], projection.explained, colour_values=values,
                          colour_title=CLOUD_COLOURS[colour], tokens=tokens, discrete=discrete,
                          hover=hover_texts(data, tokens, projection.dominant[shown]))
    figure_s = time.perf_counter() - start
    return figure, _timing(update, pca_s, figure_s, len(projection.tokens), len(shown)), chips


def _timing(update: cloud_state.Update, pca_s: float, figure_s: float, total: int, shown: int) -> html.Span:
    change = []
    if update.added:
        change.append("+" + ", ".join(str(j) for j in update.added[:8]) + ("…" if len(update.added) > 8 else ""))
    if update.removed:
        change.append("−" + ", ".join(str(j) for j in update.removed[:8]) + ("…" if len(update.removed) > 8 else ""))
    how = "incremental update" if update.incremental else "new cloud in this web process"
    sampled = f" (showing {shown:,}, evenly sampled)" if shown < total else ""
    text = (f"{how} {' '.join(change) or '(no change)'}: {update.touched:,} activations in "
            f"{1000 * update.seconds:.1f} ms · PCA {1000 * pca_s:.1f} ms · figure {1000 * figure_s:.0f} ms · "
            f"{total:,} tokens{sampled}")
    return html.Span(text, id="sae-cloud-update", **{"data-update-ms": f"{1000 * update.seconds:.2f}",
                                                      "data-tokens": str(total),
                                                      "data-incremental": str(update.incremental).lower()})
