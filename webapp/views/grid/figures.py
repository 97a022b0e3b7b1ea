"""Grid views: the token-map figure, its legend and the cell details (pure: data in, figure out)."""

from __future__ import annotations

import html as html_lib
import math
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import plotly.graph_objects as go
from dash import Patch, html

from webapp.components import kv_table
from webapp.views.grid.data import (
    COLOR_MODES,
    HOVER_LINES,
    HOVER_TOP1_CELLS,
    LEGEND_ROWS,
    MAP_HEIGHT,
    MAX_TEXT_SIDE,
    PALETTE,
    PLOT_PX,
    SCALES,
    GridData,
    axis_titles,
    cell_label,
    cell_rgb,
    cell_values,
    discrete_colorscale,
    text_is_dark,
    token_label,
    value_range,
)

# --------------------------------------------------------------------------- legend


def legend_entries(data: GridData, rows: int = LEGEND_ROWS) -> list[dict[str, Any]]:
    """The most frequent top-1 tokens with their share of the map, then one "other" row.

    Shares are counts over N², so all rows together sum to 1.
    """
    ids, counts = np.unique(data.top1, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    entries = [{"id": int(ids[i]), "token": data.token(int(ids[i])), "cells": int(counts[i]),
                "share": counts[i] / total, "colour": data.colour(int(ids[i]))}
               for i in order[:rows]]
    rest = order[rows:]
    if len(rest):
        cells = int(counts[rest].sum())
        other = "other token" if len(rest) == 1 else "other tokens"
        entries.append({"id": None, "token": f"{len(rest)} {other}", "cells": cells,
                        "share": cells / total, "colour": None})
    return entries


def share_text(share: float) -> str:
    """``12.3%``; a share that rounds to nothing but is not zero reads ``<0.1%``."""
    return "<0.1%" if 0 < share < 0.0005 else f"{100 * share:.1f}%"


def legend_component(entries: list[dict[str, Any]]) -> Any:
    items = []
    for entry in entries:
        swatch = html.Span(className="atlas-grid-swatch",
                           style={"backgroundColor": entry["colour"] or "transparent"})
        name = (html.Code(token_label(entry["token"]), className="atlas-grid-token")
                if entry["id"] is not None else html.Span(entry["token"], className="text-muted"))
        ident = html.Span(f"#{entry['id']}", className="text-muted small") if entry["id"] is not None else None
        items.append(html.Tr([
            html.Td(swatch), html.Td(name), html.Td(ident),
            html.Td(share_text(entry["share"]), className="text-end"),
            html.Td(f"{entry['cells']:,}", className="text-end text-muted small"),
        ]))
    return dbc.Table(html.Tbody(items), size="sm", borderless=True, class_name="mb-0 atlas-grid-legend")


# --------------------------------------------------------------------------- figure


def hover_lines(data: GridData) -> int:
    """How many top-k lines each cell's hover text carries (0: coordinates only)."""
    cells = data.n * data.n
    if cells > HOVER_TOP1_CELLS:
        return 0
    return max(1, min(data.k, HOVER_LINES // cells))


def hover_texts(data: GridData, lines: int | None = None) -> np.ndarray:
    """Escaped hover text per cell (N, N): top tokens with id and probability, entropy (nats)."""
    lines = hover_lines(data) if lines is None else lines
    ids = data.top_ids[..., :lines]
    distinct = np.unique(ids)
    names = {int(t): html_lib.escape(token_label(data.token(int(t))), quote=False) for t in distinct}
    out = np.empty((data.n, data.n), dtype=object)
    probs, entropy = data.top_probs, data.entropy
    for j in range(data.n):
        for i in range(data.n):
            parts = [f"{names[int(ids[j, i, r])]} #{int(ids[j, i, r])} {100 * float(probs[j, i, r]):.1f}%"
                     for r in range(lines)]
            parts.append(f"entropy {float(entropy[j, i]):.3f}")
            out[j, i] = "<br>".join(parts)
    return out


def heatmap_style(data: GridData, mode: str) -> dict[str, Any]:
    """The Heatmap properties that depend on the colour mode."""
    if mode == "token":
        return dict(z=data.colour_slot(data.top1), colorscale=discrete_colorscale(),
                    zmin=-0.5, zmax=len(PALETTE) - 0.5, showscale=False)
    low, high = value_range(data, mode)
    title = "top-1 probability" if mode == "probability" else "entropy (nats)"
    scale = SCALES[mode]
    stops = [[index / (len(scale) - 1), colour] for index, colour in enumerate(scale)]
    return dict(z=cell_values(data, mode), colorscale=stops, zmin=low, zmax=high,
                showscale=True, colorbar=dict(title=dict(text=title), thickness=14))


def heatmap_trace(data: GridData, mode: str = "token") -> go.Heatmap:
    lines = hover_lines(data)
    coords = "x %{x:.4~g} · y %{y:.4~g}"
    if lines:
        more = f"<br><i>click for the top-{data.k}</i>" if lines < data.k else ""
        template = coords + "<br>%{customdata}" + more + "<extra></extra>"
        custom = hover_texts(data, lines)
    else:
        template = coords + "<br>click for the top tokens<extra></extra>"
        custom = None
    return go.Heatmap(x=data.xs, y=data.ys, customdata=None if custom is None else custom.tolist(),
                      hovertemplate=template,
                      xgap=0, ygap=0, name="cells", **heatmap_style(data, mode))


def full_window(data: GridData) -> tuple[int, int, int, int]:
    return 0, data.n - 1, 0, data.n - 1


def index_range(axis: np.ndarray, low: float, high: float) -> tuple[int, int]:
    """Indices of the grid points whose coordinate lies in [low, high] (may be empty: i0 > i1)."""
    low, high = min(low, high), max(low, high)
    step = float(axis[1] - axis[0]) if len(axis) > 1 else 1.0
    first = max(0, math.ceil((low - axis[0]) / step - 1e-9))
    last = min(len(axis) - 1, math.floor((high - axis[0]) / step + 1e-9))
    return first, last


def window_cells(data: GridData, window: Mapping[str, Any] | None) -> tuple[int, int, int, int]:
    """``(i0, i1, j0, j1)`` of the cells inside ``window`` (``{"x": [lo, hi] | None, "y": ...}``)."""
    i0, i1, j0, j1 = full_window(data)
    window = window or {}
    if window.get("x"):
        i0, i1 = index_range(data.xs, *window["x"])
    if window.get("y"):
        j0, j1 = index_range(data.ys, *window["y"])
    return i0, i1, j0, j1


def text_props(data: GridData, mode: str, window: Mapping[str, Any] | None) -> dict[str, Any]:
    """x, y, text and font of the token text trace for the visible ``window``.

    Empty when more than ``MAX_TEXT_SIDE`` cells a side are visible.
    """
    i0, i1, j0, j1 = window_cells(data, window)
    wide, high = i1 - i0 + 1, j1 - j0 + 1
    if wide <= 0 or high <= 0 or max(wide, high) > MAX_TEXT_SIDE:
        return dict(x=[], y=[], text=[], textfont=dict(size=10, color=[]))
    px_per_cell = PLOT_PX / max(wide, high)
    size = int(min(16, max(7, px_per_cell * 0.32)))
    max_chars = max(1, int(px_per_cell / (0.62 * size)))
    jj, ii = np.mgrid[j0 : j1 + 1, i0 : i1 + 1]
    ids = data.top1[jj, ii]
    dark = text_is_dark(cell_rgb(data, mode)[jj, ii])
    labels = {int(t): html_lib.escape(cell_label(data.token(int(t)), max_chars), quote=False)
              for t in np.unique(ids)}
    return dict(
        x=data.xs[ii].ravel().tolist(), y=data.ys[jj].ravel().tolist(),
        text=[labels[int(t)] for t in ids.ravel()],
        textfont=dict(size=size, color=np.where(dark.ravel(), "#111111", "#FFFFFF").tolist()),
    )


def token_map_figure(data: GridData, mode: str = "token",
                     window: Mapping[str, Any] | None = None) -> go.Figure:
    """The token map: heatmap of the cells, token text when zoomed in, state markers."""
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {mode!r} (use one of {', '.join(COLOR_MODES)})")
    fig = go.Figure()
    fig.add_trace(heatmap_trace(data, mode))
    fig.add_trace(go.Scatter(mode="text", hoverinfo="skip", showlegend=False, name="tokens",
                             **text_props(data, mode, window)))
    if data.state_coords is not None:
        coords = np.asarray(data.state_coords, dtype=np.float64)
        fig.add_trace(go.Scatter(
            x=coords[:, 0], y=coords[:, 1], mode="markers+text", name="states",
            text=[f"s{i}" for i in range(len(coords))], textposition="top right",
            marker=dict(symbol="circle-open", size=14, color="#000000", line=dict(width=2)),
            hovertemplate="state s%{pointNumber} at (%{x}, %{y})<extra></extra>", showlegend=False,
        ))
    x_title, y_title = axis_titles(data.summary)
    dx, dy = data.spacing(data.xs), data.spacing(data.ys)
    x_range = [float(data.xs[0] - dx / 2), float(data.xs[-1] + dx / 2)]
    y_range = [float(data.ys[0] - dy / 2), float(data.ys[-1] + dy / 2)]
    window = window or {}
    fig.update_layout(
        template="plotly_white", height=MAP_HEIGHT, margin=dict(l=60, r=20, t=20, b=60),
        xaxis=dict(title=dict(text=x_title), range=window.get("x") or x_range,
                   constrain="domain", showgrid=False, zeroline=False),
        yaxis=dict(title=dict(text=y_title), range=window.get("y") or y_range,
                   constrain="domain", scaleanchor="x", scaleratio=dx / dy if dy else 1,
                   showgrid=False, zeroline=False),
        hoverlabel=dict(bgcolor="white", font=dict(family="monospace", size=12)),
        dragmode="zoom",
    )
    return fig


def window_from_relayout(relayout: Mapping[str, Any] | None,
                         previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The visible window after a relayout event, or ``None`` if the event changed no axis."""
    if not relayout:
        return None
    window = dict(previous or {"x": None, "y": None})
    changed = False
    for axis in ("x", "y"):
        name = f"{axis}axis"
        if relayout.get(f"{name}.autorange"):
            window[axis], changed = None, True
        elif f"{name}.range[0]" in relayout and f"{name}.range[1]" in relayout:
            window[axis] = sorted([float(relayout[f"{name}.range[0]"]),
                                   float(relayout[f"{name}.range[1]"])])
            changed = True
        elif isinstance(relayout.get(f"{name}.range"), list | tuple) and len(relayout[f"{name}.range"]) == 2:
            window[axis] = sorted(float(v) for v in relayout[f"{name}.range"])
            changed = True
    return window if changed else None


def map_patch(data: GridData, mode: str, window: Mapping[str, Any] | None, *,
              colours: bool = False, ranges: bool = False) -> Patch:
    """A patch of a map figure: the text trace always, the colours and axis ranges on request."""
    patch = Patch()
    if colours:
        for key, value in heatmap_style(data, mode).items():
            patch["data"][0][key] = value
    for key, value in text_props(data, mode, window).items():
        patch["data"][1][key] = value
    if ranges:
        window = window or {}
        for axis in ("x", "y"):
            if window.get(axis):
                patch["layout"][f"{axis}axis"]["range"] = list(window[axis])
                patch["layout"][f"{axis}axis"]["autorange"] = False
            else:
                patch["layout"][f"{axis}axis"]["autorange"] = True
    return patch


# --------------------------------------------------------------------------- cell details


def cell_at(data: GridData, x: float, y: float) -> tuple[int, int] | None:
    """``(j, i)`` of the cell at coordinates (x, y), or None outside the grid."""
    i = int(round((float(x) - data.xs[0]) / data.spacing(data.xs)))
    j = int(round((float(y) - data.ys[0]) / data.spacing(data.ys)))
    if 0 <= i < data.n and 0 <= j < data.n:
        return j, i
    return None


def cell_details(data: GridData, j: int, i: int) -> Any:
    """The click panel of cell (j, i): coordinates, entropy and the top-k."""
    rows = [
        html.Tr([html.Td(f"{r + 1}."), html.Td(html.Code(token_label(data.token(int(data.top_ids[j, i, r]))))),
                 html.Td(f"#{int(data.top_ids[j, i, r])}", className="text-muted small"),
                 html.Td(f"{100 * float(data.top_probs[j, i, r]):.2f}%", className="text-end")])
        for r in range(data.k)
    ]
    return html.Div([
        kv_table([("x, y", f"{data.xs[i]:.6g}, {data.ys[j]:.6g}"), ("cell (i, j)", f"{i}, {j}"),
                  ("entropy", f"{float(data.entropy[j, i]):.4f} nats")]),
        dbc.Table(html.Tbody(rows), size="sm", borderless=True, class_name="mt-2 mb-0 atlas-grid-topk"),
    ])


