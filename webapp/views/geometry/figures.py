"""The six geometry views as pure functions: a run's arrays and summary in, a Plotly figure out.

No Dash, no database: the run page, its callbacks and the static export
(``webapp.render`` via ``webapp.views.geometry.export_figures``) all call
these. Shared constants and helpers are in ``figure_base`` (re-exported here,
so ``figures`` is the one module callers import). Invariants:

* every point-drawing trace carries ``customdata`` = the point's row in the
  run's arrays (an int), so a selection in any view names the same points;
* every figure ends with one empty trace named ``selected`` (its index is
  ``figure.layout.meta["highlight_trace"]``), which ``highlight`` fills with
  the selected points' positions in that view: linked views patch only it;
* token strings are user-controlled text: in hover text they go through
  ``html.escape``; no other user text is put into a figure;
* more than ``MAX_POINTS`` points are drawn as a seeded sample with a note
  saying so; 2D scatters are WebGL (``Scattergl``), 3D ones are WebGL anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from latent_atlas.analyses.geometry import stats as geometry_stats
from webapp.views.geometry.figure_base import (  # noqa: F401  shared names, re-exported
    ANIMATION_MAX_POINTS,
    ATTN,
    ATTN_COLOUR,
    COLOR_MODES,
    COMPONENT_COLOURS,
    COMPONENT_LABELS,
    COMPONENT_SYMBOLS,
    COMPONENTS,
    FALLBACK_SYMBOLS,
    HEIGHT,
    HIGHLIGHT_NAME,
    LAYER_COLORSCALE,
    MAX_POINTS,
    MLP,
    MLP_COLOUR,
    Arrays,
    Summary,
    add_note,
    apply_layout,
    axis_titles,
    colour_values,
    component_name,
    component_names,
    coords_of,
    finish,
    highlight_trace,
    lens_token,
    n_layers_of,
    point_hover,
    shown_index,
    subsample,
    symbol_for,
    token_label,
    token_text,
)


def layer_evolution_figure(arrays: Arrays, summary: Summary, *, color_by: str = "layer",
                           layers: tuple[int, int] | None = None, hide_position0: bool = False,
                           max_points: int = MAX_POINTS) -> go.Figure:
    """Every captured state in the reduced space, one trace per component (marker shape).

    Colour is depth by default (``color_by``: layer, component, position, norm,
    prompt); ``layers=(first, last)`` shows only those layers (inclusive);
    ``hide_position0`` leaves out the points at position 0 (whose outlier norms
    can squash the rest; they stay in the fit unless the run excluded them).
    3D (``Scatter3d``) when the coordinates have three columns, else ``Scattergl``.
    """
    if color_by not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {color_by!r} (known: {', '.join(COLOR_MODES)})")
    coords, dims = coords_of(arrays)
    components = component_names(summary)
    comp_idx = np.asarray(arrays["component"])
    candidates = shown_index(arrays, np.arange(len(coords)), layers, hide_position0)
    keep = subsample(candidates, max_points)
    explained = arrays.get("explained_variance_ratio")
    titles = axis_titles(summary, None if explained is None else np.asarray(explained), dims)
    n_layers = n_layers_of(arrays, summary)
    gradient = color_by != "component"
    fig = go.Figure()
    for comp in sorted({int(c) for c in np.unique(comp_idx[keep])}) if len(keep) else []:
        index = keep[comp_idx[keep] == comp]
        name = component_name(components, comp)
        marker: dict[str, Any] = dict(symbol=symbol_for(name, comp), size=3 if dims == 3 else 6,
                                      opacity=0.85, line=dict(width=0))
        if gradient:
            marker.update(color=colour_values(arrays, color_by, index).astype(np.float32), coloraxis="coloraxis")
        else:
            marker.update(color=COMPONENT_COLOURS.get(name, "#555"))
        common = dict(name=name, mode="markers", marker=marker,
                      **point_hover(arrays, summary, index, name))
        if dims == 3:
            fig.add_trace(go.Scatter3d(x=coords[index, 0], y=coords[index, 1], z=coords[index, 2],
                                       **common))
        else:
            fig.add_trace(go.Scattergl(x=coords[index, 0], y=coords[index, 1], **common))
    fig.add_trace(highlight_trace(dims))
    if gradient:
        if color_by == "layer":
            cmin, cmax = 0, max(1, n_layers - 1)
            colorbar = dict(title=dict(text="layer"), dtick=max(1, int(np.ceil((n_layers - 1) / 10))))
        else:
            values = colour_values(arrays, color_by, keep) if len(keep) else np.zeros(1)
            cmin, cmax = float(values.min()), float(max(values.max(), values.min() + 1e-9))
            colorbar = dict(title=dict(text=COLOR_MODES[color_by]))
        fig.update_layout(coloraxis=dict(colorscale=LAYER_COLORSCALE, cmin=cmin, cmax=cmax,
                                         colorbar=colorbar))
    apply_layout(fig, legend=dict(title=dict(text="component"), orientation="h", yanchor="bottom", y=1.0,
                             x=0.0, itemsizing="constant"))
    if dims == 3:
        fig.update_layout(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1],
                                     zaxis_title=titles[2], aspectmode="cube"))
    else:
        fig.update_layout(xaxis_title=titles[0], yaxis_title=titles[1])
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    add_note(fig, len(keep), len(candidates))
    if hide_position0:
        fig.add_annotation(text="position 0 hidden", xref="paper", yref="paper", x=0, y=0,
                           xanchor="left", yanchor="bottom", showarrow=False, font=dict(size=11))
    return finish(fig, "layer_evolution")


# --------------------------------------------------------------------------- 2. attention vs MLP


def attn_mlp_index(arrays: Arrays) -> np.ndarray:
    """Rows of the run's points drawn by the attention-vs-MLP view (order of ``attn_mlp_coords``)."""
    return np.flatnonzero(np.isin(np.asarray(arrays["component"]), [ATTN, MLP]))


def separation_rows(summary: Summary) -> list[tuple[int, float | None, float | None]]:
    """(layer, held-out linear accuracy, 2D silhouette) per layer from the summary."""
    sep = summary.get("separation") or {}
    return list(zip(sep.get("layers") or [], sep.get("lda_accuracy") or [],
                    sep.get("silhouette_2d") or [], strict=False))


def separation_text(summary: Summary) -> str:
    sep = summary.get("separation") or {}
    acc, sil = sep.get("overall_lda_accuracy"), sep.get("overall_silhouette_2d")
    if acc is None and sil is None:
        return "separation: not available"
    parts = []
    if acc is not None:
        parts.append(f"linear accuracy {acc:.3f}")
    if sil is not None:
        parts.append(f"silhouette {sil:.3f}")
    return "overall separation: " + ", ".join(parts)


def attention_mlp_figure(arrays: Arrays, summary: Summary, *, layers: tuple[int, int] | None = None,
                         hide_position0: bool = False, max_points: int = MAX_POINTS) -> go.Figure:
    """2D scatter of the attention (blue) and MLP (red) outputs, with separation per layer beside it."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=0.08,
                        subplot_titles=("attention vs MLP outputs (2D PCA of these two)",
                                        "separation per layer"))
    am_coords = arrays.get("attn_mlp_coords")
    total = 0
    if am_coords is not None:
        rows = attn_mlp_index(arrays)
        comp = np.asarray(arrays["component"])[rows]
        layer = np.asarray(arrays["layer"])[rows]
        local = shown_index(arrays, np.arange(len(rows)), layers, hide_position0, layer_of=layer,
                       position_of=np.asarray(arrays["position"])[rows])
        total = len(local)
        keep = subsample(local, max_points)
        for value, name, colour in ((ATTN, "attention (attn_out)", ATTN_COLOUR),
                                    (MLP, "MLP (mlp_out)", MLP_COLOUR)):
            part = keep[comp[keep] == value]
            fig.add_trace(go.Scattergl(
                x=am_coords[part, 0], y=am_coords[part, 1], mode="markers", name=name,
                marker=dict(color=colour, size=5, opacity=0.6, line=dict(width=0)),
                **point_hover(arrays, summary, rows[part], "attn_out" if value == ATTN else "mlp_out"),
            ), row=1, col=1)
        explained = arrays.get("attn_mlp_explained")
        titles = axis_titles({"reduction": "pca"}, None if explained is None else np.asarray(explained), 2)
        fig.update_xaxes(title_text=titles[0], row=1, col=1)
        fig.update_yaxes(title_text=titles[1], row=1, col=1)
        add_note(fig, len(keep), total)
    else:
        fig.add_annotation(text="this run has no attention and MLP outputs to compare",
                           xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False)
    table = separation_rows(summary)
    if table:
        layer_axis = [r[0] for r in table]
        fig.add_trace(go.Scatter(x=layer_axis, y=[r[1] for r in table], mode="lines+markers",
                                 name="held-out linear accuracy", line=dict(color="#333")),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=layer_axis, y=[r[2] for r in table], mode="lines+markers",
                                 name="silhouette (2D)", line=dict(color="#ff7f0e", dash="dot")),
                      row=1, col=2)
        fig.update_xaxes(title_text="layer", row=1, col=2)
        fig.update_yaxes(range=[-0.05, 1.05], row=1, col=2)
    fig.add_trace(highlight_trace(2), row=1, col=1)
    apply_layout(fig, title=dict(text=separation_text(summary), x=0.0, font=dict(size=14)),
            legend=dict(orientation="h", yanchor="top", y=-0.08, x=0.0))
    fig.update_layout(margin=dict(l=10, r=10, t=80, b=40))
    return finish(fig, "attention_mlp")


# --------------------------------------------------------------------------- 3. position-0 norm


def position0_figure(arrays: Arrays, summary: Summary) -> go.Figure:
    """Mean norm at position 0 against positions >= 1 per layer and component, and their ratio."""
    n_layers = n_layers_of(arrays, summary)
    components = component_names(summary)
    stats = geometry_stats.position0_ratios(arrays["norm"], arrays["layer"], arrays["component"],
                                            arrays["position"], n_layers, len(components))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                        subplot_titles=("mean norm: position 0 (solid) vs positions ≥ 1 (dashed)",
                                        "ratio position 0 / rest"))
    layer_axis = list(range(n_layers))
    present = sorted({int(c) for c in np.unique(np.asarray(arrays["component"]))})
    for c in present:
        name = component_name(components, c)
        colour = COMPONENT_COLOURS.get(name, "#555")
        for values, dash, label in ((stats["first"][:, c], "solid", "position 0"),
                                    (stats["rest"][:, c], "dash", "positions ≥ 1")):
            fig.add_trace(go.Scatter(x=layer_axis, y=_nan_to_none(values), mode="lines+markers",
                                     name=f"{name} · {label}", legendgroup=name,
                                     line=dict(color=colour, dash=dash), marker=dict(size=5)),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=layer_axis, y=_nan_to_none(stats["ratio"][:, c]), mode="lines+markers",
                                 name=f"{name} · ratio", legendgroup=name, showlegend=False,
                                 line=dict(color=colour)), row=2, col=1)
    fig.add_trace(highlight_trace(2, xaxis="x", yaxis="y"))
    fig.update_yaxes(type="log", dtick=1, title_text="mean L2 norm", row=1, col=1)
    fig.update_yaxes(type="log", dtick=1, title_text="ratio", row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    apply_layout(fig, title=dict(text=position0_text(stats["ratio"], stats["overall"], components), x=0.0,
                            font=dict(size=14)),
            legend=dict(orientation="v", x=1.02, y=1.0))
    fig.update_layout(margin=dict(l=10, r=10, t=80, b=10))
    if not np.any(np.asarray(arrays["position"]) == 0):
        fig.add_annotation(text="no point has position 0 here (averaged over positions)",
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    return finish(fig, "position0")


def position0_text(ratio: np.ndarray, overall: float, components: Sequence[str]) -> str:
    parts = []
    if np.isfinite(overall):
        parts.append(f"position 0 / rest = {overall:.2f}× over all points")
    if "resid_post" in components:
        column = ratio[:, list(components).index("resid_post")]
        column = column[np.isfinite(column)]
        if len(column):
            parts.append(f"resid_post median over layers {np.median(column):.2f}×, "
                         f"max {column.max():.1f}×")
    return "; ".join(parts) or "position-0 ratio: not available"


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


# --------------------------------------------------------------------------- 4. positional structure


def positional_figure(arrays: Arrays, summary: Summary) -> go.Figure:
    """The positional structure in 3D: learned position embeddings (a helix for GPT-2) or mean states."""
    info = summary.get("positional") or {}
    fig = go.Figure()
    coords = arrays.get("positional_coords")
    if coords is not None and len(coords):
        coords = np.asarray(coords, dtype=np.float32)
        positions = np.asarray(arrays["positional_position"])
        counts = arrays.get("positional_count")
        texts = [f"position {int(p)}" + (f" · {int(counts[i])} prompts" if counts is not None
                                         and counts[i] > 0 else "") for i, p in enumerate(positions)]
        columns = [coords[:, i] if i < coords.shape[1] else np.zeros(len(coords)) for i in range(3)]
        fig.add_trace(go.Scatter3d(
            x=columns[0], y=columns[1], z=columns[2], mode="lines+markers", name="positions",
            marker=dict(size=3, color=positions.tolist(), colorscale="Plasma",
                        colorbar=dict(title=dict(text="position"))),
            line=dict(color="rgba(120,120,120,0.35)", width=2),
            hoverinfo="text", hovertext=texts, customdata=positions.tolist(),
        ))
        explained = arrays.get("positional_explained")
        titles = axis_titles({"reduction": "pca"}, None if explained is None else np.asarray(explained), 3)
        fig.update_layout(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1], zaxis_title=titles[2],
                                     aspectmode="cube"))
    else:
        fig.add_annotation(text=str(info.get("reason") or "no positional structure stored"),
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    fig.add_trace(highlight_trace(3))
    apply_layout(fig, title=dict(text=positional_title(info), x=0.0, font=dict(size=14)))
    return finish(fig, "positional")


def positional_title(info: Mapping[str, Any]) -> str:
    kind = info.get("kind")
    if kind == "learned":
        return "learned position embeddings (PCA to 3D)"
    if kind == "mean_state":
        return f"mean {info.get('component', 'resid_post')} state per position at layer {info.get('layer')}"
    return "positional structure: not available"


# --------------------------------------------------------------------------- 5. layer norms


def layer_norms_figure(arrays: Arrays, summary: Summary, *, log: bool = True) -> go.Figure:
    """Bars of the mean norm per layer and component."""
    n_layers = n_layers_of(arrays, summary)
    components = component_names(summary)
    means = geometry_stats.layer_component_means(arrays["norm"], arrays["layer"], arrays["component"],
                                                 n_layers, len(components))
    fig = go.Figure()
    present = sorted({int(c) for c in np.unique(np.asarray(arrays["component"]))})
    for c in present:
        name = component_name(components, c)
        fig.add_trace(go.Bar(x=list(range(n_layers)), y=_nan_to_none(means[:, c]), name=name,
                             marker_color=COMPONENT_COLOURS.get(name, "#555"),
                             hovertemplate=f"layer %{{x}} · {name}<br>mean norm %{{y:.4g}}<extra></extra>"))
    fig.add_trace(highlight_trace(2, xaxis="x", yaxis="y"))
    growth = ((summary.get("norm_stats") or {}).get("growth") or {}).get("resid_post")
    title = "mean L2 norm per layer and component"
    if growth and growth.get("spearman") is not None:
        verdict = "grows" if growth.get("grows") else "does not grow steadily"
        title += (f" — resid_post {verdict} with depth (Spearman ρ {growth['spearman']:.2f}, "
                  f"last/first {growth['last_over_first']:.1f}×)")
    apply_layout(fig, barmode="group", title=dict(text=title, x=0.0, font=dict(size=14)),
            xaxis_title="layer", yaxis_title="mean L2 norm" + (" (log)" if log else ""),
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0.0))
    if log:
        fig.update_yaxes(type="log", dtick=1)
    return finish(fig, "layer_norms")


# --------------------------------------------------------------------------- 6. animation


def _padded_range(values: np.ndarray) -> list[float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * max(hi - lo, 1e-6)
    return [lo - pad, hi + pad]


def animation_figure(arrays: Arrays, summary: Summary, *,
                     max_points: int = ANIMATION_MAX_POINTS) -> go.Figure:
    """The states of one layer per frame (play, pause, slider); axes fixed across frames."""
    coords, dims = coords_of(arrays)
    components = component_names(summary)
    layer = np.asarray(arrays["layer"])
    comp_idx = np.asarray(arrays["component"])
    keep = subsample(len(coords), max_points)
    present_layers = sorted({int(v) for v in np.unique(layer)})
    present_comps = sorted({int(c) for c in np.unique(comp_idx)})
    Trace = go.Scatter3d if dims == 3 else go.Scattergl

    def traces(at: int) -> list[go.BaseTraceType]:
        out = []
        for comp in present_comps:
            index = keep[(layer[keep] == at) & (comp_idx[keep] == comp)]
            name = component_name(components, comp)
            xyz = dict(x=coords[index, 0], y=coords[index, 1])
            if dims == 3:
                xyz["z"] = coords[index, 2]
            out.append(Trace(**xyz, mode="markers", name=name,
                             marker=dict(color=COMPONENT_COLOURS.get(name, "#555"),
                                         symbol=symbol_for(name, comp), size=3 if dims == 3 else 6,
                                         opacity=0.8),
                             **point_hover(arrays, summary, index, name)))
        return out

    first = present_layers[0] if present_layers else 0
    fig = go.Figure(data=[*traces(first), highlight_trace(dims)])
    moving = list(range(len(present_comps)))
    fig.frames = [go.Frame(name=str(at), data=traces(at), traces=moving,
                           layout=dict(title=dict(text=f"layer {at}"))) for at in present_layers]
    duration = 500
    play = dict(label="▶ play", method="animate",
                args=[None, dict(frame=dict(duration=duration, redraw=dims == 3), fromcurrent=True,
                                 transition=dict(duration=0), mode="immediate")])
    pause = dict(label="❚❚ pause", method="animate",
                 args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate",
                                    transition=dict(duration=0))])
    steps = [dict(label=str(at), method="animate",
                  args=[[str(at)], dict(mode="immediate", frame=dict(duration=0, redraw=dims == 3),
                                        transition=dict(duration=0))]) for at in present_layers]
    explained = arrays.get("explained_variance_ratio")
    titles = axis_titles(summary, None if explained is None else np.asarray(explained), dims)
    ranges = [_padded_range(coords[keep, i]) if len(keep) else [-1, 1] for i in range(dims)]
    apply_layout(fig, title=dict(text=f"layer {first}", x=0.0),
            updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left",
                              yanchor="top", showactive=False, buttons=[play, pause])],
            sliders=[dict(active=0, steps=steps, x=0.2, len=0.8, y=-0.02, yanchor="top",
                          currentvalue=dict(prefix="layer ", visible=True))],
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0.3))
    if dims == 3:
        fig.update_layout(scene=dict(xaxis=dict(title=titles[0], range=ranges[0], autorange=False),
                                     yaxis=dict(title=titles[1], range=ranges[1], autorange=False),
                                     zaxis=dict(title=titles[2], range=ranges[2], autorange=False),
                                     aspectmode="cube"))
    else:
        fig.update_layout(xaxis=dict(title=titles[0], range=ranges[0], autorange=False),
                          yaxis=dict(title=titles[1], range=ranges[1], autorange=False))
    fig.update_layout(margin=dict(l=10, r=10, t=50, b=90))
    add_note(fig, len(keep), len(coords))
    return finish(fig, "animation")


# --------------------------------------------------------------------------- linked selection


def highlight(view: str, arrays: Arrays, summary: Summary, index: Sequence[int]) -> dict[str, list]:
    """x/y(/z) of the highlight trace of ``view`` for the selected point rows ``index``."""
    index = np.asarray([int(i) for i in index if 0 <= int(i) < len(arrays["layer"])], dtype=np.int64)
    if view in ("layer_evolution", "animation"):
        coords, dims = coords_of(arrays)
        out = {"x": coords[index, 0].tolist(), "y": coords[index, 1].tolist()}
        if dims == 3:
            out["z"] = coords[index, 2].tolist()
        return out
    if view == "attention_mlp":
        rows = attn_mlp_index(arrays)
        if "attn_mlp_coords" not in arrays:
            return {"x": [], "y": []}
        at = np.searchsorted(rows, index)
        ok = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == index) if len(rows) else \
            np.zeros(len(index), dtype=bool)
        am = np.asarray(arrays["attn_mlp_coords"])[at[ok]]
        return {"x": am[:, 0].tolist(), "y": am[:, 1].tolist()}
    if view in ("position0", "layer_norms"):
        return {"x": np.asarray(arrays["layer"])[index].astype(int).tolist(),
                "y": np.asarray(arrays["norm"])[index].astype(float).tolist()}
    if view == "positional":
        coords = arrays.get("positional_coords")
        if coords is None:
            return {"x": [], "y": [], "z": []}
        table = {int(p): i for i, p in enumerate(np.asarray(arrays["positional_position"]))}
        wanted = sorted({table[int(p)] for p in np.asarray(arrays["position"])[index] if int(p) in table})
        chosen = np.asarray(coords, dtype=np.float32)[wanted] if wanted else np.zeros((0, 3))
        cols = [chosen[:, i].tolist() if chosen.shape[1] > i else [0.0] * len(chosen) for i in range(3)]
        return {"x": cols[0], "y": cols[1], "z": cols[2]}
    raise ValueError(f"unknown view {view!r}")
