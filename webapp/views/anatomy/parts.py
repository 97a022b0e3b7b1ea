"""Pure builders of the anatomy page's components (data in, Dash components out).

Token strings are model output and prompts are user text: here they are only
ever plain text children or attribute values, which Dash escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import html

from webapp.views.anatomy.data import AnatomyData

TREE_OPEN_DEPTH = 2
SALIENCY_METHODS = {"grad_input": "gradient × input", "grad_norm": "gradient norm", "ig": "integrated gradients"}


def visible(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def parameter_tree(node: Mapping[str, Any], depth: int = 0) -> Any:
    """A collapsible tree (``<details>``) of modules with parameter counts and shares."""
    label = [html.Code(str(node.get("name", "?"))), " ",
             html.Span(f"{int(node.get('count', 0)):,}", className="fw-semibold"),
             html.Span(f"  {100 * float(node.get('share', 0)):.2f}%", className="text-muted small")]
    leaves = [html.Li([html.Code(name), f"  {' × '.join(str(n) for n in shape)}"], className="small text-muted")
              for name, shape in (node.get("params") or {}).items()]
    children = [html.Li(parameter_tree(child, depth + 1)) for child in node.get("children") or []]
    if not leaves and not children:
        return html.Span(label)
    return html.Details([html.Summary(label), html.Ul(leaves + children, className="mb-0 ps-3 list-unstyled")],
                        open=depth < TREE_OPEN_DEPTH, className="anatomy-tree")


def summary_rows(data: AnatomyData) -> list[tuple[str, str]]:
    s = data.summary
    rows = [(str(k), str(v)) for k, v in (s.get("config") or {}).items()]
    rows.insert(0, ("parameters", f"{int((s.get('parameters') or {}).get('count', 0)):,}"))
    rows.append(("prompt tokens", str(s.get("prompt_tokens", len(data.tokens)))))
    seconds = s.get("seconds") or {}
    if seconds:
        rows.append(("worker time", f"{sum(float(v) for v in seconds.values()):.2f} s"))
    return rows


def neuron_table(data: AnatomyData, layer: int, position: int) -> Any:
    """The top MLP neurons of one (layer, token)."""
    ids = data.arrays["neuron_ids"][layer, position]
    values = data.arrays["neuron_values"][layer, position]
    token = data.tokens[position] if position < len(data.tokens) else "?"
    return html.Div([
        html.P([f"Layer {layer}, token {position} ", html.Code(visible(token)), ": top MLP neurons by |activation|"],
               className="mb-1", id="anatomy-neurons-title"),
        dbc.Table([html.Thead(html.Tr([html.Th("neuron"), html.Th("activation")])),
                   html.Tbody([html.Tr([html.Td(str(int(i))), html.Td(f"{float(v):+.4f}")])
                               for i, v in zip(ids, values, strict=True)])],
                  size="sm", striped=True, className="mb-0"),
    ])


def saliency_scores(data: AnatomyData, method: str) -> np.ndarray | None:
    name = {"grad_input": "saliency_grad_input", "grad_norm": "saliency_grad_norm", "ig": "saliency_ig"}[method]
    return data.arrays.get(name)


def saliency_text(tokens: list[str], scores: np.ndarray) -> Any:
    """The prompt with each token's background shaded by its score (red +, blue −); hover shows the value."""
    peak = float(np.abs(scores).max()) or 1.0
    spans = []
    for position, (token, score) in enumerate(zip(tokens, scores, strict=True)):
        alpha = min(abs(float(score)) / peak, 1.0)
        colour = f"rgba(214, 39, 40, {alpha:.3f})" if score >= 0 else f"rgba(31, 119, 180, {alpha:.3f})"
        spans.append(html.Span(token, title=f"{position}: {float(score):.6g}", className="anatomy-sal-token",
                               **{"data-score": f"{float(score):.8g}"},
                               style={"backgroundColor": colour, "whiteSpace": "pre-wrap"}))
    return html.Div(spans, className="font-monospace p-2 border rounded", id="anatomy-sal-text-body")


def saliency_info(summary: Mapping[str, Any], vocab: Any) -> list[tuple[str, str]]:
    sal = summary.get("saliency") or {}
    rows = [("target", repr(vocab(sal.get("target", -1)))),
            ("predicted next token", repr(vocab(sal.get("predicted", -1)))),
            ("score", f"{float(sal.get('score', float('nan'))):.5g}")]
    if sal.get("foil") is not None:
        rows.insert(1, ("foil", repr(vocab(sal["foil"]))))
    if "ig_steps" in sal:
        difference = float(sal["ig_score"]) - float(sal["ig_baseline_score"])
        first = " (first token held at its own embedding)" if sal.get("ig_keep_first") else ""
        rows += [("IG steps / baseline", f"{sal['ig_steps']} / {sal.get('ig_baseline', 'zero')}{first}"),
                 ("S(x) − S(baseline)", f"{difference:.5g}"),
                 ("sum of IG attributions", f"{float(sal['ig_sum']):.5g}"),
                 ("IG completeness error", f"{float(sal['ig_completeness_error']):.3g}"
                  + (f" ({100 * float(sal['ig_completeness_error']) / abs(difference):.2g}% of the difference)"
                     if difference else ""))]
    return rows


def neighbour_table(data: AnatomyData, row: int) -> Any:
    ids = data.arrays["neighbour_ids"][row]
    cos = data.arrays["neighbour_cos"][row]
    return dbc.Table([html.Thead(html.Tr([html.Th("neighbour"), html.Th("cosine")])),
                      html.Tbody([html.Tr([html.Td(html.Code(visible(data.vocab(int(i))))), html.Td(f"{float(c):.4f}")])
                                  for i, c in zip(ids, cos, strict=True)])],
                     size="sm", striped=True, className="mb-0", id="anatomy-neighbours-table")


def lens_last_table(data: AnatomyData) -> Any:
    a, s = data.arrays, data.summary
    labels = s.get("lens_labels") or []
    final = data.vocab(int(s.get("lens_final_id", -1)))
    head = html.Thead(html.Tr([html.Th("point"), html.Th("top token"), html.Th(f"p({visible(final)})"),
                               html.Th("rank"), html.Th("entropy"), html.Th("KL to final")]))
    body = [html.Tr([html.Td(str(label)), html.Td(html.Code(visible(data.vocab(int(a["lens_ids"][i, -1]))))),
                     html.Td(f"{float(a['lens_final_prob'][i]):.4f}"), html.Td(str(int(a["lens_final_rank"][i]))),
                     html.Td(f"{float(a['lens_entropy'][i]):.3f}"), html.Td(f"{float(a['lens_kl'][i]):.3f}")])
            for i, label in enumerate(labels)]
    return dbc.Table([head, html.Tbody(body)], size="sm", striped=True, className="mb-0 small",
                     id="anatomy-lens-last-table")
