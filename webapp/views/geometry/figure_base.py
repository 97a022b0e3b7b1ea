"""What the six geometry views share: constants, point labels, hover text, sampling, layout helpers.

No Dash, no database: the run page, its callbacks and the static export
(``webapp.render`` via ``webapp.views.geometry.export_figures``) all call
these. Invariants:

* every point-drawing trace carries ``customdata`` whose first value per point
  is the point's row in the run's arrays (``point_hover``: rows of row, layer,
  norm, prompt, position), so a selection in any view names the same points;
  it stays a JSON list (dcc.Graph reads event customdata from the figure as
  sent), while coordinates and colours go as binary arrays;
* every figure ends with one empty trace named ``selected`` (its index is
  ``figure.layout.meta["highlight_trace"]``), which ``highlight`` fills with
  the selected points' positions in that view: linked views patch only it;
* token strings are user-controlled text: in hover text they go through
  ``html.escape``; no other user text is put into a figure;
* more than ``MAX_POINTS`` points are drawn as a seeded sample with a note
  saying so; 2D scatters are WebGL (``Scattergl``), 3D ones are WebGL anyway.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

COMPONENTS = ("attn_out", "resid_mid", "mlp_out", "resid_post")
ATTN, MLP = 0, 2
COMPONENT_LABELS = {
    "attn_out": "attention output",
    "resid_mid": "residual after attention",
    "mlp_out": "MLP output",
    "resid_post": "residual after MLP",
}
COMPONENT_COLOURS = {"attn_out": "#1f77b4", "resid_mid": "#2ca02c", "mlp_out": "#d62728",
                     "resid_post": "#9467bd"}
ATTN_COLOUR, MLP_COLOUR = "#1f77b4", "#d62728"  # blue attention, red MLP
# Symbols that exist for both Scatter3d and Scattergl.
COMPONENT_SYMBOLS = {"attn_out": "diamond", "resid_mid": "square", "mlp_out": "x",
                     "resid_post": "circle"}
FALLBACK_SYMBOLS = ("circle-open", "square-open", "diamond-open", "cross")
LAYER_COLORSCALE = "Viridis"
MAX_POINTS = 50_000  # per figure; above it a seeded sample is drawn (the browser stays smooth)
ANIMATION_MAX_POINTS = 40_000  # over all frames
COLOR_MODES = {"layer": "layer (depth)", "component": "component", "position": "position",
               "norm": "norm (log10)", "prompt": "prompt"}
HIGHLIGHT_NAME = "selected"
HEIGHT = 640

Arrays = Mapping[str, np.ndarray]
Summary = Mapping[str, Any]


# --------------------------------------------------------------------------- helpers


def component_names(summary: Summary) -> list[str]:
    return list(summary.get("components") or COMPONENTS)


def component_name(components: Sequence[str], comp: int) -> str:
    return components[comp] if 0 <= comp < len(components) else f"component {comp}"


def symbol_for(component: str, index: int) -> str:
    return COMPONENT_SYMBOLS.get(component, FALLBACK_SYMBOLS[index % len(FALLBACK_SYMBOLS)])


def n_layers_of(arrays: Arrays, summary: Summary) -> int:
    layers = np.asarray(arrays["layer"])
    return int(summary.get("n_layers") or (int(layers.max()) + 1 if len(layers) else 1))


def token_text(summary: Summary, prompt: int, position: int) -> str:
    """The raw token string of a point, or a description of what was averaged."""
    if prompt < 0 and position < 0:
        return "(mean over prompts and positions)"
    if prompt < 0:
        return f"(mean over prompts at position {position})"
    if position < 0:
        return f"(mean over positions of prompt {prompt})"
    tokens = summary.get("tokens") or []
    try:
        return str(tokens[prompt][position])
    except (IndexError, TypeError):
        return "(unknown token)"


def token_label(token: str) -> str:
    """A token as shown to people: quoted so leading spaces and newlines are visible."""
    return repr(token) if not token.startswith("(") else token


def lens_token(summary: Summary, token_id: int) -> str:
    tokens = (summary.get("lens") or {}).get("tokens") or {}
    return str(tokens.get(str(int(token_id)), f"#{int(token_id)}"))


def axis_titles(summary: Summary, explained: np.ndarray | None, dims: int) -> list[str]:
    """``PC1 (41.2%)`` for PCA (with explained variance), ``UMAP1`` otherwise."""
    reduction = str(summary.get("reduction") or "pca").lower()
    prefix = "PC" if reduction == "pca" else reduction.upper()
    titles = []
    for i in range(dims):
        title = f"{prefix}{i + 1}"
        if explained is not None and i < len(explained) and np.isfinite(explained[i]):
            title += f" ({100.0 * float(explained[i]):.1f}%)"
        titles.append(title)
    return titles


def subsample(index: np.ndarray | int, max_points: int, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` of ``index`` (or of ``arange(index)``), sorted, seeded."""
    index = np.arange(index) if isinstance(index, int | np.integer) else np.asarray(index)
    if len(index) <= max_points:
        return index
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(index, size=max_points, replace=False))


def point_hover(arrays: Arrays, summary: Summary, index: np.ndarray, component: str) -> dict[str, Any]:
    """Compact hover of the points at ``index`` (one component): trace keywords for Plotly.

    The numbers travel as ``customdata`` rows ``[row, layer, norm (4 significant
    digits), prompt, position]`` that ``hovertemplate`` formats in the browser;
    only the strings that differ per point (the escaped token, the lens' top
    token and, for averaged points, what was averaged) are text: the labels
    and the component name are written once per trace, not once per point.
    """
    index = np.asarray(index, dtype=np.int64)
    prompts = np.asarray(arrays["prompt_index"])[index]
    positions = np.asarray(arrays["position"])[index]
    norms = [float(f"{v:.4g}") for v in np.asarray(arrays["norm"])[index].tolist()]
    # A JSON list of short numbers, not a binary array: dcc.Graph reads a clicked point's
    # customdata from the figure as sent, where a binary array is still {"dtype", "bdata"}.
    custom = [list(values) for values in zip(index.tolist(), np.asarray(arrays["layer"])[index].tolist(), norms,
                                             prompts.tolist(), positions.tolist(), strict=True)]
    lens_ids, lens_probs = arrays.get("lens_ids"), arrays.get("lens_probs")
    averaged = bool(len(index)) and bool((prompts < 0).any() or (positions < 0).any())
    texts = []
    for row, prompt, position in zip(index.tolist(), prompts.tolist(), positions.tolist(), strict=True):
        text = "token " + html_lib.escape(token_label(token_text(summary, prompt, position)), quote=False)
        if averaged:
            where = "prompt " + ("mean" if prompt < 0 else str(prompt))
            text = where + " · position " + ("mean" if position < 0 else str(position)) + "<br>" + text
        if lens_ids is not None and lens_ids[row, 0] >= 0:
            top = html_lib.escape(token_label(lens_token(summary, lens_ids[row, 0])), quote=False)
            text += f"<br>lens → {top} ({float(lens_probs[row, 0]):.2f})"
        texts.append(text)
    where = "" if averaged else "prompt %{customdata[3]} · position %{customdata[4]}<br>"
    name = html_lib.escape(component, quote=False)
    template = (f"{where}%{{text}}<br>layer %{{customdata[1]}} · {name}<br>"
                "norm %{customdata[2]:.4g}<extra></extra>")
    return {"customdata": custom, "text": texts, "hovertemplate": template}


def add_note(fig: go.Figure, shown: int, total: int, what: str = "points") -> None:
    if shown < total:
        fig.add_annotation(text=f"showing {shown:,} of {total:,} {what} (seeded sample; WebGL)",
                           xref="paper", yref="paper", x=1, y=1.0, xanchor="right",
                           yanchor="bottom", showarrow=False, font=dict(size=11))


def highlight_trace(dims: int, **kwargs: Any) -> go.BaseTraceType:
    marker = dict(size=12 if dims == 2 else 7, color="rgba(0,0,0,0)", symbol="circle-open",
                  line=dict(width=2.5, color="#ff7f0e"))
    common = dict(name=HIGHLIGHT_NAME, mode="markers", marker=marker, hoverinfo="skip",
                  showlegend=False, x=[], y=[], **kwargs)
    if dims == 3:
        marker.update(color="#ff7f0e", symbol="circle", opacity=1.0, size=9, line=dict(width=0))
        return go.Scatter3d(z=[], **common)
    return go.Scattergl(**common) if "xaxis" not in kwargs else go.Scatter(**common)


def finish(fig: go.Figure, kind: str) -> go.Figure:
    """Record where the highlight trace is and what the view is (``layout.meta``)."""
    index = next(i for i, t in enumerate(fig.data) if t.name == HIGHLIGHT_NAME)
    fig.update_layout(meta={"highlight_trace": index, "view": kind})
    return fig


def apply_layout(fig: go.Figure, **extra: Any) -> None:
    fig.update_layout(template="plotly_white", height=HEIGHT, margin=dict(l=10, r=10, t=50, b=10),
                      uirevision="geometry", **extra)


def coords_of(arrays: Arrays) -> tuple[np.ndarray, int]:
    coords = np.asarray(arrays["coords"], dtype=np.float32)
    dims = int(coords.shape[1]) if coords.ndim == 2 else 0
    if dims not in (2, 3):
        raise ValueError(f"coords must have 2 or 3 columns, not shape {coords.shape}")
    return coords, dims


# --------------------------------------------------------------------------- 1. layer evolution


def colour_values(arrays: Arrays, mode: str, index: np.ndarray) -> np.ndarray:
    if mode == "layer":
        return np.asarray(arrays["layer"])[index].astype(int)
    if mode == "position":
        return np.asarray(arrays["position"])[index].astype(int)
    if mode == "prompt":
        return np.asarray(arrays["prompt_index"])[index].astype(int)
    if mode == "norm":
        return np.log10(np.maximum(np.asarray(arrays["norm"])[index].astype(np.float64), 1e-12))
    raise ValueError(f"unknown colour mode {mode!r} (known: {', '.join(COLOR_MODES)})")


def shown_index(arrays: Arrays, candidates: np.ndarray, layers: tuple[int, int] | None,
           hide_position0: bool, layer_of: np.ndarray | None = None,
           position_of: np.ndarray | None = None) -> np.ndarray:
    """``candidates`` left after the layer filter and (optionally) hiding position 0."""
    layer = np.asarray(arrays["layer"])[candidates] if layer_of is None else layer_of
    keep = np.ones(len(candidates), dtype=bool)
    if layers is not None:
        keep &= (layer >= layers[0]) & (layer <= layers[1])
    if hide_position0:
        position = np.asarray(arrays["position"])[candidates] if position_of is None else position_of
        keep &= position != 0
    return candidates[keep]
