"""Worker process signals: the UMAP warm-up thread at process start."""

from __future__ import annotations

import threading

import pytest

from latent_atlas.analyses.geometry import points as geometry_points
from latent_atlas.settings import get_settings
from workers import signals


def test_worker_processes_warm_up_umap_in_a_background_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    done = threading.Event()

    def record_warm_up() -> float:
        calls.append(threading.current_thread().name)
        done.set()
        return 0.0

    monkeypatch.setattr(geometry_points, "warm_up_umap", record_warm_up)
    signals._start_umap_warmup()
    assert done.wait(10) and calls == ["umap-warmup"]
    monkeypatch.setattr(get_settings(), "umap_warmup", False)
    signals._start_umap_warmup()
    assert calls == ["umap-warmup"]



def test_the_warm_up_runs_the_seeded_fit_and_transform() -> None:
    """The real warm-up code (no stand-in) runs to the end on the installed umap-learn; a small size
    here (the worker's default, 4,200 rows, also compiles the approximate-neighbour search)."""
    assert geometry_points.UMAP_WARMUP_POINTS > 4096
    assert geometry_points.warm_up_umap(points=300) > 0
