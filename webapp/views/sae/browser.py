"""The latent browser's components: one latent's statistics, histogram, logit effects and examples.

Token strings are text children (Dash escapes them); each window token where
the latent fired is a ``span`` whose background alpha is its activation over
the latent's maximum, with the value in its ``title``; the example's own token
is outlined; runs of tokens where it did not fire are one plain text child.
Component IDs start with ``sae-``.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

from webapp.components import kv_table
from webapp.views.sae.data import EDGE_KINDS, Example, Latent, SaeData
from webapp.views.sae.figures import histogram_figure

VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """A token string with line breaks and tabs drawn as symbols (still plain text)."""
    for raw, shown in VISIBLE.items():
        text = text.replace(raw, shown)
    return text


def example_row(data: SaeData, example: Example, scale: float) -> html.Div:
    """One example: its window of tokens, each firing token shaded by the latent's activation there.

    Consecutive tokens where the latent did not fire share one plain span (fewer components).
    """
    spans: list[Any] = []
    quiet: list[str] = []
    for token, token_id, act in zip(example.tokens, example.token_ids, example.acts, strict=True):
        text = visible(data.token_text(token_id))
        if act <= 0 and token != example.token:
            quiet.append(text)
            continue
        if quiet:
            spans.append("".join(quiet))
            quiet = []
        alpha = 0.0 if scale <= 0 else min(1.0, max(0.0, act / scale))
        style = {"backgroundColor": f"rgba(255,140,0,{alpha:.3f})"}
        if token == example.token:
            style.update(outline="2px solid #d62728", outlineOffset="-1px")
        spans.append(html.Span(text, title=f"activation {act:.3g}", className="sae-token", style=style))
    if quiet:
        spans.append("".join(quiet))
    return html.Div([html.Span(f"{example.value:.3g}", className="sae-example-value text-muted small me-2"),
                     html.Span(spans, className="sae-example-text font-monospace")],
                    className="sae-example border-bottom py-1")


def examples_part(data: SaeData, examples: list[Example], scale: float, title: str, part_id: str) -> html.Div:
    """A titled list of examples (``example_row`` each)."""
    if not examples:
        return html.Div([html.H6(title), html.P("none", className="text-muted small")], id=part_id)
    return html.Div([html.H6(title), *[example_row(data, x, scale) for x in examples]], id=part_id)


def logit_part(data: SaeData, latent: Latent) -> dbc.Row:
    def column(title: str, items: list[tuple[int, float]], colour: str) -> dbc.Col:
        rows = [html.Tr([html.Td(html.Code(visible(data.token_text(i)))), html.Td(f"{v:+.3g}", className=colour)])
                for i, v in items]
        return dbc.Col([html.H6(title), dbc.Table(html.Tbody(rows), size="sm", class_name="mb-0 small")], md=6)

    return dbc.Row([column("Promotes (top logits)", latent.logit_top, "text-success"),
                    column("Suppresses (bottom logits)", latent.logit_bottom, "text-danger")],
                   id="sae-logits")


def neighbours_part(data: SaeData, latent: Latent) -> html.Div:
    rows = []
    for kind, label in EDGE_KINDS.items():
        items = latent.edges.get(kind, [])[:8]
        links = [html.Span([html.Button(f"#{j}", id={"type": "sae-goto-latent", "latent": j}, n_clicks=0,
                                        className="btn btn-link btn-sm p-0 sae-neighbour-link"),
                            html.Span(f" {v:.2f}", className="text-muted")], className="me-2")
                 for j, v in items]
        rows.append((label, html.Span(links or "none")))
    return kv_table(rows, id="sae-neighbours")


def latent_panel(data: SaeData, latent: Latent) -> html.Div:
    """The whole browser panel of one latent."""
    scale = latent.max_act if latent.max_act > 0 else 1.0
    cluster = ("none" if latent.cluster_components < 0 else str(latent.cluster_components))
    stats = kv_table([
        ("fires on", f"{latent.fire_count:,} of {data.n_tokens:,} tokens"),
        ("density", f"{latent.density:.3g}"),
        ("max activation", f"{latent.max_act:.4g}"),
        ("mean activation (when firing)", f"{latent.mean_act:.4g}"),
        ("spectral cluster", str(latent.cluster_spectral)),
        ("top-2 component", cluster),
    ], id="sae-latent-stats")
    return html.Div([
        html.H4([html.Span(f"Latent {latent.id}", id="sae-latent-title"),
                 html.Small(f" of {data.d_sae:,}", className="text-muted")], className="mb-1"),
        html.Div(visible(latent.label), id="sae-latent-label", className="text-muted mb-2 font-monospace"),
        dbc.Row([
            dbc.Col([stats, html.H6("Most similar", className="mt-2"), neighbours_part(data, latent)], lg=5),
            dbc.Col(dcc.Graph(id="sae-histogram", config={"displayModeBar": False},
                              figure=histogram_figure(data.small["hist_edges"], latent.hist_counts)), lg=7),
        ]),
        logit_part(data, latent),
        html.Hr(),
        examples_part(data, latent.top, scale, "Top activations", "sae-top-examples"),
        html.Hr(),
        examples_part(data, latent.intervals, scale, "Interval samples (lower to higher activations)",
                      "sae-interval-examples"),
    ], id="sae-latent-panel", **{"data-latent": str(latent.id)})


def short_examples(data: SaeData, latent: Latent, count: int = 8) -> html.Div:
    """The compact examples list beside the UMAP map."""
    scale = latent.max_act if latent.max_act > 0 else 1.0
    return html.Div([
        html.H6([f"Latent {latent.id} ", html.Small(visible(latent.label), className="text-muted")]),
        html.Div(f"density {latent.density:.3g} · max {latent.max_act:.3g}", className="small text-muted mb-1"),
        *[example_row(data, x, scale) for x in latent.top[:count]],
    ], id="sae-umap-examples-body", **{"data-latent": str(latent.id)})


def error_box(message: str, box_id: str = "sae-latent-error") -> Any:
    return dbc.Alert(message, color="warning", id=box_id, class_name="py-1 px-2 mb-2 small")
