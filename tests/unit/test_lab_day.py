"""The workload and verdicts of bench/fair_share.py (pure: no portal)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _lab_day import MEMBERS, lab_day, lens_rows, percentile, verdicts  # noqa: E402


def test_same_seed_same_day_and_another_seed_another() -> None:
    assert lab_day(3) == lab_day(3)
    assert lab_day(3) != lab_day(4)
    jobs = lab_day(3)
    assert [j.arrival_s for j in jobs] == sorted(j.arrival_s for j in jobs)
    assert {j.member for j in jobs} == {m for m, _ in MEMBERS}


def test_the_tiers_do_what_the_lab_says() -> None:
    jobs = lab_day(0)
    heavy = [j for j in jobs if j.tier == "heavy"]
    light = [j for j in jobs if j.tier == "light"]
    assert all(j.kind == "grid" for j in heavy)
    assert max(j.params["size"] for j in heavy) == 60
    assert {j.kind for j in light} == {"geometry", "geometry_lens"}
    assert all(j.interactive == (j.kind == "geometry_lens") for j in jobs)
    light_geometry = [j for j in light if j.kind == "geometry"]
    assert all(j.params["components"] == ["resid_post"] and j.params["store_states"] for j in light_geometry)


def test_scale_stretches_arrivals_and_sizes() -> None:
    small, big = lab_day(0, 1.0), lab_day(0, 4.0)
    assert max(j.arrival_s for j in big) > 3 * max(j.arrival_s for j in small)
    assert max(j.params.get("size", 0) for j in big) == 120  # sides grow with sqrt(scale)
    with pytest.raises(ValueError, match="scale"):
        lab_day(0, 0.0)


def test_clicked_points_are_distinct_rows_of_the_source() -> None:
    for job in (j for j in lab_day(1) if j.interactive):
        rows = lens_rows(job, 40)
        assert len(rows) == len(set(rows)) == min(job.params["points"], 40)
        assert all(0 <= r < 40 for r in rows)


def _record(member: str, wait: float, interactive: bool = False, latency: float = 1.0,
            queue: str = "gpu") -> dict:
    return {"member": member, "interactive": interactive, "wait_s": wait, "latency_s": latency, "queue": queue}


def _day(waits: dict[str, list[float]], lane: list[float], queue: str = "interactive") -> list[dict]:
    records = [_record(m, w) for m, ws in waits.items() for w in ws]
    return records + [_record("light_a", 0.0, True, latency, queue) for latency in lane]


def test_verdicts_pass_and_fail_on_the_figures() -> None:
    members = [m for m, _ in MEMBERS]
    fifo = _day({m: [50.0, 60.0, 200.0] for m in members}, [1.0, 2.0])
    fair_waits = {m: [50.0, 60.0, 200.0] for m in members}
    fair_waits["light_a"] = fair_waits["light_b"] = [1.0, 2.0, 3.0]
    good = verdicts(fifo, _day(fair_waits, [1.0, 3.0]))["targets"]
    assert all(target["pass"] for target in good.values())
    assert good["light_p95_far_better"]["ratios"] == [3.0 / 200.0, 3.0 / 200.0]

    fair_waits["heavy_a"] = [150.0, 130.0, 200.0]  # median 150 > 2 x 60
    slow_lane = verdicts(fifo, _day(fair_waits, [1.0, 12.0]))["targets"]
    assert not slow_lane["median_not_worse_than_2x"]["pass"]
    assert slow_lane["median_not_worse_than_2x"]["worst_ratio"] == pytest.approx(2.5)
    assert not slow_lane["interactive_p95"]["pass"]
    # Decodes that ran on the gpu queue are no lane, however fast.
    no_lane = verdicts(_day({m: [1.0] for m in members}, [0.5], "gpu"),
                       _day({m: [1.0] for m in members}, [0.5], "gpu"))["targets"]
    assert not no_lane["interactive_p95"]["pass"]


def test_a_fifo_wait_under_the_floor_is_compared_with_the_floor() -> None:
    members = [m for m, _ in MEMBERS]
    fifo = _day({m: [0.2] for m in members}, [1.0])
    fair = _day({m: [1.5] for m in members}, [1.0])
    result = verdicts(fifo, fair)
    assert result["members"]["heavy_a"]["median_ratio"] == pytest.approx(1.5 / 2.0)
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 5.0
