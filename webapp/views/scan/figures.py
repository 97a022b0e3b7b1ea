"""Scan figures, pure functions of ``ScanData``: the layer-time animation, the divergence curve, the heatmap.

The animation is ONE Plotly figure with one frame per layer (``frame.name`` is
the frame index as text); the browser switches frames itself (Plotly.animate),
never asking the server. Fixed trace order: 0 prompt A's points, 1 prompt B's
points (diff runs), then the static trails. A frame updates the point traces
only (x, y, z, the lens text, the hover template naming the layer, and the
density colour in density rendering); the prompt, token and position of a
point are in the trace's ``customdata`` once. Axis ranges are fixed over all
frames, so motion on screen is motion in the shared basis.

Invariants: every token string in hover or text is ``hover_safe``; arrays go
to Plotly as float32 numpy arrays (binary-encoded by plotly.py, a small page);
``layout.meta`` carries ``{"view": "scan", "labels": [...]}`` for the page's
script, and the curve's points carry their frame index in ``customdata``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go

from webapp.views.scan.data import PROMPT_NAMES, ScanData, hover_safe

__all__ = ["COLOUR_MODES", "RENDER_MODES", "TRAIL_MODES", "animation_figure", "density_values",
           "divergence_figure", "heatmap_figure", "auto_render"]

COLOUR_MODES = {"position": "position", "token": "token", "prompt": "prompt"}
TRAIL_MODES = {"none": "no trails", "last": "last token", "all": "every token"}
RENDER_MODES = {"points": "points", "density": "density"}
DENSITY_ABOVE = 600  # tokens: above this, density rendering is the default
DENSITY_BINS = 12
PROMPT_COLOURS = ("#1f77b4", "#ff7f0e")
PROMPT_SYMBOLS = ("circle", "diamond")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
METRIC_STYLE = {  # name -> (label, colour, axis)
    "cosine_last": ("cosine distance, last token", "#1f77b4", "y"),
    "cosine_mean": ("mean cosine distance, aligned positions", "#2ca02c", "y"),
    "js": ("JS divergence, lens (bits)", "#d62728", "y"),
    "cka": ("1 − linear CKA", "#9467bd", "y"),
    "kl": ("KL(A‖B), lens (bits; right axis)", "#ff7f0e", "y2"),
}
FIGURE_HEIGHT = 640


def auto_render(data: ScanData) -> str:
    return "density" if data.coords.shape[1] > DENSITY_ABOVE else "points"


def density_values(points: np.ndarray, lows: np.ndarray, highs: np.ndarray, bins: int = DENSITY_BINS) -> np.ndarray:
    """log(1 + the number of points in each point's voxel), a (bins^3) grid over the fixed axes (float32)."""
    span = np.where(highs > lows, highs - lows, 1.0)
    cells = np.clip(((points - lows) / span * bins).astype(np.int64), 0, bins - 1)
    flat = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
    counts = np.bincount(flat, minlength=bins**3)
    return np.log1p(counts[flat]).astype(np.float32)


def _ranges(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lows, highs = np.nanmin(coords.reshape(-1, 3), axis=0), np.nanmax(coords.reshape(-1, 3), axis=0)
    pad = np.maximum((highs - lows) * 0.05, 1e-6)
    return lows - pad, highs + pad


def _marker(data: ScanData, prompt: int, select: np.ndarray, colour: str, render: str) -> dict[str, Any]:
    marker: dict[str, Any] = {"size": 3 if render == "density" else 4, "symbol": PROMPT_SYMBOLS[prompt % 2],
                              "line": {"width": 0}}
    if render == "density":
        marker.update(colorscale="Inferno", opacity=0.45, showscale=prompt == 0,
                      colorbar={"title": {"text": "log density"}, "len": 0.5})
    elif colour == "position":
        positions = data.token_position
        marker.update(color=positions[select].astype(np.float32), colorscale="Viridis", cmin=0,
                      cmax=float(max(1, positions.max())), showscale=prompt == 0,
                      colorbar={"title": {"text": "position"}, "len": 0.5})
    elif colour == "token":
        ids = data.token_id[select].astype(np.int64)
        marker["color"] = [PALETTE[(i * 2654435761) % 4294967296 % len(PALETTE)] for i in ids.tolist()]
    else:
        marker["color"] = PROMPT_COLOURS[prompt % 2]
    return marker


def _template(label: str) -> str:
    return ("prompt %{customdata[0]} · token <b>%{customdata[1]}</b> · position %{customdata[2]}<br>"
            f"{hover_safe(label, 60)}<br>logit lens: %{{text}}<extra></extra>")


def _trails(data: ScanData, trails: str) -> list[go.Scatter3d]:
    if trails == "none":
        return []
    out = []
    for prompt in range(data.n_prompts):
        columns = np.flatnonzero(data.token_prompt == prompt)
        if trails == "last":
            columns = columns[-1:]
        paths = data.coords[:, columns]  # (F, n, 3)
        gap = np.full((1, paths.shape[1], 3), np.nan, dtype=np.float32)
        line = np.concatenate([paths, gap]).transpose(1, 0, 2).reshape(-1, 3)
        out.append(go.Scatter3d(
            x=line[:, 0], y=line[:, 1], z=line[:, 2], mode="lines", hoverinfo="skip",
            name=f"trail {PROMPT_NAMES[prompt]}" + (" (last token)" if trails == "last" else ""),
            line={"color": PROMPT_COLOURS[prompt % 2], "width": 4 if trails == "last" else 1},
            opacity=0.8 if trails == "last" else 0.25))
    return out


def animation_figure(data: ScanData, *, colour: str = "position", trails: str = "last",
                     render: Literal["points", "density"] | None = None, controls: bool = False,
                     start: int = 0) -> go.Figure:
    """The layer-time animation; ``controls`` adds Plotly's own play/pause (the static export)."""
    render = render or auto_render(data)
    lows, highs = _ranges(data.coords)
    labels = data.labels
    selects = [data.token_prompt == p for p in range(data.n_prompts)]
    tokens = [data.tokens(p) for p in range(data.n_prompts)]

    def frame_traces(frame: int) -> list[dict[str, Any]]:
        out = []
        density = density_values(data.coords[frame], lows, highs) if render == "density" else None
        for select in selects:
            points = data.coords[frame, select]
            trace: dict[str, Any] = {"type": "scatter3d", "x": points[:, 0], "y": points[:, 1], "z": points[:, 2],
                                     "text": data.lens_text(frame, select), "hovertemplate": _template(labels[frame])}
            if render == "density":
                trace["marker"] = {"color": density[select]}
            out.append(trace)
        return out

    traces = []
    for prompt, (select, first) in enumerate(zip(selects, frame_traces(start), strict=True)):
        customdata = np.empty((int(select.sum()), 3), dtype=object)
        customdata[:, 0] = PROMPT_NAMES[prompt]
        customdata[:, 1] = [hover_safe(t) for t in tokens[prompt]]
        customdata[:, 2] = data.token_position[select]
        marker = _marker(data, prompt, select, colour, render)
        if render == "density":
            marker["color"] = first.pop("marker")["color"]
        first.pop("type")
        traces.append(go.Scatter3d(mode="markers", name=f"prompt {PROMPT_NAMES[prompt]}", customdata=customdata,
                                   marker=marker, **first))
    traces.extend(_trails(data, trails))
    frames = [go.Frame(name=str(f), data=frame_traces(f), traces=list(range(len(selects))))
              for f in range(data.n_frames)]
    steps = [{"label": labels[f], "method": "animate",
              "args": [[str(f)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                  "transition": {"duration": 0}}]} for f in range(data.n_frames)]
    axes = {name: {"range": [float(lows[i]), float(highs[i])], "autorange": False, "title": {"text": f"PC{i + 1}"}}
            for i, name in enumerate(("xaxis", "yaxis", "zaxis"))}
    basis = data.summary.get("basis") or {}
    if basis.get("kind") == "umap":
        for i, name in enumerate(("xaxis", "yaxis", "zaxis")):
            axes[name]["title"]["text"] = f"UMAP {i + 1}"
    layout: dict[str, Any] = {
        "height": FIGURE_HEIGHT, "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
        "scene": {**axes, "aspectmode": "cube"}, "uirevision": data.run_id,
        "legend": {"orientation": "h", "y": 1.02, "x": 0},
        "sliders": [{"active": start, "steps": steps, "x": 0.05, "len": 0.9, "y": 0.02,
                     "currentvalue": {"prefix": "frame: ", "font": {"size": 13}}, "pad": {"t": 10}}],
        "meta": {"view": "scan", "labels": labels, "n_frames": data.n_frames, "render": render},
    }
    if controls:
        layout["updatemenus"] = [{"type": "buttons", "direction": "left", "x": 0.05, "y": 0.1, "showactive": False,
                                  "buttons": [
            {"label": "▶ play", "method": "animate",
             "args": [None, {"frame": {"duration": 400, "redraw": True}, "transition": {"duration": 0},
                             "fromcurrent": True}]},
            {"label": "❚❚ pause", "method": "animate",
             "args": [[None], {"mode": "immediate", "frame": {"duration": 0, "redraw": False},
                               "transition": {"duration": 0}}]}]}]
    return go.Figure(data=traces, layout=layout, frames=frames)


def divergence_figure(data: ScanData, current: int = 0) -> go.Figure:
    """One line per metric against the frame; threshold and first crossing marked; click to jump."""
    labels = data.labels
    x = np.arange(data.n_frames)
    diff = data.summary.get("diff") or {}
    traces = []
    for name, (label, colour, axis) in METRIC_STYLE.items():
        values = data.divergence.get(name)
        if values is None:
            continue
        traces.append(go.Scatter(x=x, y=values, name=label, mode="lines+markers", yaxis=axis,
                                 line={"color": colour}, marker={"size": 6}, customdata=x,
                                 text=[hover_safe(t, 60) for t in labels],
                                 hovertemplate="%{text}<br>" + label + ": %{y:.4g}<extra></extra>"))
    shapes: list[dict[str, Any]] = [{"type": "line", "xref": "x", "yref": "paper", "x0": current, "x1": current,
                                     "y0": 0, "y1": 1, "line": {"color": "#444", "width": 2, "dash": "dot"},
                                     "name": "current"}]
    annotations = []
    metric = diff.get("threshold_metric")
    if metric in METRIC_STYLE and diff.get("threshold") is not None:
        axis = METRIC_STYLE[metric][2]
        shapes.append({"type": "line", "xref": "paper", "yref": axis, "x0": 0, "x1": 1,
                       "y0": diff["threshold"], "y1": diff["threshold"],
                       "line": {"color": METRIC_STYLE[metric][1], "width": 1, "dash": "dash"}})
    crossing = diff.get("first_crossing")
    if crossing is not None:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": crossing, "x1": crossing, "y0": 0,
                       "y1": 1, "line": {"color": "#d62728", "width": 2}})
        annotations.append({"x": crossing, "y": 1.0, "yref": "paper", "text": f"first crossing: "
                            f"{hover_safe(str(diff.get('first_crossing_label') or crossing), 40)}",
                            "showarrow": False, "yanchor": "bottom", "font": {"color": "#d62728"}})
    step = max(1, data.n_frames // 12)
    return go.Figure(data=traces, layout={
        "height": 380, "margin": {"l": 50, "r": 50, "t": 40, "b": 60}, "clickmode": "event",
        "xaxis": {"title": {"text": "layer (click to jump)"}, "tickvals": x[::step].tolist(),
                  "ticktext": [labels[i].replace("block ", "") for i in x[::step]]},
        "yaxis": {"title": {"text": "distance / divergence"}, "rangemode": "tozero"},
        "yaxis2": {"overlaying": "y", "side": "right", "rangemode": "tozero", "showgrid": False,
                   "title": {"text": "KL (bits)"}},
        "legend": {"orientation": "h", "y": -0.35, "font": {"size": 10}},
        "shapes": shapes, "annotations": annotations, "meta": {"view": "scan-divergence"},
    })


def heatmap_figure(data: ScanData) -> go.Figure:
    """Cosine distance of A and B per aligned position (rows) and frame (columns)."""
    heat = data.heatmap
    aligned = heat.shape[1] if heat is not None else 0
    tokens_a, tokens_b = data.tokens(0)[:aligned], data.tokens(1)[:aligned] if data.n_prompts > 1 else []
    rows = [f"{p}: {hover_safe(a, 12)}" + ("" if a == b else f" / {hover_safe(b, 12)}")
            for p, (a, b) in enumerate(zip(tokens_a, tokens_b, strict=False))]
    labels = data.labels
    figure = go.Figure(go.Heatmap(
        z=heat.T.astype(np.float32) if heat is not None else [], x=np.arange(data.n_frames), y=np.arange(aligned),
        colorscale="Magma", reversescale=True, zmin=0, colorbar={"title": {"text": "cosine distance"}},
        hovertemplate="position %{y}, frame %{x}<br>cosine distance %{z:.4g}<extra></extra>"))
    step = max(1, aligned // 40)
    frame_step = max(1, data.n_frames // 12)
    figure.update_layout(height=max(260, min(900, 14 * aligned + 120)), margin={"l": 130, "r": 10, "t": 30, "b": 40},
                         yaxis={"tickvals": list(range(0, aligned, step)), "ticktext": rows[::step],
                                "autorange": "reversed"},
                         xaxis={"title": {"text": "frame (click to jump)"},
                                "tickvals": list(range(0, data.n_frames, frame_step)),
                                "ticktext": [labels[i].replace("block ", "") for i in range(0, data.n_frames, frame_step)]},
                         title={"text": "A vs B per aligned position", "font": {"size": 13}},
                         meta={"view": "scan-heatmap"})
    return figure
