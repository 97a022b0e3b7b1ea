"""Pure helpers behind the pages: table rows, formatting, run-ID handling."""

from __future__ import annotations

from datetime import UTC, datetime

from webapp import components as c


def test_run_row_links_the_id_and_keeps_the_title_as_text():
    row = c.run_row({
        "id": "abc_DEF-123", "title": "<img src=x onerror=alert(1)> [x](javascript:1)",
        "kind": "geometry", "model": "gpt2", "owner": "alice", "status": "running",
        "progress": 0.425, "stage": "capturing", "created_at": "2025-06-01T12:00:03+00:00",
        "duration_s": 12.5,
    })
    assert row["id_link"] == r"[abc\_DEF\-123](/runs/abc_DEF-123)"
    assert row["title"] == "<img src=x onerror=alert(1)> [x](javascript:1)"  # text cell
    assert row["progress"] == 42
    assert row["created"] == "2025-06-01 12:00:03 UTC"
    assert row["duration_s"] == 12.5


def test_run_link_for_a_strange_id_is_plain_escaped_text():
    assert c.run_link_markdown("[x](javascript:alert(1))") == r"\[x\]\(javascript:alert\(1\)\)"
    assert "](" not in c.run_link_markdown("a b")


def test_progress_percent():
    assert c.progress_percent(None, "queued") == 0
    assert c.progress_percent(0.5, "running") == 50
    assert c.progress_percent(2.0, "running") == 100
    assert c.progress_percent(0.1, "succeeded") == 100
    assert c.progress_percent("junk", "running") == 0


def test_format_time_and_duration():
    assert c.format_time(None) == "—"
    assert c.format_time(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02 03:04:05 UTC"
    assert c.format_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02 03:04:05 UTC"
    assert c.format_duration(None) == "—"
    assert c.format_duration(0.44) == "0.4 s"
    assert c.format_duration(125) == "2 min 05 s"
    assert c.format_duration(3 * 3600 + 120) == "3 h 02 min"


def test_normalise_run_id_accepts_ids_and_urls_only():
    assert c.normalise_run_id("  abc_DEF-1 ") == "abc_DEF-1"
    assert c.normalise_run_id("http://host/runs/abc_DEF-1/") == "abc_DEF-1"
    assert c.normalise_run_id("../admin") is None
    assert c.normalise_run_id("") is None
    assert c.normalise_run_id(None) is None


def test_status_colours():
    assert c.status_colour("failed") == "danger"
    assert c.status_colour("succeeded") == "success"
    assert c.status_colour("nonsense") == "secondary"


def test_flatten_nested_environment():
    pairs = c.flatten({"model": "gpt2", "versions": {"torch": "2.4", "numpy": "2.1"},
                       "seed": 0, "ok": True, "shape": [3, 4], "none": None, "f": 0.123456789})
    assert pairs == [("model", "gpt2"), ("versions.torch", "2.4"), ("versions.numpy", "2.1"),
                     ("seed", "0"), ("ok", "true"), ("shape", "3, 4"), ("none", "—"),
                     ("f", "0.123457")]


def test_error_alert_lists_messages_as_text():
    alert = c.error_alert(["prompts: <b>bad</b>", "max_tokens: too big"])
    text = str(alert)
    assert "prompts: <b>bad</b>" in text and "max_tokens: too big" in text
    assert alert.color == "danger"
