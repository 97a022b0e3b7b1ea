"""The words for a queued run's place: pure functions of the queue fields (``webapp.run_queue``).

``"3rd in the GPU queue, estimated start ~14:05 UTC (in 4 min; median of 5 past
grid runs of this size)"`` or ``"held: daily GPU cap reached (...)"``. Nothing
here reads the database or the clock: ``now`` is passed in, so every phrase is
testable on plain values. The estimate's basis is always shown with it: an
estimate without its basis reads as a promise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["ordinal", "place_text", "queue_label", "row_place", "start_text", "until_text"]


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``12th``, ``13th``, ``21st``, ``112th``."""
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queue_label(queue: str) -> str:
    """``GPU`` and ``CPU`` in capitals; other queue names as they are."""
    return queue.upper() if queue in ("gpu", "cpu") else queue


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def until_text(start: datetime, now: datetime) -> str:
    """``now``, ``in 40 s``, ``in 4 min``, ``in 2 h 05 min``, ``in 3 days``."""
    seconds = (_utc(start) - _utc(now)).total_seconds()
    if seconds < 5:
        return "now"
    if seconds < 60:
        return f"in {int(round(seconds))} s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"in {hours} h {minutes:02d} min"
    return f"in {int(round(hours / 24))} days"


def _clock(start: datetime, now: datetime) -> str:
    """``14:05 UTC``, with the date when it is not today's."""
    return start.strftime("%H:%M UTC") if start.date() == now.date() else start.strftime("%Y-%m-%d %H:%M UTC")


def start_text(estimated_start: datetime | str | None, now: datetime) -> str:
    """``~14:05 UTC (in 4 min)``; ``''`` when unknown."""
    if not estimated_start:
        return ""
    start, today = _utc(estimated_start), _utc(now)
    return f"~{_clock(start, today)} ({until_text(start, today)})"


def place_text(position: int | None, estimated_start: datetime | str | None, basis: str | None,
               held_reason: str | None, queue: str | None, now: datetime) -> str:
    """The whole phrase for a queued run (``''`` when nothing is known).

    ``3rd in the GPU queue, estimated start ~14:05 UTC (in 4 min; median of 5
    past grid runs of this size)``, or ``held: <reason>``.
    """
    if held_reason:
        return f"held: {held_reason}"
    parts = []
    if position is not None:
        where = f"the {queue_label(queue)} queue" if queue else "its queue"
        parts.append(f"{ordinal(position)} in {where}")
    if estimated_start:
        start, today = _utc(estimated_start), _utc(now)
        when = until_text(start, today) + (f"; {basis}" if basis else "")
        parts.append(f"estimated start ~{_clock(start, today)} ({when})")
    elif position is not None:
        parts.append("no start estimate: no live worker serves this queue")
    return ", ".join(parts)


def row_place(row: dict[str, Any], now: datetime) -> dict[str, str]:
    """``place`` (``3rd`` / ``held``), ``start`` and the whole phrase (``place_text``) of a run row
    carrying the queue fields of ``webapp.run_queue`` (empty strings when it is not queued)."""
    if row.get("status") != "queued":
        return {"place": "", "start": "", "place_text": ""}
    held = row.get("held_reason")
    position = row.get("queue_position")
    return {
        "place": "held" if held else (ordinal(position) if position is not None else ""),
        "start": "" if held else start_text(row.get("estimated_start"), now),
        "place_text": place_text(position, row.get("estimated_start"), row.get("estimate_basis"), held,
                                 row.get("queue"), now),
    }
