"""The grid run kind: its New-run form, the token map, and its PNG / JSON exports.

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
token gives each top-1 id a palette slot (``assign_colour_slots``): its hashed
home slot (``token_palette_index``), unless a more frequent token of the same
colour context already holds it, then the next free slot. A colour context is
one run (run page, PNG, JSON) or the runs shown together (side by side), so
within a context distinct tokens get distinct colours (up to the palette's
size) and one token has one colour in the map, the legend, the text and the PNG.

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

import html as html_lib
import io
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

import dash
import dash_bootstrap_components as dbc
import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from dash import MATCH, Input, Output, Patch, State, callback, ctx, dcc, html

from webapp.components import kv_table, normalise_run_id
from webapp.views import FormError, field_id

KIND = "grid"
PLANES = {
    "direct": "direct (x, y in dimensions 0 and 1)",
    "replicated": "replicated (x, y in every dimension pair)",
    "random_projection": "random projection (seeded)",
    "pca": "PCA of real states at this layer",
    "through_states": "through three real states",
}
COLOR_MODES = {"token": "top token", "probability": "probability", "entropy": "entropy"}
PALETTE: tuple[str, ...] = tuple(dict.fromkeys(
    c.upper() for c in px.colors.qualitative.Alphabet + px.colors.qualitative.Dark24
    + px.colors.qualitative.Light24))
SCALES = {"probability": px.colors.sequential.Viridis, "entropy": px.colors.sequential.Plasma}
MAX_TEXT_SIDE = 40  # cells a side at most for token text on the map
HOVER_LINES = 40_000  # top-k lines of hover text in one figure at most
HOVER_TOP1_CELLS = 70_000  # above this, hover shows coordinates only (click for tokens)
LEGEND_ROWS = 12
PLOT_PX = 640  # nominal size of the plot area, for text sizes
MAP_HEIGHT = 720
DEFAULT_SIZE = 64
STATE_COUNT = 3

# PNG export
PNG_MAX_SIDE = 16_384
PNG_TARGET_SIDE = 6_400
PNG_CELL_RANGE = (4, 64)
FONT_CANDIDATES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")


def pid(name: str, slot: str) -> dict[str, str]:
    """The pattern-matching ID of this module's component ``name`` in ``slot``."""
    return {"type": f"grid-{name}", "slot": slot}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GridData:
    """One grid result: arrays, token strings and the run's identity."""

    run_id: str
    summary: Mapping[str, Any]
    params: Mapping[str, Any]
    top_ids: np.ndarray  # (N, N, k) int
    top_probs: np.ndarray  # (N, N, k) float
    entropy: np.ndarray  # (N, N) float
    xs: np.ndarray  # (N,)
    ys: np.ndarray  # (N,)
    state_coords: np.ndarray | None = None  # (3, 2) through_states
    palette_counts: Mapping[int, int] | None = None  # colour context; None: this map alone

    @classmethod
    def from_arrays(cls, run_id: str, summary: Mapping[str, Any], params: Mapping[str, Any],
                    arrays: Mapping[str, np.ndarray]) -> GridData:
        missing = [n for n in ("top_ids", "top_probs", "entropy", "xs", "ys") if n not in arrays]
        if missing:
            raise ValueError(f"this run has no {', '.join(missing)} arrays")
        top_ids = np.asarray(arrays["top_ids"])
        if top_ids.ndim != 3 or top_ids.shape[0] != top_ids.shape[1]:
            raise ValueError(f"top_ids must be (N, N, k), not {top_ids.shape}")
        return cls(run_id, dict(summary or {}), dict(params or {}), top_ids,
                   np.asarray(arrays["top_probs"], dtype=np.float32),
                   np.asarray(arrays["entropy"], dtype=np.float32),
                   np.asarray(arrays["xs"], dtype=np.float64), np.asarray(arrays["ys"], dtype=np.float64),
                   None if "state_coords" not in arrays else np.asarray(arrays["state_coords"]))

    @property
    def n(self) -> int:
        return int(self.top_ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def top1(self) -> np.ndarray:
        return self.top_ids[..., 0]

    def token(self, token_id: int) -> str:
        key = str(int(token_id))
        for table in ("tokens", "topk_tokens"):
            value = (self.summary.get(table) or {}).get(key)
            if value is not None:
                return str(value)
        return f"(token {key})"

    def spacing(self, axis: np.ndarray) -> float:
        return float(axis[1] - axis[0]) if len(axis) > 1 else 1.0

    @cached_property
    def top1_counts(self) -> dict[int, int]:
        ids, counts = np.unique(self.top1, return_counts=True)
        return {int(t): int(c) for t, c in zip(ids, counts, strict=True)}

    @cached_property
    def _slot_table(self) -> tuple[np.ndarray, np.ndarray]:
        slots = assign_colour_slots(self.palette_counts or self.top1_counts)
        keys = np.array(sorted(slots), dtype=np.int64)
        return keys, np.array([slots[int(k)] for k in keys], dtype=np.int64)

    def colour_slot(self, ids: np.ndarray | int) -> np.ndarray:
        """Palette slots of token ids in this map's colour context (hash slot if not in it)."""
        ids = np.asarray(ids, dtype=np.int64)
        keys, slots = self._slot_table
        if not len(keys):
            return token_palette_index(ids)
        where = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        return np.where(keys[where] == ids, slots[where], token_palette_index(ids))

    def colour(self, token_id: int) -> str:
        return PALETTE[int(self.colour_slot(int(token_id)))]

    def in_context(self, others: list[GridData]) -> GridData:
        """This map coloured in the joint colour context of itself and ``others``."""
        counts: Counter[int] = Counter(self.top1_counts)
        for other in others:
            counts.update(other.top1_counts)
        return replace(self, palette_counts=dict(counts))


def load_grid(run_id: str, context: tuple[str, ...] | list[str] | None = None) -> GridData:
    """A run's map, coloured in the context of the runs ``context`` (default: itself)."""
    data = _load_grid(run_id)
    others = [r for r in (context or ()) if r != run_id]
    return data.in_context([_load_grid(r) for r in others]) if others else data


@lru_cache(maxsize=4)
def _load_grid(run_id: str) -> GridData:
    """The grid result of a succeeded run (cached: results never change once stored)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        raise ValueError(f"run {run_id} is a {run.kind} run, not a grid run")
    if run.status != "succeeded":
        raise ValueError(f"run {run_id} is {run.status}; its token map exists once it has succeeded")
    return GridData.from_arrays(run.id, run.summary or {}, run.params or {},
                                runs_service.load_arrays(run))


# --------------------------------------------------------------------------- colours


def token_palette_index(ids: np.ndarray | int) -> np.ndarray:
    """A stable palette slot per token id (a multiplicative hash of the id)."""
    h = np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(40)) % np.uint64(len(PALETTE))).astype(np.int64)


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


PALETTE_RGB = np.array([_hex_rgb(c) for c in PALETTE], dtype=np.uint8)


def assign_colour_slots(counts: Mapping[int, int]) -> dict[int, int]:
    """A palette slot per token id: most frequent first, each takes its home slot or the next free one.

    Deterministic (ties go to the smaller id); distinct ids get distinct slots
    while the palette lasts, after which the rest keep their home slots.
    """
    size = len(PALETTE)
    taken = np.zeros(size, dtype=bool)
    slots: dict[int, int] = {}
    for token in sorted(counts, key=lambda t: (-counts[t], t)):
        slot = int(token_palette_index(int(token)))
        if len(slots) < size:
            while taken[slot]:
                slot = (slot + 1) % size
            taken[slot] = True
        slots[int(token)] = slot
    return slots


def discrete_colorscale() -> list[list[Any]]:
    """Steps of equal width, one per palette colour, for z = palette index."""
    p = len(PALETTE)
    scale: list[list[Any]] = []
    for index, colour in enumerate(PALETTE):
        scale.append([index / p, colour])
        scale.append([(index + 1) / p, colour])
    return scale


def scale_rgb(values: np.ndarray, scale: list[str], low: float, high: float) -> np.ndarray:
    """RGB (uint8) of ``values`` on a continuous scale of evenly spaced hex colours."""
    stops = np.array([_hex_rgb(c) for c in scale], dtype=np.float64)
    t = np.clip((np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    pos = np.linspace(0.0, 1.0, len(scale))
    return np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def value_range(data: GridData, mode: str) -> tuple[float, float]:
    """Colour scale bounds: 0..1 for probability, the map's own min..max for entropy."""
    if mode == "probability" or not data.entropy.size:
        return 0.0, 1.0
    low, high = float(np.nanmin(data.entropy)), float(np.nanmax(data.entropy))
    return low, max(high, low + 1e-6)


def cell_values(data: GridData, mode: str) -> np.ndarray:
    if mode == "probability":
        return data.top_probs[..., 0]
    if mode == "entropy":
        return data.entropy
    raise ValueError(f"unknown colour mode {mode!r}")


def cell_rgb(data: GridData, mode: str) -> np.ndarray:
    """The colour of every cell (N, N, 3) uint8, as the map draws it."""
    if mode == "token":
        return PALETTE_RGB[data.colour_slot(data.top1)]
    low, high = value_range(data, mode)
    return scale_rgb(cell_values(data, mode), SCALES[mode], low, high)


def text_is_dark(rgb: np.ndarray) -> np.ndarray:
    """True where black text reads better than white on the colour ``rgb`` (..., 3)."""
    r, g, b = (rgb[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b > 0.55


# --------------------------------------------------------------------------- labels


def token_label(token: str) -> str:
    """A token for hover and lists: quoted, so spaces and newlines show."""
    return repr(token)


def cell_label(token: str, max_chars: int) -> str:
    """A token written on a cell: whitespace made visible, cut to ``max_chars``."""
    text = token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    text = "".join(ch if ch.isprintable() else "�" for ch in text) or "∅"
    if len(text) > max_chars:
        text = text[: max(1, max_chars - 1)] + "…"
    return text


def axis_titles(summary: Mapping[str, Any]) -> tuple[str, str]:
    """Axis titles in the plane's own units."""
    plane = str(summary.get("plane") or "direct")
    info = summary.get("plane_info") or {}
    if plane == "direct":
        return "x (residual dimension 0)", "y (residual dimension 1)"
    if plane == "replicated":
        return "x (each even dimension 0, 2, 4, …)", "y (each odd dimension 1, 3, 5, …)"
    if plane == "random_projection":
        seed = info.get("seed", "?")
        return f"x (along random direction u, seed {seed})", f"y (along random direction v, seed {seed})"
    if plane == "pca":
        ratios = info.get("explained_variance_ratio") or []
        titles = []
        for index, axis in enumerate("xy"):
            extra = f", {100 * float(ratios[index]):.1f}% of variance" if index < len(ratios) else ""
            titles.append(f"{axis} (PC{index + 1} in standard deviations{extra})")
        return titles[0], titles[1]
    if plane == "through_states":
        return "x (steps of state 1 − state 0)", "y (steps of state 2 − state 0)"
    return "x", "y"


def describe(summary: Mapping[str, Any]) -> str:
    """``layer 3 of 12 · direct plane · 64 × 64`` (for headers and side by side)."""
    n = summary.get("size", "?")
    return (f"layer {summary.get('layer', '?')} of {summary.get('n_layers', '?')} · "
            f"{summary.get('plane', '?')} plane · {n} × {n}")


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


@callback(
    Output(pid("map", MATCH), "figure"),
    Output(pid("window", MATCH), "data"),
    Input(pid("mode", MATCH), "value"),
    Input(pid("map", MATCH), "relayoutData"),
    State(pid("run", MATCH), "data"),
    State(pid("window", MATCH), "data"),
    State(pid("palette", MATCH), "data"),
    prevent_initial_call=True,
)
def _update_map(mode, relayout, run_id, window, context):
    data = load_grid(run_id, context)
    trigger = ctx.triggered_id or {}
    if trigger.get("type") == "grid-mode":
        return map_patch(data, mode or "token", window, colours=True), dash.no_update
    new_window = window_from_relayout(relayout, window)
    if new_window is None:
        return dash.no_update, dash.no_update
    return map_patch(data, mode or "token", new_window, ranges=True), new_window


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


# --------------------------------------------------------------------------- exports


def _short_floats(values: np.ndarray, digits: int) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _exact_floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimal that reads back as the same float32."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def export_document(data: GridData, run: Mapping[str, Any] | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The token map as one JSON document (see ``layout`` inside for the indexing)."""
    ids = np.unique(data.top_ids)
    summary = data.summary
    plane: dict[str, Any] = {"kind": summary.get("plane"), "info": summary.get("plane_info") or {}}
    for name in ("center", "u", "v"):
        if arrays is not None and f"plane_{name}" in arrays:
            plane[name] = _exact_floats(arrays[f"plane_{name}"])
    return {
        "format": "latent-atlas grid token map, version 1",
        "run": {key: (run or {}).get(key) for key in ("id", "title", "model", "owner", "created_at")}
        | {"id": data.run_id},
        "config": dict(data.params),
        "layout": "top_ids[j][i], top_probs[j][i] and entropy[j][i] describe the point (x[i], y[j]); "
                  "tokens maps every token id to its string",
        "size": data.n,
        "top_k": data.k,
        "layer": summary.get("layer"),
        "n_layers": summary.get("n_layers"),
        "plane": plane,
        "x": _exact_floats(data.xs),
        "y": _exact_floats(data.ys),
        "top_ids": data.top_ids.astype(np.int64).tolist(),
        "top_probs": _short_floats(data.top_probs, 7),
        "entropy": _short_floats(data.entropy, 6),
        "entropy_units": "nats",
        "tokens": {str(int(t)): data.token(int(t)) for t in ids},
        "colours": {str(t): data.colour(t) for t in sorted(data.top1_counts)},
        "legend": [{key: entry[key] for key in ("id", "token", "cells", "share")}
                   for entry in legend_entries(data, rows=50)],
        "fast_path": summary.get("fast_path"),
        "dtype": summary.get("dtype"),
    }


def default_cell_px(n: int) -> int:
    return int(min(32, max(8, PNG_TARGET_SIDE // max(n, 1))))


@lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont

    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _label_mask(token: str, cell: int) -> np.ndarray:
    """Coverage (cell, cell) uint8 (255 = ink) of the token written centred in one cell.

    The font is as large as fits (from 45% down to 28% of the cell), then the
    text is cut with an ellipsis.
    """
    from PIL import Image, ImageDraw

    room = cell - 3
    text = cell_label(token, 64)
    sizes = range(max(6, int(cell * 0.45)), max(6, int(cell * 0.28)) - 1, -1)
    font = _font(sizes[-1])
    for size in sizes:
        if _font(size).getlength(text) <= room:
            font = _font(size)
            break
    while len(text) > 1 and font.getlength(text) > room:
        text = text[:-2] + "…" if len(text) > 2 else text[:1]
    image = Image.new("L", (cell, cell), 0)
    ImageDraw.Draw(image).text((cell / 2, cell / 2), text, fill=255, font=font, anchor="mm")
    return np.asarray(image, dtype=np.uint8)


def token_map_image(data: GridData, mode: str = "token", cell_px: int | None = None,
                    text: bool = True) -> np.ndarray:
    """The map as an RGB image (N * cell, N * cell, 3), y increasing upwards like the figure.

    Every cell is a block of its colour with its top token written on it and a
    1-pixel darker edge; token masks are drawn once per distinct token.
    """
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {mode!r}")
    n = data.n
    cell = default_cell_px(n) if cell_px is None else int(cell_px)
    bg = cell_rgb(data, mode)[::-1]  # top image row = highest y
    distinct, inverse = np.unique(data.top1[::-1], return_inverse=True)
    inverse = inverse.reshape(n, n)
    edge = np.zeros((cell, cell), dtype=np.uint16)
    if cell >= 8:
        edge[-1, :] = edge[:, -1] = 46  # darken the cell's last row and column by 18%
    if text and cell >= 8:
        masks = np.stack([_label_mask(data.token(int(t)), cell) for t in distinct])
    else:
        masks = np.zeros((len(distinct), cell, cell), dtype=np.uint8)
    if mode == "token":  # the whole cell follows from the token: one tile per token
        colours = PALETTE_RGB[data.colour_slot(distinct)]
        tiles = _composite(colours[:, None, None, :], masks, edge)  # (D, c, c, 3)
        return tiles[inverse].transpose(0, 2, 1, 3, 4).reshape(n * cell, n * cell, 3)
    out = np.empty((n * cell, n * cell, 3), dtype=np.uint8)
    rows = max(1, (1 << 23) // (n * cell * cell * 3))  # cell rows per chunk
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = _composite(bg[start:stop, :, None, None, :], masks[inverse[start:stop]], edge)
        out[start * cell : stop * cell] = block.transpose(0, 2, 1, 3, 4).reshape(
            (stop - start) * cell, n * cell, 3)
    return out


def _composite(colour: np.ndarray, mask: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Cells of ``colour`` (..., 1, 1, 3) with the edge darkened and text ``mask`` (..., c, c) inked."""
    dark = text_is_dark(colour)[..., None]  # (..., 1, 1, 1)
    base = colour.astype(np.uint16) * (256 - edge[..., None]) >> 8
    m = mask[..., None].astype(np.uint16)
    ink = np.where(dark, 17, 255).astype(np.uint16)
    return ((base * (255 - m) + ink * m + 127) // 255).astype(np.uint8)


def token_map_png(data: GridData, mode: str = "token", cell_px: int | None = None) -> bytes:
    """PNG bytes of ``token_map_image``."""
    from PIL import Image

    image = Image.fromarray(token_map_image(data, mode, cell_px), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def png_cell_px(n: int, requested: str | None) -> int:
    """The cell size for a PNG request; ``ValueError`` with a message when out of bounds."""
    if requested in (None, ""):
        return default_cell_px(n)
    try:
        cell = int(requested)
    except ValueError:
        raise ValueError("cell must be a whole number of pixels") from None
    low, high = PNG_CELL_RANGE
    if not low <= cell <= high:
        raise ValueError(f"cell must be between {low} and {high} pixels")
    if n * cell > PNG_MAX_SIDE:
        raise ValueError(f"{n} cells of {cell} px make an image wider than {PNG_MAX_SIDE} px; "
                         f"use cell={max(low, PNG_MAX_SIDE // n)} or less")
    return cell


# --------------------------------------------------------------------------- form


def _number(name: str, label: str, value: Any, *, help_text: str, step: Any = "any",
            **bounds: Any) -> dbc.Col:
    return dbc.Col([
        dbc.Label(label, class_name="mt-2"),
        dbc.Input(id=field_id(KIND, name), type="number", value=value, step=step, **bounds),
        dbc.FormText(help_text),
    ], md=4)


def form_fields(settings: Any) -> list[Any]:
    """The grid part of the New-run form (IDs from ``field_id``)."""
    limits = settings.limits
    default_size = min(DEFAULT_SIZE, limits.max_grid_size)
    state_rows = []
    for number in range(STATE_COUNT):
        state_rows.append(dbc.Row([
            dbc.Col(html.Span(f"state s{number}", className="small text-muted"), width=2,
                    class_name="pt-2"),
            dbc.Col(dbc.Input(id=field_id(KIND, f"state{number}_prompt"), type="number", min=0, step=1,
                              value=number, size="sm"), width=4),
            dbc.Col(dbc.Input(id=field_id(KIND, f"state{number}_position"), type="number", step=1,
                              value=-1, size="sm"), width=4),
        ], class_name="g-2 mb-1"))
    return [
        dbc.Row([
            _number("layer", "Layer", 0, step=1, min=0,
                    help_text="The residual entering this block is replaced by the grid point; "
                              "the last layer L (the model's block count) means after the last block."),
            _number("size", "Grid size N", default_size, step=1, min=2, max=limits.max_grid_size,
                    help_text=f"N × N cells; 2 to {limits.max_grid_size}."),
            dbc.Col([
                dbc.Label("Plane", class_name="mt-2"),
                dbc.Select(id=field_id(KIND, "plane"), value="direct",
                           options=[{"label": label, "value": value} for value, label in PLANES.items()]),
                dbc.FormText("How grid points (x, y) map into the hidden space."),
            ], md=4),
        ]),
        dbc.Row([
            _number("spacing", "Spacing", 1.0, min=0, help_text="Distance between neighbouring grid points."),
            _number("center_x", "Centre x", 0.0, help_text="x of the middle grid point."),
            _number("center_y", "Centre y", 0.0, help_text="y of the middle grid point."),
        ]),
        html.Div(dbc.Row([
            _number("seed", "Seed", 0, step=1, min=0, max=2**31 - 1,
                    help_text="Seed of the random directions u and v."),
        ]), id="grid-form-seed", style={"display": "none"}),
        html.Div([
            dbc.Label("Prompts", class_name="mt-2"),
            dbc.Textarea(id=field_id(KIND, "prompts"), rows=5, class_name="font-monospace",
                         placeholder="One prompt per line (PCA: leave empty for a built-in set)"),
            dbc.FormText(f"The real states come from these prompts at the chosen layer; at most "
                         f"{limits.max_prompts} prompts of {limits.max_prompt_chars} characters."),
            html.Div([
                dbc.Switch(id=field_id(KIND, "exclude_first_token"), value=True,
                           label="Leave the first token of each prompt out of the PCA", class_name="mt-2"),
            ], id="grid-form-pca"),
            html.Div([
                dbc.Label("The three states (prompt number from 0, token position; -1 = last token)",
                          class_name="mt-2"),
                *state_rows,
                dbc.FormText("s0 sits at (0, 0), s1 at (1, 0) and s2 at (0, 1)."),
            ], id="grid-form-states"),
        ], id="grid-form-prompts", style={"display": "none"}),
        dbc.Row([
            _number("max_tokens", "Max tokens per prompt", min(64, limits.max_tokens_per_prompt),
                    step=1, min=1, max=limits.max_tokens_per_prompt,
                    help_text=f"1 to {limits.max_tokens_per_prompt}; for the prompts and the context."),
            _number("top_k", "Top-k", 5, step=1, min=1, max=10, help_text="Tokens kept per cell (1 to 10)."),
            dbc.Col([
                dbc.Label("Compute dtype", class_name="mt-2"),
                dbc.Select(id=field_id(KIND, "dtype"), value="float32",
                           options=[{"label": "float32", "value": "float32"},
                                    {"label": "bfloat16", "value": "bfloat16"}]),
                dbc.FormText("bfloat16 is faster on a GPU, less exact."),
            ], md=4),
        ]),
        dbc.Label("Context (optional)", class_name="mt-2"),
        dbc.Textarea(id=field_id(KIND, "context"), rows=2,
                     placeholder="Without a context each grid point is a lone token at position 0"),
        dbc.FormText("The grid point replaces the state of this text's last token."),
    ]


@callback(
    Output("grid-form-seed", "style"),
    Output("grid-form-prompts", "style"),
    Output("grid-form-pca", "style"),
    Output("grid-form-states", "style"),
    Input(field_id(KIND, "plane"), "value"),
)
def _plane_fields(plane):
    show, hide = {"display": "block"}, {"display": "none"}
    return (show if plane == "random_projection" else hide,
            show if plane in ("pca", "through_states") else hide,
            show if plane == "pca" else hide,
            show if plane == "through_states" else hide)


def parse_run_ids(text: str | None, limit: int = 2) -> list[str]:
    """Up to ``limit`` distinct valid run IDs from ``ID1,ID2`` (commas or spaces; URLs accepted)."""
    ids: list[str] = []
    for part in re.split(r"[,\s]+", text or ""):
        run_id = normalise_run_id(part)
        if run_id and run_id not in ids:
            ids.append(run_id)
    return ids[:limit]


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; surrounding whitespace stripped, empty lines ignored."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _as_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw grid params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")

    def whole(name: str, low: int, high: int | None, what: str) -> int | None:
        value = _as_int(values.get(name))
        if value is None or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            errors.append(f"{name}: {what} must be a whole number {span}")
            return None
        return value

    layer = whole("layer", 0, None, "the layer")
    size = whole("size", 2, limits.max_grid_size, "the grid size N")
    top_k = whole("top_k", 1, 10, "top-k")
    max_tokens = whole("max_tokens", 1, limits.max_tokens_per_prompt, "max tokens")
    spacing = _as_float(values.get("spacing"))
    if spacing is None or spacing <= 0 or spacing > 1e6:
        errors.append("spacing: must be a number above 0 and at most 1e6")
    center = [_as_float(values.get(f"center_{axis}")) for axis in "xy"]
    for axis, value in zip("xy", center, strict=True):
        if value is None or abs(value) > 1e9:
            errors.append(f"center_{axis}: must be a number within ±1e9")
    plane = values.get("plane") or "direct"
    if plane not in PLANES:
        errors.append(f"plane: unknown plane {str(plane)[:40]!r} (use one of {', '.join(PLANES)})")
    dtype = values.get("dtype") or "float32"
    if dtype not in ("float32", "bfloat16"):
        errors.append("dtype: must be float32 or bfloat16")

    params: dict[str, Any] = {"model": model, "layer": layer, "size": size, "spacing": spacing,
                              "center": center, "plane": plane, "top_k": top_k,
                              "max_tokens": max_tokens, "dtype": dtype}
    if plane == "random_projection":
        params["seed"] = whole("seed", 0, 2**31 - 1, "the seed")
    if plane in ("pca", "through_states"):
        prompts = parse_prompts(values.get("prompts"))
        if len(prompts) > limits.max_prompts:
            errors.append(f"prompts: at most {limits.max_prompts} prompts (got {len(prompts)})")
        for index, prompt in enumerate(prompts, start=1):
            if len(prompt) > limits.max_prompt_chars:
                errors.append(f"prompts: prompt {index} has {len(prompt)} characters "
                              f"(at most {limits.max_prompt_chars})")
        if plane == "through_states" and not prompts:
            errors.append("prompts: the through_states plane needs prompts to take its three states from")
        if prompts:
            params["prompts"] = prompts
        if plane == "pca":
            params["exclude_first_token"] = bool(values.get("exclude_first_token", True))
    if plane == "through_states":
        states = []
        for number in range(STATE_COUNT):
            prompt = _as_int(values.get(f"state{number}_prompt"))
            position = _as_int(values.get(f"state{number}_position"))
            if prompt is None or prompt < 0:
                errors.append(f"states: state s{number} needs a prompt number of 0 or more")
            if position is None:
                errors.append(f"states: state s{number} needs a whole token position (-1 = last)")
            states.append({"prompt": prompt, "position": position})
        params["states"] = states
    context = (values.get("context") or "").strip()
    if context:
        if len(context) > limits.max_prompt_chars:
            errors.append(f"context: {len(context)} characters (at most {limits.max_prompt_chars})")
        params["context"] = context
    if errors:
        raise FormError(errors)
    return params
