"""The page of a finished geometry run: the layout of six linked views, details panel, re-projection.

Invariants:

* the figures come from ``webapp.views.geometry.figures`` (pure); this module
  lays them out, the callbacks are in ``webapp.views.geometry.callbacks``; component IDs start with ``geometry-``;
* the web process never runs a model: changing the colouring or the layers
  shown redraws from the stored arrays (cached per run, ``ARRAYS`` only: the
  stored states are never loaded here), and a re-projection is a child run
  (kind ``geometry_reproject``, ``parent_id`` = the run whose states it uses;
  the interactive lane when its size is within the lane's bound, else the
  ``cpu`` queue: ``latent_atlas.analyses.lanes``);
* a selection (click in any scatter; box or lasso in the 2D ones) is a list of
  point rows in ``geometry-selection``; each figure's highlight trace is then
  patched (``dash.Patch``), never the whole figure;
* at most ``MAX_SELECTED`` points are kept selected; the details panel lists
  the first one in full (prompt, token, position, layer, component, norm, the
  logit lens' top 5) and a few more in short. User text is always a text child;
* a point whose lens the run did not compute (a CPU run's cap, or a sample) is
  decoded on demand: "Decode" submits a ``geometry_lens`` child run (the
  interactive lane up to its bound, else the gpu queue; the model, only the
  selected rows of the stored states); the panel
  polls it and then shows the result, and every succeeded lens child of the
  run is merged into the panel from then on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from latent_atlas.settings import get_settings
from webapp.components import kv_table
from webapp.views.geometry import figures as gf
from webapp.views.geometry.details import (  # noqa: F401  the details panel, re-exported for callers and tests
    DETAIL_ROWS,
    LENS_BUTTON_ID,
    LENS_STATUS_ID,
    MAX_DECODE_ROWS,
    MAX_SELECTED,
    Decoded,
    can_decode,
    decoded_lens,
    lens_rows,
    point_details,
    prompt_text,
    rows_to_decode,
    selection_from_event,
)

log = logging.getLogger(__name__)

# Arrays the page draws (the run page loads only these; ``states`` stay on disk).
ARRAYS = ["coords", "layer", "component", "position", "prompt_index", "token_id", "norm",
          "explained_variance_ratio", "layer_norm_mean", "attn_mlp_coords", "attn_mlp_explained",
          "lens_ids", "lens_probs", "positional_coords", "positional_position", "positional_count",
          "positional_explained"]
REQUIRED = ("coords", "layer", "component", "position", "prompt_index", "norm")
AVERAGE_OPTIONS = {"none": "none", "samples": "over samples (prompts)", "positions": "over positions"}

SELECTION_ID = "geometry-selection"
RUN_STORE_ID = "geometry-run"
HIGHLIGHT_STORE_ID = "geometry-highlight-index"
DETAILS_ID = "geometry-point-details"
POINT_DETAILS_ID = DETAILS_ID
COLOR_ID = "geometry-color-by"
LAYERS_ID = "geometry-layers-shown"
HIDE0_ID = "geometry-hide-position0"
LENS_PENDING_ID = "geometry-lens-pending"
LENS_POLL_ID = "geometry-lens-poll"


@dataclass(frozen=True)
class FigureView:
    """One tab of the geometry run view (and one file of the static export)."""

    id: str
    slug: str
    kind: str  # ``layout.meta["view"]`` of its figure (what ``geometry_figures.highlight`` takes)
    label: str
    description: str
    figure: Any  # (arrays, summary) -> go.Figure
    selectable: bool  # clicks / box / lasso select points here


FIGURES: list[FigureView] = [
    FigureView("geometry-layer-evolution", "layer-evolution", "layer_evolution", "Layer evolution",
               "Every captured state (four points per block, every token) reduced to a shared space; "
               "colour is depth, marker shape is the point inside the block.",
               gf.layer_evolution_figure, True),
    FigureView("geometry-attention-mlp", "attention-vs-mlp", "attention_mlp", "Attention vs MLP",
               "Attention outputs (blue) and MLP outputs (red) in a 2D PCA fitted on these two alone; "
               "right: how separable they are per layer (held-out accuracy of a linear classifier in "
               "the full hidden space; silhouette in this 2D projection).",
               gf.attention_mlp_figure, True),
    FigureView("geometry-position0", "position-0-norm", "position0", "Position-0 norm",
               "Mean norm of the states at position 0 against the other positions, per layer and "
               "component, and their ratio (log scales).",
               gf.position0_figure, False),
    FigureView("geometry-positional", "positional-structure", "positional", "Positional structure",
               "How the model represents position (see the note above the plot for which view this is).",
               gf.positional_figure, False),
    FigureView("geometry-layer-norms", "layer-norms", "layer_norms", "Layer norms",
               "Mean L2 norm per layer and component (log scale); a selected point is marked at its "
               "own norm.",
               gf.layer_norms_figure, False),
    FigureView("geometry-animation", "animation", "animation", "Animation",
               "The states of one layer at a time; play, pause, step or drag the slider. Axes are "
               "fixed across frames.",
               gf.animation_figure, True),
]
FIGURE_IDS = [view.id for view in FIGURES]
SELECTABLE_IDS = [view.id for view in FIGURES if view.selectable]
LAYER_EVOLUTION_ID, ATTN_MLP_ID, ANIMATION_ID = FIGURES[0].id, FIGURES[1].id, FIGURES[5].id


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _run_data(run_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """(summary, arrays, params) of a finished run, cached (a finished run never changes)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.status != "succeeded":
        raise LookupError(f"run {run_id} is {run.status}")
    return dict(run.summary or {}), runs_service.load_arrays(run, ARRAYS), dict(run.params or {})


def export_figures(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any]) -> list[tuple[str, str, str, go.Figure]]:
    """(slug, title, description, figure) of every view, for the static export."""
    out = []
    for view in FIGURES:
        description = view.description
        if view.slug == "positional-structure":
            description = str((summary.get("positional") or {}).get("reason") or description)
        out.append((view.slug, view.label, description, view.figure(arrays, summary)))
    return out


# --------------------------------------------------------------------------- layout


def _tokens_text(n_tokens: Any, truncated: Any) -> str:
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
    """Key facts of a geometry result for the table beside the figures."""
    err = summary.get("hook_check_max_abs_error")
    coords = arrays.get("coords")
    n_points = int(summary.get("n_points") or (len(coords) if coords is not None else 0))
    layers = summary.get("layers")
    rows = [
        ("points", f"{n_points:,}"),
        ("layers", str(summary.get("n_layers", "—")) + (
            f" (showing {layers[0]}–{layers[1] - 1})" if isinstance(layers, list) and len(layers) == 2
            and (layers[0] > 0 or layers[1] < int(summary.get("n_layers") or layers[1])) else "")),
        ("hidden size", str(summary.get("d_model", "—"))),
        ("tokens", _tokens_text(summary.get("n_tokens"), summary.get("truncated"))),
        ("reduction", f"{str(summary.get('reduction', 'pca')).upper()} to "
                      f"{summary.get('dims', coords.shape[1] if coords is not None else '—')}D"
                      + (", fit without position 0" if summary.get("exclude_position0") else "")),
        ("unit-normalised", "yes" if summary.get("unit_normalise") else "no"),
        ("averaged", AVERAGE_OPTIONS.get(str(summary.get("average", "none")), str(summary.get("average")))),
        ("hook check error", "—" if err is None else f"{float(err):.2e}"),
    ]
    if summary.get("included_components") and len(summary["included_components"]) < 4:
        rows.append(("components", ", ".join(summary["included_components"])))
    sep = summary.get("separation") or {}
    if sep.get("overall_lda_accuracy") is not None:
        rows.append(("attn/MLP separation", f"{sep['overall_lda_accuracy']:.3f} (linear, held out)"))
    ratio = (summary.get("norm_stats") or {}).get("position0_ratio_overall")
    if ratio is not None:
        rows.append(("position-0 norm ratio", f"{ratio:.2f}×"))
    lens = summary.get("lens") or {}
    if lens.get("enabled"):
        rows.append(("logit lens", f"{lens.get('computed', 0):,} of {lens.get('points', 0):,} points"
                     + (" (seeded sample)" if lens.get("sampled") else "")))
    if summary.get("source_run"):
        rows.append(("re-projection of", str(summary["source_run"])))
    return rows


def _separation_table(summary: Mapping[str, Any]) -> Any:
    rows = gf.separation_rows(summary)
    if not rows:
        return html.P("No separation score: attention and MLP outputs were not both captured.",
                      className="text-muted small")

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    body = [html.Tr([html.Td(str(layer)), html.Td(fmt(acc)), html.Td(fmt(sil))]) for layer, acc, sil in rows]
    return html.Div([
        html.P(gf.separation_text(summary), className="small fw-semibold mb-1", id="geometry-separation-overall"),
        dbc.Table([html.Thead(html.Tr([html.Th("layer"), html.Th("linear acc."), html.Th("silhouette")])),
                   html.Tbody(body)], size="sm", class_name="small mb-0", id="geometry-separation-table"),
    ], style={"maxHeight": "320px", "overflowY": "auto"})


DOMINANCE_THRESHOLD = 0.9  # PC1's share of the variance above which the page says one direction dominates


def dominance_note(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str | None:
    """What to say when PC1 explains more than ``DOMINANCE_THRESHOLD`` of the variance; else ``None``.

    The remedy names the options this run did not use (unit-normalising, fitting
    without position 0), which are what keeps real models' projections from
    being one direction (the README's findings).
    """
    explained = arrays.get("explained_variance_ratio")
    if str(summary.get("reduction", "pca")) != "pca" or explained is None or len(explained) == 0:
        return None
    pc1 = float(np.asarray(explained)[0])
    if not np.isfinite(pc1) or pc1 <= DOMINANCE_THRESHOLD:
        return None
    remedies = [label for key, label in (("unit_normalise", "unit-normalise"),
                                         ("exclude_position0", "fit without position 0"))
                if not summary.get(key)]
    text = (f"One direction dominates: PC1 explains {100.0 * pc1:.1f} % of the variance, so the other "
            "axes show little. ")
    ratio = (summary.get("norm_stats") or {}).get("position0_ratio_overall")
    if ratio is not None and float(ratio) > 2.0:
        text += f"The states at position 0 are {float(ratio):.0f}× the norm of the rest. "
    if remedies:
        text += "Re-project (panel on the right; no model run) with " + " and ".join(
            f"“{r}”" for r in remedies) + ", or switch on “hide position 0” below."
    else:
        text += ("This run is already unit-normalised and fitted without position 0: try other "
                 "components or layers, or UMAP (panel on the right).")
    return text


def _view_options(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    layers = np.asarray(arrays["layer"])
    lo, hi = (int(layers.min()), int(layers.max())) if len(layers) else (0, 0)
    return dbc.Row([
        dbc.Col([dbc.Label("Colour by", class_name="small mb-0"),
                 dbc.Select(id=COLOR_ID, value="layer", size="sm",
                            options=[{"label": v, "value": k} for k, v in gf.COLOR_MODES.items()])], md=3),
        dbc.Col([dbc.Label("Layers shown", class_name="small mb-0"),
                 dcc.RangeSlider(id=LAYERS_ID, min=lo, max=hi, step=1, value=[lo, hi],
                                 marks=None, tooltip={"placement": "bottom", "always_visible": False},
                                 allowCross=False)], md=6),
        dbc.Col([dbc.Switch(id=HIDE0_ID, value=False, label="hide position 0", class_name="small mb-0"),
                 html.Small("No model is run for these: the stored projection is redrawn.",
                            className="text-muted")], md=3),
    ], class_name="mb-2 align-items-end")


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The geometry view of a finished run (called by the run page)."""
    summary = dict(run.summary or {})
    missing = [n for n in REQUIRED if n not in arrays]
    if missing:
        return dbc.Alert(f"This run has no {', '.join(missing)} arrays to draw.", color="warning")
    tabs, highlight_index = [], {}
    for view in FIGURES:
        try:
            figure = view.figure(arrays, summary)
        except Exception as exc:  # one broken view must not hide the others
            log.exception("geometry view %s failed", view.id)
            tabs.append(dbc.Tab(dbc.Alert(f"Could not draw this view: {exc}", color="danger"),
                                label=view.label, tab_id=f"{view.id}-tab"))
            continue
        highlight_index[view.id] = figure.layout.meta["highlight_trace"]
        extra: list[Any] = []
        if view.slug == "layer-evolution":
            note = dominance_note(summary, arrays)
            if note is not None:
                extra.append(dbc.Alert(note, color="warning", class_name="small py-2 mb-2",
                                       id="geometry-dominance-note"))
            extra.append(_view_options(summary, arrays))
        if view.slug == "positional-structure":
            info = summary.get("positional") or {}
            extra.append(dbc.Alert(str(info.get("reason") or "No positional structure was stored."),
                                   color="info", class_name="small py-2 mb-2", id="geometry-positional-note"))
        if view.slug == "animation":
            extra.append(html.Div([
                dbc.Button("◀ step", id="geometry-anim-prev", size="sm", outline=True, color="secondary",
                           n_clicks=0, class_name="me-1"),
                dbc.Button("step ▶", id="geometry-anim-next", size="sm", outline=True, color="secondary",
                           n_clicks=0),
            ], className="mb-1"))
        graph = dcc.Graph(id=view.id, figure=figure, className="atlas-graph",
                          config={"displaylogo": False, "scrollZoom": True})
        body: Any = graph
        if view.slug == "attention-vs-mlp":
            body = dbc.Row([dbc.Col(graph, lg=9), dbc.Col(_separation_table(summary), lg=3)])
        tabs.append(dbc.Tab([html.P(view.description, className="text-muted small mt-2 mb-1"), *extra, body],
                            label=view.label, tab_id=f"{view.id}-tab"))
    source_run = summary.get("source_run") or run.id
    return html.Div(
        [
            dcc.Store(id=RUN_STORE_ID, data={"run": run.id, "source": source_run}),
            dcc.Store(id=SELECTION_ID, data=[]),
            dcc.Store(id=HIGHLIGHT_STORE_ID, data=highlight_index),
            dcc.Location(id="geometry-location", refresh="callback-nav"),
            dcc.Download(id="geometry-download"),
            dbc.Row([
                dbc.Col(dbc.Tabs(tabs, id="geometry-tabs", active_tab=f"{FIGURES[0].id}-tab"), lg=9),
                dbc.Col([
                    dbc.Card([dbc.CardHeader("Selected point"),
                              dbc.CardBody(point_details(arrays, summary, []), id=DETAILS_ID),
                              dbc.CardFooter(html.Small(id=LENS_STATUS_ID, className="text-muted"),
                                             class_name="py-1")],
                             class_name="mb-3", id="geometry-details-card"),
                    dcc.Store(id=LENS_PENDING_ID, data=None),
                    dcc.Interval(id=LENS_POLL_ID, interval=1000, disabled=True),
                    dbc.Card([dbc.CardHeader("Result"),
                              dbc.CardBody(kv_table(summary_rows(summary, arrays)))], class_name="mb-3"),
                    dbc.Button("Download HTML", id="geometry-download-html", color="secondary",
                               outline=True, size="sm", n_clicks=0, class_name="mb-3 w-100"),
                    reproject_panel(summary, run),
                ], lg=3),
            ]),
        ],
        id="geometry-view",
    )


def _lane_note(summary: Mapping[str, Any]) -> str:
    """Where a re-projection of this run goes: the interactive lane's bound against the run's states."""
    lane = get_settings().interactive
    if not lane.enabled:
        return "It runs on the cpu queue."
    points = None if summary.get("source_run") else summary.get("n_points")  # the states are this run's own
    size = f"this run has {points:,} states; " if isinstance(points, int) else ""
    return (f"It runs in the interactive lane when small ({size}the lane takes PCA of up to "
            f"{lane.max_reproject_states:,} states, UMAP of up to {lane.max_umap_states:,}), else on the cpu queue.")


def reproject_panel(summary: Mapping[str, Any], run: Any) -> Any:
    """Options for a new projection of the stored states (a child run: the interactive lane when small)."""
    states = summary.get("states") or {}
    if not (states.get("stored") or summary.get("source_run")):
        return dbc.Card(dbc.CardBody(html.Small("This run stored no states, so it cannot be re-projected.",
                                                className="text-muted")))
    n_layers = int(summary.get("n_layers") or 1)
    included = summary.get("included_components") or list(gf.COMPONENTS)
    unaveraged = summary.get("average", "none") == "none"
    return dbc.Card([
        dbc.CardHeader("Re-project (no model run)"),
        dbc.CardBody([
            dbc.RadioItems(id="geometry-rp-reduction", value=summary.get("reduction", "pca"), inline=True,
                           options=[{"label": "PCA", "value": "pca"}, {"label": "UMAP", "value": "umap"}]),
            dbc.RadioItems(id="geometry-rp-dims", value=int(summary.get("dims") or 3), inline=True,
                           options=[{"label": "3D", "value": 3}, {"label": "2D", "value": 2}]),
            dbc.Switch(id="geometry-rp-unit", value=bool(summary.get("unit_normalise")),
                       label="unit-normalise"),
            dbc.Switch(id="geometry-rp-exclude0", value=bool(summary.get("exclude_position0")),
                       label="fit without position 0"),
            dbc.Checklist(id="geometry-rp-components", value=list(included), inline=True,
                          options=[{"label": c, "value": c} for c in included], class_name="small"),
            dbc.InputGroup([dbc.InputGroupText("layers"),
                            dbc.Input(id="geometry-rp-layer-start", type="number", min=0, max=n_layers - 1,
                                      value=(summary.get("layers") or [0])[0]),
                            dbc.InputGroupText("to"),
                            dbc.Input(id="geometry-rp-layer-stop", type="number", min=1, max=n_layers,
                                      value=(summary.get("layers") or [0, n_layers])[-1])],
                           size="sm", class_name="my-2"),
            dbc.Select(id="geometry-rp-average", value="none", size="sm", disabled=not unaveraged,
                       options=[{"label": f"average: {v}", "value": k} for k, v in AVERAGE_OPTIONS.items()]),
            dbc.Button("Re-project", id="geometry-rp-submit", color="primary", size="sm", n_clicks=0,
                       class_name="mt-2"),
            html.Div(id="geometry-rp-message", className="small mt-2"),
            html.Small(f"Runs as a child run of {summary.get('source_run') or run.id}; the states are read, "
                       f"the model is not. {_lane_note(summary)}", id="geometry-rp-lane",
                       className="text-muted d-block mt-1"),
        ]),
    ])
