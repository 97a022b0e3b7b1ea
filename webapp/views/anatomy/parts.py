"""Pure builders of the anatomy page's components (data in, Dash components out).

Token strings are model output and prompts are user text: here they are only
ever plain text children or attribute values, which Dash escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import numpy as np
from dash import html

from webapp.views.anatomy.data import AnatomyData

TREE_OPEN_DEPTH = 2
SALIENCY_METHODS = {"grad_input": "gradient × input", "grad_norm": "gradient norm", "ig": "integrated gradients"}


def visible(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def _shape_key(node: Mapping[str, Any]) -> tuple:
    """What makes two sibling modules identical in the tree: counts, shapes and children, not the name."""
    params = tuple((name, tuple(shape)) for name, shape in (node.get("params") or {}).items())
    children = tuple(_shape_key(child) for child in node.get("children") or [])
    return (int(node.get("count", 0)), params, children)


def group_repeats(children: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """Runs of consecutive identical siblings (e.g. a model's 30 blocks) as (first, run length)."""
    groups: list[tuple[Mapping[str, Any], int]] = []
    last_key: tuple | None = None
    for child in children:
        key = _shape_key(child)
        if groups and key == last_key:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((child, 1))
            last_key = key
    return groups


def _label(name: str, count: int, share: float, repeat: int = 1) -> list[Any]:
    label: list[Any] = [html.Code(name), " ", html.Span(f"{count:,}", className="fw-semibold"),
                        html.Span(f"  {100 * share:.2f}%", className="text-muted small")]
    if repeat > 1:
        label[2:2] = [html.Span(f" × {repeat} = {count * repeat:,}", className="fw-semibold")]
        label[-1] = html.Span(f"  {100 * share * repeat:.2f}%", className="text-muted small")
    return label


def parameter_tree(node: Mapping[str, Any], depth: int = 0, repeat: int = 1, last_name: str | None = None) -> Any:
    """A collapsible tree (``<details>``) of modules with parameter counts and shares.

    Consecutive identical siblings (same counts, shapes and structure: a
    model's blocks) are drawn once as ``layers.0 … layers.29 × 30``, so a deep
    model's tree stays a few hundred elements (every element slows the page).
    """
    name = str(node.get("name", "?"))
    if last_name is not None:
        name = f"{name} … {last_name}"
    label = _label(name, int(node.get("count", 0)), float(node.get("share", 0)), repeat)
    leaves = [html.Li([html.Code(leaf), f"  {' × '.join(str(n) for n in shape)}"], className="small text-muted")
              for leaf, shape in (node.get("params") or {}).items()]
    groups = group_repeats(list(node.get("children") or []))
    children_nodes = list(node.get("children") or [])
    children = []
    index = 0
    for first, count in groups:
        last = str(children_nodes[index + count - 1].get("name", "?")) if count > 1 else None
        children.append(html.Li(parameter_tree(first, depth + 1, count, last)))
        index += count
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
    """The last position's lens per point, as one grid component (cells are text: AG Grid escapes them)."""
    a, s = data.arrays, data.summary
    labels = s.get("lens_labels") or []
    final = visible(data.vocab(int(s.get("lens_final_id", -1))))
    rows = [{"point": str(label), "top": visible(data.vocab(int(a["lens_ids"][i, -1]))),
             "p_final": round(float(a["lens_final_prob"][i]), 4), "rank": int(a["lens_final_rank"][i]),
             "entropy": round(float(a["lens_entropy"][i]), 3), "kl": round(float(a["lens_kl"][i]), 3)}
            for i, label in enumerate(labels)]
    columns = [{"field": "point", "flex": 2}, {"field": "top", "headerName": "top token", "flex": 2},
               {"field": "p_final", "headerName": f"p({final})", "flex": 1},
               {"field": "rank", "flex": 1}, {"field": "entropy", "flex": 1},
               {"field": "kl", "headerName": "KL to final", "flex": 1}]
    return dag.AgGrid(id="anatomy-lens-last-table", rowData=rows, columnDefs=columns,
                      defaultColDef={"sortable": True, "resizable": True}, className="ag-theme-quartz atlas-grid",
                      style={"height": "26rem"}, dashGridOptions={"rowHeight": 28, "headerHeight": 30})
