"""The geometry run kind: its New-run form, figures and run view.

Figures are pure functions of a run's arrays and summary (no Dash, no
database): ``layer_evolution_figure(arrays, summary)`` today; the attention vs
MLP, position-0 norm, positional structure, layer-norm and animation views
join ``FIGURES`` with the same signature and ``render`` shows them as tabs.

Every point carries ``customdata = [point index, prompt, position, layer,
component, norm, token]``, where the point index is the row in the run's
arrays, so linked views can select points by that index across figures.

Invariants: token strings are user-controlled text; in Plotly hover text
(HTML-ish) they are ``html.escape``d, in Dash components they are plain text
children. Component IDs of this module start with ``geometry-``.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, callback, dcc, html

from webapp.components import kv_table
from webapp.views import FormError, field_id

KIND = "geometry"
COMPONENTS = ("attn_out", "resid_mid", "mlp_out", "resid_post")
COMPONENT_LABELS = {
    "attn_out": "attention output",
    "resid_mid": "residual after attention",
    "mlp_out": "MLP output",
    "resid_post": "residual after MLP",
}
# Symbols that exist for both Scatter3d and Scattergl.
COMPONENT_SYMBOLS = {"attn_out": "diamond", "resid_mid": "square", "mlp_out": "x",
                     "resid_post": "circle"}
FALLBACK_SYMBOLS = ("circle-open", "square-open", "diamond-open", "cross")
LAYER_COLORSCALE = "Viridis"
MAX_POINTS = 150_000  # above this a seeded subsample is drawn (the browser's limit)
AVERAGE_OPTIONS = {
    "none": "none",
    "samples": "over samples (prompts)",
    "positions": "over positions",
}

LAYER_EVOLUTION_ID = "geometry-layer-evolution"
POINT_DETAILS_ID = "geometry-point-details"


# --------------------------------------------------------------------------- pure helpers


def component_names(summary: Mapping[str, Any]) -> list[str]:
    return list(summary.get("components") or COMPONENTS)


def symbol_for(component: str, index: int) -> str:
    return COMPONENT_SYMBOLS.get(component, FALLBACK_SYMBOLS[index % len(FALLBACK_SYMBOLS)])


def token_text(summary: Mapping[str, Any], prompt: int, position: int) -> str:
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


def axis_titles(summary: Mapping[str, Any], explained: np.ndarray | None, dims: int) -> list[str]:
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


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points (all when few enough)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def hover_texts(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any],
                index: np.ndarray, components: list[str]) -> list[str]:
    """Escaped hover text of the points at ``index``."""
    prompts, positions = arrays["prompt_index"], arrays["position"]
    layers, comps, norms = arrays["layer"], arrays["component"], arrays["norm"]
    texts = []
    for i in index:
        prompt, position = int(prompts[i]), int(positions[i])
        comp = int(comps[i])
        comp_name = components[comp] if 0 <= comp < len(components) else str(comp)
        token = html_lib.escape(token_label(token_text(summary, prompt, position)), quote=False)
        where = "prompt " + ("mean" if prompt < 0 else str(prompt))
        where += " · position " + ("mean" if position < 0 else str(position))
        texts.append(
            f"{where}<br>token {token}<br>layer {int(layers[i])} · "
            f"{html_lib.escape(comp_name, quote=False)}<br>norm {float(norms[i]):.4g}"
        )
    return texts


def point_customdata(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any],
                     index: np.ndarray, components: list[str]) -> list[list[Any]]:
    rows = []
    for i in index:
        comp = int(arrays["component"][i])
        prompt, position = int(arrays["prompt_index"][i]), int(arrays["position"][i])
        rows.append([
            int(i), prompt, position, int(arrays["layer"][i]),
            components[comp] if 0 <= comp < len(components) else str(comp),
            float(arrays["norm"][i]), token_text(summary, prompt, position),
        ])
    return rows


# --------------------------------------------------------------------------- figures


def layer_evolution_figure(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any], *,
                           max_points: int = MAX_POINTS) -> go.Figure:
    """Every captured state in the reduced space, coloured by layer, one trace per component.

    3D (``Scatter3d``) when the coordinates have three columns, else 2D
    (``Scattergl``). Colours share one colour axis titled "layer".
    """
    coords = np.asarray(arrays["coords"], dtype=np.float32)
    dims = int(coords.shape[1]) if coords.ndim == 2 else 0
    if dims not in (2, 3):
        raise ValueError(f"coords must have 2 or 3 columns, not shape {coords.shape}")
    components = component_names(summary)
    layers = np.asarray(arrays["layer"])
    comp_idx = np.asarray(arrays["component"])
    keep = subsample(len(coords), max_points)
    explained = arrays.get("explained_variance_ratio")
    titles = axis_titles(summary, None if explained is None else np.asarray(explained), dims)
    n_layers = int(summary.get("n_layers") or (int(layers.max()) + 1 if len(layers) else 1))
    marker_size = 3 if dims == 3 else 6

    fig = go.Figure()
    present = [int(c) for c in np.unique(comp_idx[keep])] if len(keep) else []
    for comp in present:
        index = keep[comp_idx[keep] == comp]
        name = components[comp] if 0 <= comp < len(components) else f"component {comp}"
        marker = dict(
            color=layers[index].astype(int).tolist(),
            coloraxis="coloraxis",
            symbol=symbol_for(name, comp),
            size=marker_size,
            opacity=0.85,
            line=dict(width=0),
        )
        common = dict(
            name=name,
            mode="markers",
            marker=marker,
            hovertext=hover_texts(arrays, summary, index, components),
            hoverinfo="text",
            customdata=point_customdata(arrays, summary, index, components),
        )
        if dims == 3:
            fig.add_trace(go.Scatter3d(x=coords[index, 0], y=coords[index, 1],
                                       z=coords[index, 2], **common))
        else:
            fig.add_trace(go.Scattergl(x=coords[index, 0], y=coords[index, 1], **common))

    fig.update_layout(
        coloraxis=dict(colorscale=LAYER_COLORSCALE, cmin=0, cmax=max(1, n_layers - 1),
                       colorbar=dict(title=dict(text="layer"),
                                     dtick=max(1, int(np.ceil((n_layers - 1) / 10))))),
        legend=dict(title=dict(text="component"), orientation="h", yanchor="bottom", y=1.0,
                    x=0.0, itemsizing="constant"),
        margin=dict(l=0, r=0, t=40, b=0),
        height=680,
        template="plotly_white",
        uirevision="geometry",
    )
    if dims == 3:
        fig.update_layout(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1],
                                     zaxis_title=titles[2], aspectmode="cube"))
    else:
        fig.update_layout(xaxis_title=titles[0], yaxis_title=titles[1])
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    if len(keep) < len(coords):
        fig.add_annotation(text=f"showing {len(keep):,} of {len(coords):,} points (seeded sample)",
                           xref="paper", yref="paper", x=1, y=1.0, xanchor="right",
                           yanchor="bottom", showarrow=False)
    return fig


@dataclass(frozen=True)
class FigureView:
    """One tab of the geometry run view."""

    id: str
    label: str
    description: str
    figure: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], go.Figure]


FIGURES: list[FigureView] = [
    FigureView(
        LAYER_EVOLUTION_ID,
        "Layer evolution",
        "Every captured state (four points per block, every token) reduced to "
        "a shared space; colour is depth, symbol is the point inside the block.",
        layer_evolution_figure,
    ),
]


def _tokens_text(n_tokens: Any, truncated: Any) -> str:
    """``n_tokens`` is a count per prompt (or one total); note prompts cut at max_tokens."""
    if isinstance(n_tokens, list):
        text = f"{sum(int(n) for n in n_tokens):,} in {len(n_tokens)} prompts"
    elif n_tokens is None:
        text = "—"
    else:
        text = f"{int(n_tokens):,}"
    if isinstance(truncated, list) and any(truncated):
        text += f" ({sum(bool(t) for t in truncated)} cut at max tokens)"
    return text


def summary_rows(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    """Key facts of a geometry result for the table above the figures."""
    err = summary.get("hook_check_max_abs_error")
    coords = arrays.get("coords")
    return [
        ("points", f"{int(summary.get('n_points') or (len(coords) if coords is not None else 0)):,}"),
        ("layers", str(summary.get("n_layers", "—"))),
        ("hidden size", str(summary.get("d_model", "—"))),
        ("tokens", _tokens_text(summary.get("n_tokens"), summary.get("truncated"))),
        ("reduction", f"{str(summary.get('reduction', 'pca')).upper()} to "
                      f"{summary.get('dims', coords.shape[1] if coords is not None else '—')}D"),
        ("unit-normalised", "yes" if summary.get("unit_normalise") else "no"),
        ("averaged", AVERAGE_OPTIONS.get(str(summary.get("average", "none")), str(summary.get("average")))),
        ("hook check error", "—" if err is None else f"{float(err):.2e}"),
    ]


# --------------------------------------------------------------------------- layout


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The geometry view of a finished run (called by the run page)."""
    summary = dict(run.summary or {})
    missing = [n for n in ("coords", "layer", "component", "position", "prompt_index", "norm")
               if n not in arrays]
    if missing:
        return dbc.Alert(f"This run has no {', '.join(missing)} arrays to draw.", color="warning")
    tabs = []
    for view in FIGURES:
        figure = view.figure(arrays, summary)
        tabs.append(dbc.Tab(
            [html.P(view.description, className="text-muted small mt-2 mb-1"),
             dcc.Graph(id=view.id, figure=figure, config={"displaylogo": False},
                       className="atlas-graph")],
            label=view.label, tab_id=f"{view.id}-tab",
        ))
    return html.Div(
        [
            dbc.Row([
                dbc.Col(dbc.Tabs(tabs, id="geometry-tabs", active_tab=f"{FIGURES[0].id}-tab"),
                        lg=9),
                dbc.Col([
                    dbc.Card([dbc.CardHeader("Result"),
                              dbc.CardBody(kv_table(summary_rows(summary, arrays)))],
                             class_name="mb-3"),
                    dbc.Card([dbc.CardHeader("Selected point"),
                              dbc.CardBody(html.P("Click a point to see its token, layer, "
                                                  "component and norm.",
                                                  className="text-muted mb-0"),
                                           id=POINT_DETAILS_ID)]),
                ], lg=3),
            ]),
        ],
        id="geometry-view",
    )


def point_details(point: Mapping[str, Any] | None) -> Any:
    """The details panel for one clicked point (``clickData["points"][0]``)."""
    data = (point or {}).get("customdata")
    if not isinstance(data, list) or len(data) < 7:
        return html.P("Click a point to see its token, layer, component and norm.",
                      className="text-muted mb-0")
    index, prompt, position, layer, comp, norm, token = data[:7]
    return kv_table([
        ("token", html.Code(token_label(str(token)))),
        ("prompt", "mean" if int(prompt) < 0 else str(prompt)),
        ("position", "mean" if int(position) < 0 else str(position)),
        ("layer", str(layer)),
        ("component", f"{comp} ({COMPONENT_LABELS.get(str(comp), '')})"
                      if str(comp) in COMPONENT_LABELS else str(comp)),
        ("norm", f"{float(norm):.6g}"),
        ("point", str(index)),
    ])


@callback(Output(POINT_DETAILS_ID, "children"), Input(LAYER_EVOLUTION_ID, "clickData"),
          prevent_initial_call=True)
def _show_point(click: dict | None):
    points = (click or {}).get("points") or [None]
    return point_details(points[0])


# --------------------------------------------------------------------------- form


def form_fields(settings: Any) -> list[Any]:
    """The geometry part of the New-run form (IDs from ``field_id``)."""
    limits = settings.limits
    return [
        dbc.Label("Prompts"),
        dbc.Textarea(
            id=field_id(KIND, "prompts"),
            rows=7,
            placeholder="The capital of France is\nThe quick brown fox\nOnce upon a time",
            class_name="font-monospace",
        ),
        dbc.FormText(f"One prompt per line; empty lines are ignored. At most "
                     f"{limits.max_prompts} prompts of {limits.max_prompt_chars} characters."),
        dbc.Row([
            dbc.Col([
                dbc.Label("Max tokens per prompt", class_name="mt-3"),
                dbc.Input(id=field_id(KIND, "max_tokens"), type="number", min=1,
                          max=limits.max_tokens_per_prompt, step=1,
                          value=min(32, limits.max_tokens_per_prompt)),
                dbc.FormText(f"1 to {limits.max_tokens_per_prompt}; a prompt with more tokens is refused."),
            ], md=4),
            dbc.Col([
                dbc.Label("Averaging", class_name="mt-3"),
                dbc.RadioItems(id=field_id(KIND, "average"), value="none",
                               options=[{"label": label, "value": value}
                                        for value, label in AVERAGE_OPTIONS.items()]),
            ], md=4),
            dbc.Col([
                dbc.Label("Projection", class_name="mt-3"),
                dbc.RadioItems(id=field_id(KIND, "dims"), value=3, inline=True,
                               options=[{"label": "3D", "value": 3}, {"label": "2D", "value": 2}]),
                dbc.Switch(id=field_id(KIND, "unit_normalise"), value=False,
                           label="Unit-normalise states", class_name="mt-2"),
            ], md=4),
        ]),
    ]


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; surrounding whitespace stripped, empty lines ignored."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw geometry params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    prompts = parse_prompts(values.get("prompts"))
    if not prompts:
        errors.append("prompts: enter at least one prompt (one per line)")
    elif len(prompts) > limits.max_prompts:
        errors.append(f"prompts: at most {limits.max_prompts} prompts (got {len(prompts)})")
    for i, prompt in enumerate(prompts):
        if len(prompt) > limits.max_prompt_chars:
            errors.append(f"prompts: prompt {i + 1} has {len(prompt)} characters "
                          f"(at most {limits.max_prompt_chars})")
    raw_tokens = values.get("max_tokens")
    max_tokens: int | None = None
    try:
        as_float = float(raw_tokens)
        if as_float.is_integer():
            max_tokens = int(as_float)
    except (TypeError, ValueError):
        pass
    if max_tokens is None or not 1 <= max_tokens <= limits.max_tokens_per_prompt:
        errors.append(f"max_tokens: enter a whole number from 1 to {limits.max_tokens_per_prompt}")
    average = values.get("average") or "none"
    if average not in AVERAGE_OPTIONS:
        errors.append(f"average: must be one of {', '.join(AVERAGE_OPTIONS)}")
    try:
        dims = int(values.get("dims") or 3)
    except (TypeError, ValueError):
        dims = 0
    if dims not in (2, 3):
        errors.append("dims: must be 2 or 3")
    if errors:
        raise FormError(errors)
    return {
        "model": model,
        "prompts": prompts,
        "max_tokens": max_tokens,
        "unit_normalise": bool(values.get("unit_normalise")),
        "average": average,
        "dims": dims,
    }
