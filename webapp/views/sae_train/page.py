"""The ``sae_train`` run page: held-out metrics, the loss curve, the SAE's use and download.

``render(run, arrays)`` reads only the loss arrays (``ARRAYS``; the SAE's
weights stay on disk) and the summary written by
``latent_atlas.analyses.sae.train``. The "use this SAE" link opens the New-run
form of kind ``sae`` prefilled with this run's ID as the SAE source and its
model (``/new?kind=sae&model=...&sae_run=...``); the download is the
saved sae-lens directory (``cfg.json`` + ``sae_weights.safetensors``) as a
ZIP (``webapp.views.sae_train.api``). Corpus names and notes are shown as
plain text children (Dash escapes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import dash_bootstrap_components as dbc
import numpy as np
import plotly.graph_objects as go
from dash import dcc, html

from webapp.components import kv_table

ARRAYS = ["loss_step", "loss_value", "loss_mse"]


def loss_figure(arrays: Mapping[str, np.ndarray]) -> go.Figure:
    """The training loss per step (sae-lens's total and its MSE part), log scale."""
    steps = np.asarray(arrays.get("loss_step", np.zeros(0)))
    figure = go.Figure()
    for name, label in (("loss_value", "total loss"), ("loss_mse", "MSE")):
        if name in arrays and len(arrays[name]):
            figure.add_trace(go.Scattergl(x=steps, y=np.asarray(arrays[name]), mode="lines", name=label))
    figure.update_layout(height=320, margin={"l": 50, "r": 10, "t": 10, "b": 40}, xaxis_title="step",
                         yaxis_title="loss (normalised activations)", yaxis_type="log",
                         legend={"orientation": "h", "y": 1.1})
    return figure


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}%" if isinstance(value, int | float) else "–"


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    metrics = summary.get("metrics") or {}
    timings = summary.get("timings") or {}
    rows = [
        ("variance explained (held-out)", _pct(metrics.get("variance_explained"))),
        ("L0 (latents per held-out token)", f"{metrics.get('l0', float('nan')):.1f}"),
        ("dead latents (never fired on held-out tokens)", _pct(metrics.get("dead_fraction"))),
        ("hook", str(summary.get("hook_name", "–"))),
        ("SAE", f"{summary.get('architecture', '?')} (saved as {summary.get('saved_architecture', '?')}), "
                f"{summary.get('d_sae', '?')} latents of width {summary.get('d_in', '?')}, k = {summary.get('k', '?')}"),
        ("training", f"{summary.get('training_tokens', 0):,} tokens in {summary.get('steps', 0):,} steps "
                     f"({summary.get('unique_training_tokens', 0):,} distinct)"),
        ("held-out tokens", f"{metrics.get('eval_tokens', 0):,}"),
        ("corpus", str(summary.get("corpus", "–"))),
        ("time", ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items())),
    ]
    dropped = (summary.get("training_outliers_dropped") or 0) + (metrics.get("eval_outliers_dropped") or 0)
    if dropped:
        rows.append(("norm outliers left out", f"{dropped:,} tokens (attention sinks, > 10x the median norm)"))
    return rows


def harvest_href(run: Any) -> str:
    """The New-run form for an ``sae`` harvest of this run's SAE on its model, prefilled."""
    return "/new?" + urlencode({"kind": "sae", "model": run.model, "sae_run": run.id})


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    summary = run.summary or {}
    note = summary.get("corpus_note")
    return html.Div([
        dbc.Row([
            dbc.Col([
                html.H2("Held-out quality", className="h5"),
                kv_table(summary_rows(summary)),
                dbc.Alert(str(note), color="warning", class_name="small") if note else None,
                html.Div([
                    dbc.Button("Use this SAE in a harvest", href=harvest_href(run),
                               id="sae-train-use", color="primary", size="sm", class_name="me-2"),
                    dbc.Button("Download the SAE (sae-lens directory, ZIP)", href=f"/api/runs/{run.id}/sae.zip",
                               id="sae-train-download", color="secondary", outline=True, size="sm",
                               external_link=True),
                ], className="mt-2"),
                html.P(["In a harvest choose ", html.Em("trained by a portal run"), " and this run's ID ",
                        html.Code(run.id), "; in Python: ",
                        html.Code("SAE.load_from_disk(<unzipped folder>)")],
                       className="small text-muted mt-2"),
            ], md=5),
            dbc.Col([
                html.H2("Training loss", className="h5"),
                dcc.Graph(id="sae-train-loss", figure=loss_figure(arrays), config={"displaylogo": False}),
            ], md=7),
        ]),
    ], id="sae-train-page")
