"""The geometry run page's details panel: the selected points, their logit lens, decoding on demand.

Pure rendering and lookups (the page's callbacks in ``geometry_page`` wire
them). Invariants: user text and token strings are always text children; at
most ``MAX_SELECTED`` points are kept selected and the panel lists the first
in full and ``DETAIL_ROWS`` more in short; a point whose lens the run did not
compute is decodable when the run stored its own states (``can_decode``), and
every succeeded ``geometry_lens`` child of the run counts (``decoded_lens``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import html

from webapp.components import kv_table
from webapp.views.geometry import figures as gf

MAX_SELECTED = 2000
DETAIL_ROWS = 8
LENS_BUTTON_ID = "geometry-lens-decode"
LENS_STATUS_ID = "geometry-lens-status"
MAX_DECODE_ROWS = 64  # selected points decoded by one click (a geometry_lens child run)
Decoded = Mapping[int, list[tuple[str, float]]]


def prompt_text(summary: Mapping[str, Any], prompt: int) -> str:
    tokens = summary.get("tokens") or []
    if 0 <= prompt < len(tokens):
        return "".join(str(t) for t in tokens[prompt])
    return "(mean over prompts)" if prompt < 0 else "(unknown prompt)"


def lens_rows(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any], i: int,
              decoded: Decoded | None = None) -> list[tuple[str, float]] | str:
    """The logit lens' top tokens of point ``i`` with probabilities, or why there are none.

    ``decoded``: rows decoded later by ``geometry_lens`` child runs (used where the run has none).
    """
    lens = summary.get("lens") or {}
    ids, probs = arrays.get("lens_ids"), arrays.get("lens_probs")
    if decoded and i in decoded and (ids is None or ids[i, 0] < 0):
        return list(decoded[i])
    if ids is None or probs is None:
        return str(lens.get("note") or "the logit lens was not computed for this run")
    if ids[i, 0] < 0:
        return (f"not computed for this point: the lens ran on a seeded sample of "
                f"{lens.get('computed', 0):,} of {lens.get('points', len(ids)):,} points")
    return [(gf.lens_token(summary, t), float(p)) for t, p in zip(ids[i], probs[i], strict=True) if t >= 0]


def can_decode(summary: Mapping[str, Any]) -> bool:
    """The run stored its own states, so a ``geometry_lens`` child can decode any of its points."""
    return bool((summary.get("states") or {}).get("stored")) and not summary.get("source_run")


def point_details(arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any],
                  selection: list[int] | None, decoded: Decoded | None = None) -> Any:
    """The details panel for the selected point rows (first in full, a few more in short)."""
    rows = [int(i) for i in (selection or []) if 0 <= int(i) < len(arrays["layer"])]
    if not rows:
        return html.P("Click a point (or box / lasso in a 2D view) to see its prompt, token, layer, "
                      "component, norm and what it decodes to.", className="text-muted mb-0")
    components = gf.component_names(summary)
    first = rows[0]
    prompt, position = int(arrays["prompt_index"][first]), int(arrays["position"][first])
    comp = gf.component_name(components, int(arrays["component"][first]))
    lens = lens_rows(arrays, summary, first, decoded)
    lens_part: Any
    if isinstance(lens, str) and can_decode(summary):
        lens_part = html.Div([
            html.Span(lens, className="text-muted"),
            dbc.Button("Decode on the model", id=LENS_BUTTON_ID, size="sm", color="primary", outline=True,
                       n_clicks=0, class_name="d-block mt-1"),
        ])
    elif isinstance(lens, str):
        lens_part = html.Span(lens, className="text-muted")
    else:
        lens_part = html.Table(
            [html.Tr([html.Td(html.Code(gf.token_label(tok))), html.Td(f"{p:.3f}", className="ps-2")])
             for tok, p in lens], className="geometry-lens", id="geometry-lens-table")
    children: list[Any] = []
    if len(rows) > 1:
        children.append(html.P(f"{len(rows):,} points selected; the first:", className="mb-1 fw-semibold",
                               id="geometry-selected-count"))
    children.append(kv_table([
        ("prompt", html.Span(prompt_text(summary, prompt), className="atlas-prompt")),
        ("token", html.Code(gf.token_label(gf.token_text(summary, prompt, position)))),
        ("position", "mean" if position < 0 else str(position)),
        ("layer", str(int(arrays["layer"][first]))),
        ("component", f"{comp} ({gf.COMPONENT_LABELS.get(comp, '')})"),
        ("norm", f"{float(arrays['norm'][first]):.6g}"),
        ("decodes to (logit lens)", lens_part),
        ("point", str(first)),
    ], id="geometry-details-table"))
    if len(rows) > 1:
        more = []
        for i in rows[1 : 1 + DETAIL_ROWS]:
            p, pos = int(arrays["prompt_index"][i]), int(arrays["position"][i])
            more.append(html.Li(
                f"layer {int(arrays['layer'][i])} · "
                f"{gf.component_name(components, int(arrays['component'][i]))} · "
                f"{gf.token_label(gf.token_text(summary, p, pos))} · norm {float(arrays['norm'][i]):.4g}"))
        if len(rows) > 1 + DETAIL_ROWS:
            more.append(html.Li(f"… and {len(rows) - 1 - DETAIL_ROWS:,} more", className="text-muted"))
        children.append(html.Ul(more, className="small mb-0 ps-3 mt-2"))
    return html.Div(children)


def selection_from_event(event: Mapping[str, Any] | None) -> list[int]:
    """Point rows from a Plotly click/selection event (``customdata`` of each point)."""
    rows: list[int] = []
    for point in (event or {}).get("points") or []:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, int | float) and not isinstance(data, bool):
            rows.append(int(data))
    return list(dict.fromkeys(rows))[:MAX_SELECTED]


def decoded_lens(run_id: str) -> dict[int, list[tuple[str, float]]]:
    """Rows decoded by the run's succeeded ``geometry_lens`` children (later ones win)."""
    from webapp import runs_service

    if not run_id:
        return {}
    out: dict[int, list[tuple[str, float]]] = {}
    for child in runs_service.succeeded_children(run_id, "geometry_lens"):
        out.update(_child_lens(child))
    return out


@functools.lru_cache(maxsize=256)


def _child_lens(child_id: str) -> dict[int, list[tuple[str, float]]]:
    """One finished lens child's rows (cached: a finished run never changes)."""
    from webapp import runs_service

    run = runs_service.get_run(child_id)
    arrays = runs_service.load_arrays(run, ["rows", "lens_ids", "lens_probs"])
    summary = dict(run.summary or {})
    return {int(row): [(gf.lens_token(summary, int(t)), float(p))
                       for t, p in zip(arrays["lens_ids"][i], arrays["lens_probs"][i], strict=True) if t >= 0]
            for i, row in enumerate(arrays["rows"])}


def rows_to_decode(arrays: Mapping[str, np.ndarray], selection: list[int] | None, decoded: Decoded) -> list[int]:
    """The selected rows (at most ``MAX_DECODE_ROWS``) that have no lens yet, in selection order."""
    ids = arrays.get("lens_ids")
    n = len(arrays["layer"])
    out: list[int] = []
    for row in selection or []:
        row = int(row)
        if 0 <= row < n and row not in decoded and (ids is None or ids[row, 0] < 0) and row not in out:
            out.append(row)
        if len(out) == MAX_DECODE_ROWS:
            break
    return out
