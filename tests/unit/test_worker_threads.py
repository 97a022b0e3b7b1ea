"""Torch threads per worker process: the CLI's default, the setting's bounds, and the cap applied at start."""

from __future__ import annotations

import argparse

import pytest
import torch
from pydantic import ValidationError

from atlas_cli import processes
from latent_atlas.settings import Settings, get_settings
from workers import signals


@pytest.mark.parametrize(("cores", "workers", "expected"), [
    (2, 2, 1),    # `latent-atlas up` on a 2-core machine: one thread each, not two apiece
    (16, 2, 8),
    (7, 2, 3),    # rounded down: 3 + 3 <= 7
    (2, 3, 1),    # more processes than cores: still one thread, never 0
    (1, 1, 1),
    (8, 1, 8),    # one `latent-atlas worker --concurrency 1`: every core
])
def test_the_default_divides_the_cores_among_the_worker_processes(cores, workers, expected):
    threads = processes.default_torch_threads(cores, workers)
    assert threads == expected
    assert threads * workers <= cores or threads == 1


@pytest.mark.parametrize(("cores", "workers"), [(0, 2), (4, 0), (-1, 1)])
def test_the_default_refuses_a_count_below_one(cores, workers):
    with pytest.raises(ValueError, match="must be at least 1"):
        processes.default_torch_threads(cores, workers)


def test_the_setting_overrides_the_default_and_is_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ATLAS_TORCH_THREADS", raising=False)
    get_settings.cache_clear()
    try:
        assert get_settings().torch_threads is None
        assert processes.torch_threads(2) == processes.default_torch_threads(processes.usable_cores(), 2)
        monkeypatch.setenv("ATLAS_TORCH_THREADS", "3")
        get_settings.cache_clear()
        assert processes.torch_threads(2) == 3 and processes.torch_threads(64) == 3
    finally:
        get_settings.cache_clear()
    for bad in ("0", "-2", "1025", "two", "1.5"):
        monkeypatch.setenv("ATLAS_TORCH_THREADS", bad)
        with pytest.raises(ValidationError, match="torch_threads"):
            Settings()


def test_the_worker_environment_carries_the_threads():
    env = processes.worker_env(None, 4)
    assert env["ATLAS_TORCH_THREADS"] == "4"
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="torch threads"):
            processes.worker_env(None, bad)


def test_concurrency_is_a_bounded_whole_number():
    assert processes.concurrency("3") == 3
    for bad in ("0", "65", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            processes.concurrency(bad)


def test_a_worker_process_caps_torch_at_the_setting(monkeypatch: pytest.MonkeyPatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(get_settings(), "torch_threads", 1)
        signals._cap_torch_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(get_settings(), "torch_threads", None)  # unset: torch's own count stays
        torch.set_num_threads(2)
        signals._cap_torch_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
