"""Small layout helpers and pure formatting functions shared by the pages.

Invariants: nothing here touches the database or a Dash callback context, so
every function is testable on plain values; user text (titles, prompts, token
strings) is only ever passed to Dash components as text children, which React
escapes, never as HTML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

STATUS_COLOURS: dict[str, str] = {
    "queued": "secondary",
    "running": "primary",
    "succeeded": "success",
    "failed": "danger",
    "cancelled": "warning",
}
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# Run IDs are ``secrets.token_urlsafe``: letters, digits, '-' and '_'.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def status_colour(status: str | None) -> str:
    return STATUS_COLOURS.get(status or "", "secondary")


def status_badge(status: str | None, *, class_name: str = "", **kwargs: Any) -> dbc.Badge:
    return dbc.Badge(status or "unknown", color=status_colour(status),
                     class_name=f"atlas-status {class_name}".strip(), **kwargs)


def parse_time(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime | str | None) -> str:
    """``2025-06-01 12:00:03 UTC`` (sortable as text), or an em dash."""
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC") if parsed else "—"


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 02 min``; an em dash if unknown."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_percent(progress: float | None, status: str | None) -> int:
    """Progress bar value 0..100; a succeeded run is always 100."""
    if status == "succeeded":
        return 100
    try:
        value = float(progress or 0.0)
    except (TypeError, ValueError):
        value = 0.0
    return int(round(min(1.0, max(0.0, value)) * 100))


def escape_markdown(text: str) -> str:
    """Backslash-escape Markdown punctuation so user text renders literally."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def run_link_markdown(run_id: str) -> str:
    """A Markdown link to a run page, safe for any string given as ``run_id``."""
    if RUN_ID_PATTERN.fullmatch(run_id or ""):
        return f"[{escape_markdown(run_id)}](/runs/{run_id})"
    return escape_markdown(run_id or "")


def normalise_run_id(text: str | None) -> str | None:
    """A run ID typed by a user (also accepts a pasted ``.../runs/<id>`` URL)."""
    text = (text or "").strip().rstrip("/")
    if "/runs/" in text:
        text = text.rsplit("/runs/", 1)[1]
    return text if RUN_ID_PATTERN.fullmatch(text) else None


def run_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the runs grid from ``runs_service.run_summary``."""
    status = summary.get("status")
    return {
        "id": summary.get("id"),
        "id_link": run_link_markdown(str(summary.get("id") or "")),
        "title": summary.get("title") or "",
        "kind": summary.get("kind"),
        "model": summary.get("model"),
        "owner": summary.get("owner"),
        "status": status,
        "progress": progress_percent(summary.get("progress"), status),
        "stage": summary.get("stage") or "",
        "created": format_time(summary.get("created_at")),
        "duration_s": summary.get("duration_s"),
        "warning": summary.get("warning") or "",
        "tags": ", ".join(str(t) for t in summary.get("tags") or []),
    }


def run_rows(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [run_row(s) for s in summaries]


def heartbeat_warning(warning: str | None) -> html.Span | None:
    """The run page's "worker lost? ..." note (``run_health.heartbeat_state``), or None."""
    if not warning:
        return None
    return html.Span(warning, id="run-heartbeat-warning", className="text-danger fw-semibold me-2")


ATTEMPT_COLUMNS = ("#", "worker", "device", "started", "finished", "duration", "outcome", "error")


def attempts_table(records: Iterable[Any]) -> Any:
    """One row per attempt (``models.run.RunAttempt``-like objects), oldest first.

    An attempt still running has no outcome yet and shows ``running``; the
    error is a text cell.
    """
    records = list(records)
    if not records:
        return html.P("No attempt yet.", className="text-muted mb-0", id="run-attempts")
    rows = [
        html.Tr([
            html.Td(str(a.attempt)),
            html.Td(a.worker + (f" (pid {a.pid})" if a.pid else "")),
            html.Td(a.device or "—"),
            html.Td(format_time(a.started_at)),
            html.Td(format_time(a.finished_at)),
            html.Td(format_duration(a.duration_s)),
            html.Td(a.outcome or "running", className=f"atlas-attempt-{a.outcome or 'running'}"),
            html.Td(a.error or ""),
        ])
        for a in records
    ]
    return dbc.Table([html.Thead(html.Tr([html.Th(c) for c in ATTEMPT_COLUMNS])), html.Tbody(rows)],
                     size="sm", bordered=False, striped=True, class_name="mb-0 small", id="run-attempts")


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts/lists as ``(dotted.key, text)`` pairs for a key/value table."""
    if isinstance(value, Mapping):
        if not value and prefix:
            return [(prefix, "—")]
        pairs: list[tuple[str, str]] = []
        for key in value:
            name = f"{prefix}.{key}" if prefix else str(key)
            pairs.extend(flatten(value[key], name))
        return pairs
    if isinstance(value, list | tuple) and any(isinstance(v, Mapping | list | tuple) for v in value):
        pairs = []
        for i, item in enumerate(value):
            pairs.extend(flatten(item, f"{prefix}[{i}]"))
        return pairs
    if isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value)
    elif value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return [(prefix, text)]


def kv_table(rows: Iterable[tuple[str, Any]], *, id: str | None = None) -> dbc.Table:
    """A two-column key/value table; values may be text or components."""
    body = [html.Tr([html.Th(key, scope="row", className="atlas-kv-key"), html.Td(value)])
            for key, value in rows]
    kwargs = {"id": id} if id else {}
    return dbc.Table(html.Tbody(body), bordered=False, size="sm", striped=True,
                     class_name="atlas-kv mb-0", **kwargs)


def card(title: str, body: Any, *, id: str | None = None, class_name: str = "mb-3") -> dbc.Card:
    kwargs = {"id": id} if id else {}
    return dbc.Card([dbc.CardHeader(title), dbc.CardBody(body)], class_name=class_name, **kwargs)


def error_alert(messages: Iterable[str], *, title: str = "The run was not submitted") -> dbc.Alert:
    """A danger alert listing each message as plain (escaped) text."""
    items = [html.Li(str(m)) for m in messages]
    return dbc.Alert([html.Strong(title), html.Ul(items, className="mb-0")], color="danger",
                     class_name="atlas-errors")


def recent_runs_table(summaries: list[Mapping[str, Any]]) -> Any:
    """A compact table of runs (home page); titles shown as text."""
    if not summaries:
        return html.P("No runs yet.", className="text-muted")
    header = html.Thead(html.Tr([html.Th(h) for h in
                                 ("ID", "Title", "Kind", "Model", "Status", "Created")]))
    rows = []
    for s in summaries:
        rid = str(s.get("id"))
        rows.append(html.Tr([
            html.Td(dcc.Link(rid, href=f"/runs/{rid}", className="font-monospace")),
            html.Td(s.get("title") or ""),
            html.Td(s.get("kind")),
            html.Td(s.get("model")),
            html.Td(status_badge(s.get("status"))),
            html.Td(format_time(s.get("created_at"))),
        ]))
    return dbc.Table([header, html.Tbody(rows)], hover=True, size="sm", class_name="mb-0")
