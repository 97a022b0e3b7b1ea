"""Figures of an anatomy result: pure functions, arrays in, Plotly figures out (no web stack).

The notebook (``latent_atlas.notebook``) and the portal's view
(``webapp.views.anatomy``) both draw with these. Invariants:

* token strings are model output: every string that reaches Plotly text,
  tick labels or hover goes through ``token_text`` (whitespace made visible,
  then ``html.escape``), because Plotly renders a subset of HTML there;
* token axes are categorical with unique labels ``"<position>·<token>"``
  (``position_labels``), so repeated tokens never merge into one column; a
  long prompt's axis labels at most ``MAX_TICKS`` of them (``token_ticks``:
  every label is still the hover text), because Plotly lays out and measures
  every tick label it is given;
* heatmaps are never smoothed (``zsmooth`` unset: one crisp cell per value;
  Plotly already draws uniform cells as one pixel each, scaled "pixelated");
  what made a 512 x 512 head cost ~1 s was its 512 tick labels per axis;
* attention values travel as uint16 basis points (1 bp = 0.0001, so 10000 =
  probability 1): a 512 x 512 head is 512 KiB as a base64 typed array instead
  of ~2 MB of JSON floats, and hover reads ``... bp``;
* the thumbnail sheet is one greyscale PNG image of L x H tiles (tile
  (layer, head) covers x in [head, head + 1), y in [layer, layer + 1)), so a
  click's x and y floor to the head and the layer (``sheet_cell``).
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "architecture_figure",
    "architecture_flat_figure",
    "attention_figure",
    "embedding_figure",
    "layer_token_heatmap",
    "lens_figure",
    "lens_last_figure",
    "position_labels",
    "saliency_figure",
    "sheet_cell",
    "thumbnail_sheet",
    "token_text",
    "token_ticks",
]

_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
BP = 10_000
MAX_TICKS = 24


def token_text(token: str, limit: int = 24) -> str:
    """A token for Plotly: whitespace visible, at most ``limit`` characters, HTML-escaped."""
    shown = token.translate(_VISIBLE)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown)


def position_labels(tokens: Sequence[str]) -> list[str]:
    """Unique categorical labels ``"i·token"`` (escaped)."""
    return [f"{i}·{token_text(t, 16)}" for i, t in enumerate(tokens)]


def token_ticks(labels: Sequence[str], limit: int = MAX_TICKS) -> list[str]:
    """Every ``ceil(len / limit)``-th label (all of them up to ``limit``): the ticks a token axis shows."""
    step = max(1, math.ceil(len(labels) / limit))
    return list(labels[::step])


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 60, "r": 20, "t": 50, "b": 60},
                      template="plotly_white")
    return fig


# --------------------------------------------------------------------------- summary


PALETTE = {"embedding": "#6c757d", "attention": "#1f77b4", "mlp": "#d62728", "final_norm": "#2ca02c",
           "unembedding": "#9467bd"}
_FACES = [(0, 1, 3), (0, 3, 2), (4, 5, 7), (4, 7, 6), (0, 1, 5), (0, 5, 4),
          (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 3, 7), (1, 7, 5)]  # a box's 12 triangles


def _shapes_text(part: Mapping[str, Any]) -> str:
    shapes = part.get("shapes") or {}
    lines = [f"{html.escape(name)}: {' × '.join(str(n) for n in shape)}" for name, shape in list(shapes.items())[:12]]
    if len(shapes) > 12:
        lines.append(f"… {len(shapes) - 12} more")
    return "<br>".join(lines)


def diagram_boxes(parts: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The architecture as boxes and head markers, shared by the 3D and the flat diagram.

    A box is ``{x, y, z, w, d, h, colour, layer, text}`` (centre x and y,
    bottom z, width, depth, height); widths grow with the cube root of the
    parameter count; ``layer`` is -1 outside the blocks. A head marker is
    ``{x, y, z, d, layer, text}`` above the top of its block's attention box
    (``d``: that box's depth).
    """
    counts = [max(int(p.get("count", 0)), 1) for p in parts]
    scale = 1.0 / max([c ** (1 / 3) for c in counts] or [1.0])
    boxes: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    z = 0.0
    for part, count in zip(parts, counts, strict=True):
        kind = part.get("kind")
        label = html.escape(str(part.get("label", "")))
        if kind == "block":
            layer = int(part.get("layer", 0))
            attn, mlp = max(int(part.get("attention", 0)), 1), max(int(part.get("mlp", 0)), 1)
            wa, wm = attn ** (1 / 3) * scale, mlp ** (1 / 3) * scale
            boxes.append({"x": -0.6, "y": 0.0, "z": z, "w": wa, "d": wa, "h": 0.6, "colour": PALETTE["attention"],
                          "layer": layer,
                          "text": f"<b>{label}: attention</b><br>{attn:,} parameters<br>{part.get('heads')} query "
                                  f"heads, {part.get('kv_heads')} key/value heads<br>click: open layer {layer}"})
            boxes.append({"x": 0.6, "y": 0.0, "z": z, "w": wm, "d": wm, "h": 0.6, "colour": PALETTE["mlp"],
                          "layer": layer,
                          "text": f"<b>{label}: MLP</b><br>{mlp:,} parameters<br>{_shapes_text(part)}<br>"
                                  f"click: open layer {layer}"})
            n_heads = int(part.get("heads") or 0)
            for h in range(n_heads):
                angle = 2 * math.pi * h / max(n_heads, 1)
                heads.append({"x": -0.6 + 0.45 * wa * math.cos(angle), "y": 0.45 * wa * math.sin(angle),
                              "z": z + 0.65, "d": wa, "layer": layer, "text": f"layer {layer}, head {h}"})
            z += 1.0
        else:
            w = max(count ** (1 / 3) * scale, 0.15)
            boxes.append({"x": 0.0, "y": 0.0, "z": z, "w": w, "d": w * 0.3, "h": 0.4,
                          "colour": PALETTE.get(str(kind), "#888"), "layer": -1,
                          "text": f"<b>{label}</b><br>{count:,} parameters<br>{_shapes_text(part)}"})
            z += 0.8
    return boxes, heads


def architecture_figure(parts: Sequence[Mapping[str, Any]], title: str = "Architecture") -> go.Figure:
    """A 3D stack: embedding, each block (attention box with its heads, MLP box), final norm, unembedding.

    Box widths grow with the cube root of the parameter count; every box and
    marker carries ``customdata`` = the layer (-1 outside the blocks), so a click
    on a block opens that layer. A WebGL scene: in a browser without a GPU
    (software GL) it takes seconds to draw, so the page starts with
    ``architecture_flat_figure`` and draws this one on request.
    """
    boxes, heads = diagram_boxes(parts)
    xs, ys, zs, ii, jj, kk, colours, custom = [], [], [], [], [], [], [], []
    for b in boxes:
        base = len(xs)
        for dx in (-b["w"] / 2, b["w"] / 2):
            for dy in (-b["d"] / 2, b["d"] / 2):
                for dz in (0, b["h"]):
                    xs.append(b["x"] + dx)
                    ys.append(b["y"] + dy)
                    zs.append(b["z"] + dz)
                    custom.append(b["layer"])
        for a, c1, c2 in _FACES:  # vertices indexed by (x, y, z) bits
            ii.append(base + a)
            jj.append(base + c1)
            kk.append(base + c2)
            colours.append(b["colour"])
    fig = go.Figure()
    fig.add_trace(go.Mesh3d(x=xs, y=ys, z=zs, i=ii, j=jj, k=kk, facecolor=colours, opacity=0.55,
                            customdata=custom, hoverinfo="skip", flatshading=True, name="modules"))
    fig.add_trace(go.Scatter3d(x=[b["x"] for b in boxes], y=[b["y"] for b in boxes],
                               z=[b["z"] + b["h"] / 2 for b in boxes], mode="markers",
                               customdata=[b["layer"] for b in boxes], text=[b["text"] for b in boxes],
                               hovertemplate="%{text}<extra></extra>",
                               marker={"size": 6, "color": [b["colour"] for b in boxes], "symbol": "square"},
                               name="blocks"))
    if heads:
        fig.add_trace(go.Scatter3d(x=[h["x"] for h in heads], y=[h["y"] for h in heads],
                                   z=[h["z"] for h in heads], mode="markers", customdata=[h["layer"] for h in heads],
                                   text=[h["text"] for h in heads], hovertemplate="%{text}<extra></extra>",
                                   marker={"size": 2.5, "color": "#17becf"}, name="heads"))
    fig.update_layout(scene={"xaxis": {"visible": False}, "yaxis": {"visible": False},
                             "zaxis": {"title": "depth"}, "aspectmode": "manual",
                             "aspectratio": {"x": 1, "y": 0.6, "z": 2.2}},
                      showlegend=False, title=title, height=620, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return fig


def _shade(colour: str, factor: float) -> str:
    """``#rrggbb`` scaled towards black (factor < 1) or white (factor > 1)."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(c * factor) if factor <= 1 else round(c + (255 - c) * (factor - 1)) for c in rgb]
    return "#" + "".join(f"{min(max(c, 0), 255):02x}" for c in mixed)


# The deepest box's depth drawn as (right, up) in axis units (the axes are not to scale: the stack is
# tall), others in proportion. Up stays under 0.4, the gap between levels, so levels never overlap.
OBLIQUE = (0.3, 0.35)


def architecture_flat_figure(parts: Sequence[Mapping[str, Any]], title: str = "Architecture") -> go.Figure:
    """The same boxes as ``architecture_figure`` in a fixed oblique projection, drawn as SVG (no WebGL).

    Each box shows its front, top and right faces (three shades of its
    colour); boxes of successive levels are separated by a gap taller than a
    box's projected depth, so no face hides another and the faces can be
    grouped by colour and shade into a few path shapes (a later colour drawn
    over an earlier one: a block's MLP box over its attention box's side
    face, if they ever meet). The ``blocks`` trace
    (a transparent marker at each box's centre; the nearest one answers)
    carries ``customdata`` = the layer and the hover text, so hovering or
    clicking a box works as on the 3D diagram; ``heads`` marks each query head
    on its attention box's top face.
    """
    boxes, heads = diagram_boxes(parts)
    deepest = max([b["d"] for b in boxes] or [1.0])
    kx, ky = OBLIQUE[0] / deepest, OBLIQUE[1] / deepest
    paths: dict[tuple[str, str], list[str]] = {}

    def add(colour: str, face: str, points: list[tuple[float, float]]) -> None:
        paths.setdefault((colour, face), []).append(
            "M" + "L".join(f"{x:.4f},{y:.4f}" for x, y in points) + "Z")

    for b in boxes:
        x0, x1 = b["x"] - b["w"] / 2, b["x"] + b["w"] / 2
        z0, z1 = b["z"], b["z"] + b["h"]
        dx, dz = kx * b["d"], ky * b["d"]
        add(b["colour"], "front", [(x0, z0), (x1, z0), (x1, z1), (x0, z1)])
        add(b["colour"], "top", [(x0, z1), (x1, z1), (x1 + dx, z1 + dz), (x0 + dx, z1 + dz)])
        add(b["colour"], "side", [(x1, z0), (x1 + dx, z0 + dz), (x1 + dx, z1 + dz), (x1, z1)])
    shades = {"front": 1.0, "top": 1.35, "side": 0.7}
    # faces as one path shape per colour and shade: a shape is one SVG path, far cheaper to draw than a trace
    fig = go.Figure(layout={"shapes": [
        {"type": "path", "path": "".join(faces), "fillcolor": _shade(colour, shades[face]), "layer": "below",
         "line": {"color": _shade(colour, 0.55), "width": 0.6}} for (colour, face), faces in paths.items()]})
    fig.add_trace(go.Scatter(x=[b["x"] for b in boxes], y=[b["z"] + b["h"] / 2 for b in boxes], mode="markers",
                             customdata=[b["layer"] for b in boxes], text=[b["text"] for b in boxes],
                             hovertemplate="%{text}<extra></extra>", name="blocks",
                             marker={"size": 14, "symbol": "square", "color": "rgba(0,0,0,0)"}))
    if heads:
        fig.add_trace(go.Scatter(x=[h["x"] + kx * (h["y"] + h["d"] / 2) for h in heads],
                                 y=[h["z"] - 0.05 + ky * (h["y"] + h["d"] / 2) for h in heads], mode="markers",
                                 customdata=[h["layer"] for h in heads], text=[h["text"] for h in heads],
                                 hovertemplate="%{text}<extra></extra>", name="heads",
                                 marker={"size": 3, "color": "#17becf"}))
    fig.update_xaxes(visible=False, range=[-1.5, 1.7])
    fig.update_yaxes(title="depth", showgrid=False, zeroline=False)
    # hoverdistance -1: the nearest block answers wherever the pointer is (the markers are smaller than the boxes)
    fig.update_layout(showlegend=False, title=title, height=620, margin={"l": 40, "r": 0, "t": 40, "b": 0},
                      template="plotly_white", hovermode="closest", hoverdistance=-1, dragmode="pan")
    return fig


# --------------------------------------------------------------------------- activations


def layer_token_heatmap(values: np.ndarray, tokens: Sequence[str], title: str,
                        colorbar: str = "norm", layer_labels: Sequence[str] | None = None) -> go.Figure:
    """A (rows, T) heatmap: rows are layers (bottom = first), columns the prompt's tokens."""
    rows = list(layer_labels) if layer_labels is not None else [f"layer {i}" for i in range(values.shape[0])]
    labels = position_labels(tokens)
    fig = go.Figure(go.Heatmap(
        z=np.asarray(values, dtype=np.float32), x=labels, y=rows, colorscale="Viridis",
        colorbar={"title": colorbar},
        hovertemplate="%{y}<br>token %{x}<br>" + colorbar + " %{z:.4g}<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=-60, tickvals=token_ticks(labels))
    fig.update_yaxes(type="category")
    return _layout(fig, title, height=max(300, 18 * values.shape[0] + 160))


# --------------------------------------------------------------------------- attention


def attention_figure(pattern: np.ndarray, tokens: Sequence[str], title: str) -> go.Figure:
    """One (T, T) pattern: rows are queries, columns keys, values in basis points (see the docstring)."""
    labels = position_labels(tokens)
    z = np.rint(np.clip(np.asarray(pattern, dtype=np.float32), 0, 1) * BP).astype(np.uint16)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=BP,
        colorbar={"title": "attention", "tickvals": [0, 2500, 5000, 7500, BP],
                  "ticktext": ["0", "0.25", "0.5", "0.75", "1"]},
        hovertemplate="query %{y}<br>key %{x}<br>attention %{z} bp (1 bp = 0.0001)<extra></extra>"))
    ticks = token_ticks(labels)
    fig.update_xaxes(type="category", tickangle=-60, title="key (attended to)", tickvals=ticks)
    fig.update_yaxes(type="category", autorange="reversed", title="query", tickvals=ticks)
    return _layout(fig, title, height=560)


def sheet_cell(x: float, y: float, n_layers: int, n_heads: int) -> tuple[int, int] | None:
    """(layer, head) of a click at (x, y) on the thumbnail sheet; ``None`` outside it."""
    head, layer = math.floor(x), math.floor(y)
    if 0 <= layer < n_layers and 0 <= head < n_heads:
        return layer, head
    return None


def grey_png(values: np.ndarray) -> str:
    """A (rows, cols) uint8 array as a greyscale PNG data URI (0 white, 255 black), written with zlib alone."""
    pixels = 255 - np.ascontiguousarray(values, dtype=np.uint8)
    rows, cols = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(rows))  # filter type 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_sheet(thumbs: np.ndarray, n_layers: int, n_heads: int, title: str = "Every layer × head") -> go.Figure:
    """L x H tiles of (s, s) uint8 thumbnails as one greyscale image (layer 0 at the top).

    An image, not a heatmap: the browser decodes a PNG instead of Plotly
    colouring every cell (30 x 9 tiles of 32 x 32: 276k cells). Pixel (i, j)
    is centred at ((j + 0.5) / s, (i + 0.5) / s), so a click's x and y floor
    to the head and the layer (``sheet_cell``).
    """
    s = thumbs.shape[-1]
    sheet = thumbs.reshape(n_layers, n_heads, s, s).transpose(0, 2, 1, 3).reshape(n_layers * s, n_heads * s)
    fig = go.Figure(go.Image(source=grey_png(sheet), x0=0.5 / s, dx=1 / s, y0=0.5 / s, dy=1 / s,
                             hovertemplate="click to enlarge<extra></extra>"))
    # the tile borders as one path shape (one SVG element, not one shape per line)
    path = "".join(f"M{h},0L{h},{n_layers}" for h in range(1, n_heads))
    path += "".join(f"M0,{layer}L{n_heads},{layer}" for layer in range(1, n_layers))
    if path:
        fig.update_layout(shapes=[{"type": "path", "path": path, "line": {"color": "#0d6efd", "width": 1}}])
    fig.update_xaxes(tickvals=[h + 0.5 for h in range(n_heads)], ticktext=[f"h{h}" for h in range(n_heads)],
                     range=[0, n_heads], side="top", showgrid=False)
    fig.update_yaxes(tickvals=[i + 0.5 for i in range(n_layers)], ticktext=[f"L{i}" for i in range(n_layers)],
                     range=[n_layers, 0], showgrid=False, scaleanchor="x", constrain="domain", constraintoward="top")
    return _layout(fig, title, height=max(300, min(60 * n_layers, 1800) + 80))


# --------------------------------------------------------------------------- embeddings


def embedding_figure(coords: np.ndarray, strings: Sequence[str], prompt_rows: int, title: str) -> go.Figure:
    """The vocabulary sample (grey) and the prompt's tokens (red, labelled), in 2D or 3D."""
    dims = coords.shape[1]
    text = [token_text(s) for s in strings]
    groups = [("vocabulary sample", slice(prompt_rows, None), {"size": 3 if dims == 3 else 5, "color": "#adb5bd"}, "markers"),
              ("prompt tokens", slice(0, prompt_rows), {"size": 5 if dims == 3 else 9, "color": "#d62728"},
               "markers+text")]
    fig = go.Figure()
    for name, rows, marker, mode in groups:
        part = coords[rows]
        common = {"mode": mode, "name": name, "marker": marker, "text": text[rows],
                  "hovertemplate": "%{text}<extra>" + name + "</extra>"}
        if dims == 3:
            fig.add_trace(go.Scatter3d(x=part[:, 0], y=part[:, 1], z=part[:, 2], **common))
        else:
            fig.add_trace(go.Scattergl(x=part[:, 0], y=part[:, 1], **common) if mode == "markers"
                          else go.Scatter(x=part[:, 0], y=part[:, 1], textposition="top center", **common))
    return _layout(fig, title, height=560)


# --------------------------------------------------------------------------- saliency


def saliency_figure(scores: np.ndarray, tokens: Sequence[str], title: str) -> go.Figure:
    """Bars of one saliency score per input token (red positive, blue negative)."""
    values = np.asarray(scores, dtype=np.float32)
    fig = go.Figure(go.Bar(x=position_labels(tokens), y=values,
                           marker={"color": np.where(values >= 0, "#d62728", "#1f77b4")},
                           hovertemplate="%{x}<br>%{y:.4g}<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=-60)
    return _layout(fig, title, height=360)


# --------------------------------------------------------------------------- logit lens


def lens_figure(lens_ids: np.ndarray, lens_probs: np.ndarray, labels: Sequence[str], tokens: Sequence[str],
                vocab: Mapping[str, str], start: int = 0, stop: int | None = None,
                title: str = "Logit lens: top token per point and position") -> go.Figure:
    """Points x positions[start:stop], shaded by the top token's probability, the token written on the cell."""
    stop = lens_ids.shape[1] if stop is None else stop
    ids = lens_ids[:, start:stop]
    probs = np.asarray(lens_probs[:, start:stop], dtype=np.float32)
    # id -1: a position the run did not decode (before its lens window); left blank
    words = np.array([[token_text(vocab.get(str(int(i)), "?"), 10) if i >= 0 else "" for i in row] for row in ids],
                     dtype=object)
    fig = go.Figure(go.Heatmap(
        z=probs, x=position_labels(tokens)[start:stop], y=list(labels), text=words, zmin=0, zmax=1,
        texttemplate="%{text}" if ids.size <= 4000 else None, textfont={"size": 9}, colorscale="Purples",
        colorbar={"title": "p(top)"},
        hovertemplate="%{y}<br>position %{x}<br>top %{text}  p=%{z:.3f}<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=-60, side="top")
    fig.update_yaxes(type="category", autorange="reversed")
    return _layout(fig, title, height=max(360, 16 * len(labels) + 160))


def lens_last_figure(labels: Sequence[str], final_prob: np.ndarray, entropy: np.ndarray, kl: np.ndarray,
                     title: str = "Last position: the final prediction through the layers") -> go.Figure:
    """Per point at the last position: probability of the final prediction, entropy and KL to the final."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(labels), y=final_prob, name="p(final prediction)", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=list(labels), y=entropy, name="entropy (nats)", mode="lines+markers", yaxis="y2"))
    fig.add_trace(go.Scatter(x=list(labels), y=kl, name="KL(final ‖ point) (nats)", mode="lines+markers",
                             yaxis="y2"))
    fig.update_layout(yaxis={"title": "probability", "range": [0, 1]},
                      yaxis2={"title": "nats", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.35})
    fig.update_xaxes(type="category", tickangle=-60)
    return _layout(fig, title, height=420)
