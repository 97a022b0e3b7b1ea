"""The run page's table of a sharded run's shards (index, status, worker, device, attempts, progress, time)."""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import html

from webapp.components import format_duration

SHARD_COLUMNS = ("Shard", "Status", "Worker", "Device", "Attempts", "Progress", "Device time", "Error")


def shards_table(records: list[dict[str, Any]]) -> Any:
    """One row per shard (``runs_service.shard_records``); None for a run that ran whole.

    Text is passed as Dash children, so worker names and errors are escaped.
    """
    if not records:
        return None
    rows = [
        html.Tr([
            html.Td(f"{r['index'] + 1}/{r['count']}"),
            html.Td(r["status"], className=f"atlas-shard-{r['status']}"),
            html.Td(r["worker"] or "—"),
            html.Td(r["device"] or "—"),
            html.Td(str(r["attempts"])),
            html.Td(f"{100 * r['progress']:.0f} %"),
            html.Td(format_duration(r["gpu_s"]) if r["gpu_s"] else "—"),
            html.Td(r["error"] or ""),
        ])
        for r in records
    ]
    return html.Div([
        html.H6(f"Shards ({len(records)})", className="mt-3"),
        dbc.Table([html.Thead(html.Tr([html.Th(c) for c in SHARD_COLUMNS])), html.Tbody(rows)],
                  size="sm", bordered=False, striped=True, class_name="mb-0 small", id="run-shards"),
    ])
