"""Pure figure functions of the ``sae`` run page: data in, Plotly figure out.

Invariants: every scatter that can hold one point per latent (UMAP, graph) or
one per token (the cloud) is WebGL (``Scattergl``) and carries its ids in
``customdata`` so a click names a latent or a token without a lookup; ids are
plain lists, never numpy arrays (Plotly would send those base64-encoded, and
``dcc.Graph`` then leaves ``customdata`` out of ``clickData``); hover
text is built with ``html.escape`` (token strings and labels are user data);
the graph's edges are one line trace (a NaN gap between segments), whatever
their number. ``layout.meta`` says which trace is the highlight, for patches.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

UNCLUSTERED = "#c8c8c8"
HIGHLIGHT = "#d62728"
GOLDEN = 0.6180339887498949
MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}


def _escape_all(texts: Sequence[str]) -> list[str]:
    return [html.escape(str(t)) for t in texts]


def cluster_colour_values(clusters: np.ndarray) -> np.ndarray:
    """A value in [0, 1) per cluster id spread by the golden ratio (neighbouring ids look different)."""
    return (np.asarray(clusters, dtype=np.float64) * GOLDEN) % 1.0


def histogram_figure(edges: np.ndarray, counts: np.ndarray, title: str = "Activation histogram") -> dict:
    """Bars of non-zero activation counts over the run's shared log-spaced bins (log x axis).

    A plain figure dict (no validation pass: it is drawn on every step of the browser).
    """
    edges = np.asarray(edges, dtype=np.float64)
    centres = np.sqrt(np.clip(edges[:-1], 1e-12, None) * np.clip(edges[1:], 1e-12, None))
    widths = edges[1:] - edges[:-1]
    bar = {"type": "bar", "x": centres.tolist(), "y": np.asarray(counts).tolist(), "width": widths.tolist(),
           "marker": {"color": "#1f77b4"}, "hovertemplate": "activation %{x:.3g}<br>%{y} tokens<extra></extra>"}
    counts = np.asarray(counts)
    used = np.flatnonzero(counts > 0)
    xaxis: dict = {"type": "log", "title": {"text": "activation"}}
    if used.size:  # the shared bins span every latent's range: zoom to this latent's
        low, high = edges[used[0]], edges[used[-1] + 1]
        if low > 0:
            xaxis["range"] = [float(np.log10(low)) - 0.05, float(np.log10(high)) + 0.05]
    return {"data": [bar], "layout": {"title": {"text": title}, "height": 230, "bargap": 0, "showlegend": False,
                                      "margin": {"l": 50, "r": 10, "t": 30, "b": 40}, "xaxis": xaxis,
                                      "yaxis": {"title": {"text": "tokens"}}}}


def umap_figure(umap: np.ndarray, labels: Sequence[str], *, colour: str, clusters: np.ndarray | None = None,
                density: np.ndarray | None = None, highlight: int | None = None, height: int = 560) -> go.Figure:
    """Every latent at its UMAP position (WebGL), coloured by cluster or by log10 density.

    Trace 0 holds clustered latents (or all, for density), trace 1 the unclustered
    ones (grey), trace 2 the highlighted latent; ``customdata`` is the latent id.
    """
    umap = np.asarray(umap, dtype=np.float32)
    ids = np.arange(len(umap))
    hover = [f"latent {j}: {label}" for j, label in zip(ids, _escape_all(labels), strict=True)]
    hover_arr = np.asarray(hover, dtype=object)
    marker_size = 4 if len(umap) > 5000 else 6
    traces = []
    if colour == "density" or clusters is None:
        values = np.log10(np.clip(np.asarray(density if density is not None else np.ones(len(umap))), 1e-8, None))
        traces.append(go.Scattergl(x=umap[:, 0], y=umap[:, 1], mode="markers", customdata=ids.tolist(), text=hover,
                                   hovertemplate="%{text}<extra></extra>", name="latents",
                                   marker={"size": marker_size, "color": values, "colorscale": "Viridis",
                                           "showscale": True, "colorbar": {"title": "log10 density"}}))
        traces.append(go.Scattergl(x=[], y=[], mode="markers", name="unclustered"))
    else:
        clusters = np.asarray(clusters)
        member = clusters >= 0
        traces.append(go.Scattergl(x=umap[member, 0], y=umap[member, 1], mode="markers", customdata=ids[member].tolist(),
                                   text=hover_arr[member].tolist(), hovertemplate="%{text}<extra></extra>",
                                   name="in a cluster",
                                   marker={"size": marker_size, "color": cluster_colour_values(clusters[member]),
                                           "colorscale": "Turbo", "cmin": 0, "cmax": 1}))
        traces.append(go.Scattergl(x=umap[~member, 0], y=umap[~member, 1], mode="markers",
                                   customdata=ids[~member].tolist(), text=hover_arr[~member].tolist(),
                                   hovertemplate="%{text}<extra></extra>", name="no cluster",
                                   marker={"size": marker_size, "color": UNCLUSTERED}))
    traces.append(_highlight_trace(umap, highlight, hover))
    fig = go.Figure(traces)
    fig.update_layout(height=height, margin=MARGIN, dragmode="pan", hovermode="closest", uirevision="umap",
                      showlegend=False, meta={"highlight_trace": 2},
                      xaxis={"showticklabels": False, "title": "UMAP 1"},
                      yaxis={"showticklabels": False, "title": "UMAP 2", "scaleanchor": "x"})
    return fig


def _highlight_trace(xy: np.ndarray, latent: int | None, hover: Sequence[str]) -> go.Scattergl:
    points = [] if latent is None or not 0 <= latent < len(xy) else [latent]
    return go.Scattergl(x=[float(xy[j, 0]) for j in points], y=[float(xy[j, 1]) for j in points],
                        mode="markers", customdata=points, text=[hover[j] for j in points],
                        hovertemplate="%{text}<extra></extra>", name="selected",
                        marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT, "width": 3}})


def highlight_xy(xy: np.ndarray, latent: int | None) -> dict[str, list]:
    """The highlight trace's x / y / customdata for a patch."""
    if latent is None or not 0 <= latent < len(xy):
        return {"x": [], "y": [], "customdata": []}
    return {"x": [float(xy[latent, 0])], "y": [float(xy[latent, 1])], "customdata": [int(latent)]}


def graph_figure(nodes: np.ndarray, xy: np.ndarray, edges: Sequence[tuple[int, int, float]],
                 labels: Sequence[str], *, node_colour: np.ndarray | None = None, centre: int | None = None,
                 edge_name: str = "cosine", height: int = 560) -> go.Figure:
    """A similarity graph: nodes ``nodes`` at ``xy`` (one row each), edges as one line trace (NaN gaps).

    Trace 0 is the edges, trace 1 the nodes (``customdata`` = latent id), trace 2 the centre.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    xy = np.asarray(xy, dtype=np.float64)
    where = {int(j): i for i, j in enumerate(nodes)}
    pairs = np.asarray([(where[int(a)], where[int(b)]) for a, b, _ in edges
                        if int(a) in where and int(b) in where], dtype=np.int64).reshape(-1, 2)
    gap = np.full(len(pairs), np.nan)
    # One line trace: x_a, x_b, NaN (a gap) per edge, built without a Python loop over coordinates.
    ex = np.column_stack([xy[pairs[:, 0], 0], xy[pairs[:, 1], 0], gap]).ravel()
    ey = np.column_stack([xy[pairs[:, 0], 1], xy[pairs[:, 1], 1], gap]).ravel()
    hover = [f"latent {j}: {label}" for j, label in zip(nodes.tolist(), _escape_all(labels), strict=True)]
    size = 5 if len(nodes) > 2000 else 10
    colour = (cluster_colour_values(node_colour) if node_colour is not None else "#1f77b4")
    traces = [
        go.Scattergl(x=ex, y=ey, mode="lines", hoverinfo="skip", name=f"{edge_name} edges", connectgaps=False,
                     line={"color": "rgba(120,120,120,0.35)", "width": 1}),
        go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=nodes.tolist(), text=hover,
                     hovertemplate="%{text}<extra></extra>", name="latents",
                     marker={"size": size, "color": colour, "colorscale": "Turbo", "cmin": 0, "cmax": 1,
                             "line": {"width": 0.5, "color": "#333"}}),
    ]
    centre_at = where.get(int(centre)) if centre is not None else None
    traces.append(go.Scattergl(
        x=[] if centre_at is None else [xy[centre_at, 0]], y=[] if centre_at is None else [xy[centre_at, 1]],
        customdata=[] if centre_at is None else [int(centre)], mode="markers", hoverinfo="skip", name="centre",
        marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT, "width": 3}}))
    fig = go.Figure(traces)
    fig.update_layout(height=height, margin=MARGIN, showlegend=False, hovermode="closest", dragmode="pan",
                      meta={"nodes": len(nodes), "edges": len(ex) // 3},
                      xaxis={"showticklabels": False, "zeroline": False, "showgrid": False},
                      yaxis={"showticklabels": False, "zeroline": False, "showgrid": False, "scaleanchor": "x"})
    return fig


def radial_layout(centre: int, rings: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, xy): ``centre`` at the origin, ring ``r`` of nodes evenly on a circle of radius ``r+1``."""
    nodes, xy = [centre], [(0.0, 0.0)]
    for r, ring in enumerate(rings):
        count = max(len(ring), 1)
        for i, node in enumerate(ring):
            angle = 2 * np.pi * i / count + 0.3 * r
            nodes.append(int(node))
            xy.append(((r + 1) * np.cos(angle), (r + 1) * np.sin(angle)))
    return np.asarray(nodes, dtype=np.int64), np.asarray(xy)


def cloud_figure(coords: np.ndarray, explained: np.ndarray, *, colour_values: np.ndarray,
                 colour_title: str, hover: Sequence[str], tokens: np.ndarray, discrete: bool) -> go.Figure:
    """The cluster cloud (2 or 3 columns of ``coords``), one WebGL point per token (``customdata``)."""
    coords = np.asarray(coords, dtype=np.float32)
    dims = coords.shape[1] if coords.ndim == 2 else 2
    values = cluster_colour_values(colour_values) if discrete else np.asarray(colour_values, dtype=np.float64)
    marker = {"size": 3 if dims == 3 else 5, "color": values, "colorscale": "Turbo" if discrete else "Viridis",
              "showscale": not discrete, "colorbar": {"title": colour_title}}
    if discrete:
        marker.update(cmin=0, cmax=1)
    axis = [f"PC{i + 1} ({100 * float(explained[i]):.1f}%)" for i in range(dims)]
    common = {"mode": "markers", "customdata": np.asarray(tokens).tolist(), "text": _escape_all(hover),
              "hovertemplate": "%{text}<extra></extra>", "marker": marker, "name": "tokens"}
    if dims == 3:
        fig = go.Figure(go.Scatter3d(x=coords[:, 0], y=coords[:, 1], z=coords[:, 2], **common))
        fig.update_layout(scene={"xaxis_title": axis[0], "yaxis_title": axis[1], "zaxis_title": axis[2]})
    else:
        fig = go.Figure(go.Scattergl(x=coords[:, 0], y=coords[:, 1], **common))
        fig.update_layout(xaxis_title=axis[0], yaxis_title=axis[1])
    fig.update_layout(height=560, margin=MARGIN, hovermode="closest", showlegend=False,
                      meta={"points": int(len(coords)), "explained": [float(x) for x in explained]},
                      title=f"{len(coords):,} tokens · colour: {colour_title}")
    return fig


def empty_figure(message: str, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(height=height, margin=MARGIN, xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": html.escape(message), "showarrow": False, "x": 0.5, "y": 0.5,
                                    "xref": "paper", "yref": "paper"}])
    return fig
