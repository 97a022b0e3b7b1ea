"""The words for a queued run's place (webapp.queue_text) and the bulk confirmation (webapp.run_bulk)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webapp.queue_text import ordinal, place_text, row_place, start_text, until_text

NOW = datetime(2026, 12, 3, 14, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize("n, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                     (12, "12th"), (13, "13th"), (21, "21st"), (22, "22nd"),
                                     (101, "101st"), (111, "111th"), (112, "112th")])
def test_ordinal(n, text):
    assert ordinal(n) == text


@pytest.mark.parametrize("seconds, text", [(-3, "now"), (2, "now"), (40, "in 40 s"), (240, "in 4 min"),
                                           (3600 + 300, "in 1 h 05 min"), (3 * 86400, "in 3 days")])
def test_until(seconds, text):
    assert until_text(NOW + timedelta(seconds=seconds), NOW) == text


def test_the_whole_phrase_names_place_start_and_basis():
    start = NOW + timedelta(minutes=4)
    text = place_text(3, start, "median of 5 past grid runs of this size", None, "gpu", NOW)
    assert text == ("3rd in the GPU queue, estimated start ~14:05 UTC "
                    "(in 4 min; median of 5 past grid runs of this size)")
    # An ISO string (the JSON form) reads the same; another day shows the date.
    assert place_text(3, start.isoformat(), "b", None, "gpu", NOW) == place_text(3, start, "b", None, "gpu", NOW)
    assert "2026-12-04 09:00 UTC" in start_text(datetime(2026, 12, 4, 9, 0, tzinfo=UTC), NOW)


def test_held_and_unknown():
    reason = "daily GPU cap reached (3600 s of 3600 s); resumes at 00:00 UTC"
    assert place_text(None, None, "x", reason, "gpu", NOW) == f"held: {reason}"
    assert place_text(2, None, "x", None, "interactive", NOW) == (
        "2nd in the interactive queue, no start estimate: no live worker serves this queue")
    assert place_text(None, None, None, None, "gpu", NOW) == ""
    assert start_text(None, NOW) == ""


def test_row_place():
    row = {"status": "queued", "queue_position": 1, "estimated_start": (NOW + timedelta(seconds=30)).isoformat(),
           "estimate_basis": "a default of 120 s", "held_reason": None}
    place = row_place(row, NOW)
    assert place["place"] == "1st" and place["start"] == "~14:01 UTC (in 30 s)"
    assert place["place_text"] == "1st in its queue, estimated start ~14:01 UTC (in 30 s; a default of 120 s)"
    held = row_place({**row, "queue_position": None, "estimated_start": None, "held_reason": "cap"}, NOW)
    assert held == {"place": "held", "start": "", "place_text": "held: cap"}
    assert row_place({**row, "status": "running"}, NOW) == {"place": "", "start": "", "place_text": ""}


def test_bulk_confirmation_names_the_count():
    from webapp.run_bulk import describe

    assert describe("delete", 3) == "Delete 3 runs?"
    assert describe("cancel", 1) == "Cancel 1 run?"
    assert describe("add_tag", 2, "demo") == "Add tag 'demo' to 2 runs?"
    assert describe("remove_tag", 4, "old") == "Remove tag 'old' from 4 runs?"
