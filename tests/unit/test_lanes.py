"""The interactive lane: what may enter it (bounds), its time limits on the wire, its workers, its memory share.

Pure decisions and a real Celery message (kombu's in-memory transport); the
GPU memory cap is checked against a stand-in for ``torch.cuda`` (no GPU here).
"""

from __future__ import annotations

import argparse

import pytest
import torch
from kombu import Connection
from pydantic import ValidationError

from latent_atlas.analyses import KINDS
from latent_atlas.analyses.lanes import ELIGIBLE, INTERACTIVE, decide, lane_for, source_run_of
from latent_atlas.settings import InteractiveLane, Settings
from workers import gpu_memory
from workers.celery_app import (
    EXECUTE_TASK,
    INTERACTIVE_QUEUE,
    QUEUES,
    AtlasCelery,
    lane_time_limits,
)


def _settings(**lane: object) -> Settings:
    return Settings(interactive=InteractiveLane(**lane))


def _lens(n: int) -> dict:
    return {"source_run": "abcdefghijkl", "model": "smollm2-135m", "rows": list(range(n))}


def _reproject(reduction: str = "pca") -> dict:
    return {"source_run": "abcdefghijkl", "model": "smollm2-135m", "reduction": reduction}


# ------------------------------------------------------------ the bound ----


def test_a_lens_decode_enters_the_lane_up_to_its_bound_and_no_further():
    settings = _settings(max_lens_points=8)
    assert lane_for("geometry_lens", _lens(1), settings=settings) == INTERACTIVE
    assert lane_for("geometry_lens", _lens(8), settings=settings) == INTERACTIVE  # the bound itself enters
    over = decide("geometry_lens", _lens(9), settings=settings)
    assert over.queue == "gpu" == KINDS["geometry_lens"].queue and not over.interactive
    assert over.reason == "9 points decoded exceed the interactive lane's bound of 8; it goes to the gpu queue"
    assert decide("geometry_lens", _lens(3), settings=settings).reason == \
        "3 points decoded (bound 8): the interactive lane"


def test_a_reprojection_is_measured_by_its_source_runs_points_and_umap_has_its_own_bound():
    settings = _settings(max_reproject_states=1_000, max_umap_states=100)
    assert lane_for("geometry_reproject", _reproject(), source_points=1_000, settings=settings) == INTERACTIVE
    assert lane_for("geometry_reproject", _reproject(), source_points=1_001, settings=settings) == "cpu"
    assert lane_for("geometry_reproject", _reproject("umap"), source_points=100, settings=settings) == INTERACTIVE
    umap_over = decide("geometry_reproject", _reproject("umap"), source_points=101, settings=settings)
    assert umap_over.queue == "cpu" and "101 stored states re-projected exceed" in umap_over.reason
    assert "bound of 100" in umap_over.reason
    unknown = decide("geometry_reproject", _reproject(), settings=settings)  # no source size: never the lane
    assert unknown.queue == "cpu" and "unknown" in unknown.reason
    assert lane_for("geometry_reproject", _reproject("umap"), source_points=5,
                    settings=_settings(max_umap_states=0)) == "cpu"


def test_other_kinds_and_a_disabled_lane_keep_their_normal_queue():
    settings = _settings()
    for name, kind in KINDS.items():
        if name not in ELIGIBLE:
            assert lane_for(name, {"model": "smollm2-135m"}, settings=settings) == kind.queue
    off = _settings(enabled=False)
    assert lane_for("geometry_lens", _lens(1), settings=off) == "gpu"
    assert "disabled" in decide("geometry_reproject", _reproject(), source_points=1, settings=off).reason
    assert set(ELIGIBLE) == {"geometry_lens", "geometry_reproject"}


def test_clear_errors_for_an_unknown_kind_unmeasurable_params_and_a_bad_source_size():
    with pytest.raises(KeyError, match=r"unknown run kind 'nope' \(known: .*geometry_lens"):
        lane_for("nope", {})
    with pytest.raises(ValueError, match="'rows' must be a list of point rows, got str"):
        lane_for("geometry_lens", {"rows": "1,2"}, settings=_settings())
    with pytest.raises(ValueError, match="params must be a mapping, got list"):
        lane_for("geometry_lens", [1, 2], settings=_settings())  # type: ignore[arg-type]
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="source_points must be a count >= 0"):
            lane_for("geometry_reproject", _reproject(), source_points=bad, settings=_settings())  # type: ignore[arg-type]


def test_the_source_run_whose_size_is_needed():
    assert source_run_of("geometry_reproject", _reproject()) == "abcdefghijkl"
    assert source_run_of("geometry_lens", _lens(2)) is None  # the rows say the size
    assert source_run_of("grid", {"source_run": "x"}) is None
    assert source_run_of("geometry_reproject", {}) is None


def test_lane_settings_are_bounded_with_clear_messages(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValidationError, match="interactive.hard_time_limit must exceed"):
        InteractiveLane(soft_time_limit=30, hard_time_limit=30)
    with pytest.raises(ValidationError, match="max_umap_states must not exceed"):
        InteractiveLane(max_reproject_states=10, max_umap_states=11)
    with pytest.raises(ValidationError, match="less than or equal to 2000"):
        InteractiveLane(max_lens_points=5_000)  # a lens run takes at most 2,000 rows anyway
    with pytest.raises(ValidationError, match="less than 0.95"):
        InteractiveLane(gpu_memory_fraction=0.95)
    with pytest.raises(ValidationError, match="Extra inputs"):
        InteractiveLane(max_points=3)
    monkeypatch.setenv("ATLAS_INTERACTIVE__MAX_LENS_POINTS", "12")
    monkeypatch.setenv("ATLAS_INTERACTIVE__SOFT_TIME_LIMIT", "20")
    monkeypatch.setenv("ATLAS_INTERACTIVE__HARD_TIME_LIMIT", "25")
    monkeypatch.setenv("ATLAS_GPU_MEMORY_FRACTION", "0.3")
    settings = Settings()
    assert settings.interactive.max_lens_points == 12 and settings.gpu_memory_fraction == 0.3
    assert (settings.interactive.soft_time_limit, settings.interactive.hard_time_limit) == (20, 25)
    monkeypatch.setenv("ATLAS_GPU_MEMORY_FRACTION", "1.5")
    with pytest.raises(ValidationError, match="gpu_memory_fraction"):
        Settings()


def test_the_broker_visibility_timeout_stays_above_the_lanes_hard_limit():
    settings = Settings(soft_time_limit=10, hard_time_limit=20,
                        interactive=InteractiveLane(soft_time_limit=1000, hard_time_limit=2000))
    assert settings.visibility_timeout > 2000


# ---------------------------------------------------- limits on the wire ----


def test_every_message_to_the_lane_carries_its_time_limits():
    """The real Celery message (in-memory broker): the lane's (hard, soft) limits in its headers."""
    assert INTERACTIVE_QUEUE == INTERACTIVE and INTERACTIVE in QUEUES
    app = AtlasCelery("lane-test", broker="memory://")
    app.conf.task_create_missing_queues = True
    app.send_task(EXECUTE_TASK, args=["run-a"], queue=INTERACTIVE)
    app.send_task(EXECUTE_TASK, args=["run-b"], queue="gpu")
    app.send_task(EXECUTE_TASK, args=["run-c"], queue=INTERACTIVE, soft_time_limit=5, time_limit=7)
    lane = Settings().interactive
    with Connection("memory://") as conn:
        interactive = conn.SimpleQueue(INTERACTIVE)
        first, third = interactive.get(timeout=2), interactive.get(timeout=2)
        gpu = conn.SimpleQueue("gpu").get(timeout=2)
    assert first.headers["argsrepr"] == "['run-a']"
    assert first.headers["timelimit"] == [lane.hard_time_limit, lane.soft_time_limit]
    assert third.headers["timelimit"] == [7, 5]  # a caller's own limits are kept
    assert gpu.headers["timelimit"] == [None, None]  # long jobs: the app-wide limits apply
    assert lane_time_limits(INTERACTIVE) == {"soft_time_limit": lane.soft_time_limit,
                                             "time_limit": lane.hard_time_limit}
    assert lane_time_limits("gpu") == {} and lane_time_limits(None) == {}


# --------------------------------------------------------- the workers ----


def test_a_lane_only_worker_is_started_with_the_lanes_limits_and_queue_names_are_checked():
    from atlas_cli.main import _check_queues, _fraction, worker_command, worker_env

    lane = Settings().interactive
    command = worker_command("interactive", 1, "INFO", "interactive@%h")
    assert command[command.index("--soft-time-limit") + 1] == str(lane.soft_time_limit)
    assert command[command.index("--time-limit") + 1] == str(lane.hard_time_limit)
    assert "--soft-time-limit" not in worker_command("gpu,cpu", 1, "INFO", "atlas@%h")
    assert _check_queues(" gpu, interactive ") == "gpu,interactive"
    with pytest.raises(SystemExit, match=r"unknown queue\(s\) fast; choose from gpu, cpu, interactive"):
        _check_queues("gpu,fast")
    with pytest.raises(SystemExit, match=r"\(none given\)"):
        _check_queues(",")
    assert _fraction("0.2") == 0.2
    for bad in ("0", "1.2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _fraction(bad)
    assert worker_env(0.75, 1)["ATLAS_GPU_MEMORY_FRACTION"] == "0.75"


def test_the_gpu_memory_share_is_applied_once_per_device_and_never_on_cpu(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(gpu_memory, "_applied", {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append((fraction, device)))
    assert gpu_memory.limit_process_memory(torch.device("cpu"), 0.2) == {}
    assert gpu_memory.limit_process_memory(torch.device("cuda"), None) == {}
    assert calls == []
    assert gpu_memory.limit_process_memory(torch.device("cuda"), 0.2) == {0: 0.2, 1: 0.2}
    assert gpu_memory.limit_process_memory(torch.device("cuda:1"), 0.2) == {0: 0.2, 1: 0.2}
    assert calls == [(0.2, 0), (0.2, 1)]  # once per device
    with pytest.raises(ValueError, match=r"gpu_memory_fraction must be in \(0, 1\], got 1.5"):
        gpu_memory.limit_process_memory(torch.device("cuda:0"), 1.5)


def test_a_run_past_the_lanes_soft_limit_says_so():
    from celery.exceptions import SoftTimeLimitExceeded

    from workers.execute import _error_message

    lane = _error_message(SoftTimeLimitExceeded(), 60, "interactive")
    assert lane.startswith("time limit exceeded (60 s, the interactive lane's limit); choose fewer points")
    long_job = _error_message(SoftTimeLimitExceeded(), None, "gpu")
    assert long_job == f"time limit exceeded ({Settings().soft_time_limit:g} s); try fewer prompts or tokens"
