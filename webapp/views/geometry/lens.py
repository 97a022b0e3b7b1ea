"""The page of a ``geometry_lens`` run: the decoded points, with a link to the source run.

Token strings are always text children (escaped by React); at most
``MAX_TABLE_ROWS`` points are listed (the exports hold all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import dcc, html

from webapp.views.geometry import figures as gf

ARRAYS = ["rows", "lens_ids", "lens_probs"]
MAX_TABLE_ROWS = 200


def render(run: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    summary = dict(run.summary or {})
    source = str(summary.get("source_run") or (run.params or {}).get("source_run") or "")
    rows, ids, probs = arrays.get("rows"), arrays.get("lens_ids"), arrays.get("lens_probs")
    strings = {"lens": {"tokens": summary.get("tokens") or {}}}  # a lens run keeps them at the top level
    if rows is None or ids is None or probs is None:
        return dbc.Alert("This run has no decoded points to show.", color="warning")
    body = [html.Tr([html.Td(str(int(row))),
                     *[html.Td([html.Code(gf.token_label(gf.lens_token(strings, int(t)))),
                                html.Small(f" {float(p):.3f}", className="text-muted")])
                       for t, p in zip(ids[i], probs[i], strict=True) if t >= 0]])
            for i, row in enumerate(rows[:MAX_TABLE_ROWS])]
    more = (html.P(f"… and {len(rows) - MAX_TABLE_ROWS:,} more (see the exports).", className="text-muted")
            if len(rows) > MAX_TABLE_ROWS else None)
    return html.Div([
        html.P(["Logit lens (final norm + unembedding, top ", str(summary.get("k", ids.shape[1])), ") of ",
                f"{len(rows):,} stored states of run ", dcc.Link(source, href=f"/runs/{source}"), "."]),
        dbc.Table([html.Thead(html.Tr([html.Th("point"), html.Th("top tokens (probability)",
                                                                  colSpan=ids.shape[1])])),
                   html.Tbody(body)], size="sm", striped=True, id="geometry-lens-run-table"),
        more,
    ])
