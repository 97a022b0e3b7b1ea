"""``StoreCheckpoint``: pieces of a run's work in the artifact store's file system."""

from __future__ import annotations

import numpy as np
import pytest

from models.store import ArtifactStore
from workers.checkpoints import StoreCheckpoint


def test_pieces_round_trip_per_run_and_are_cleared(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    first, other = StoreCheckpoint("run_A-1", store), StoreCheckpoint("run_B", store)
    piece = {"ids": np.arange(12, dtype=np.int32).reshape(4, 3), "entropy": np.linspace(0, 1, 4, dtype=np.float32)}
    assert first.load("grid-direct-cpu.0") is None
    first.save("grid-direct-cpu.0", piece)
    loaded = StoreCheckpoint("run_A-1", store).load("grid-direct-cpu.0")  # another attempt, same run
    assert set(loaded) == {"ids", "entropy"}
    for name in piece:
        assert loaded[name].dtype == piece[name].dtype
        np.testing.assert_array_equal(loaded[name], piece[name])
    assert other.load("grid-direct-cpu.0") is None
    assert first.keys() == ["grid-direct-cpu.0"]
    assert not [p for p in (tmp_path / "artifacts" / "partial" / "run_A-1").iterdir() if p.suffix == ".tmp"]
    first.clear()
    assert first.keys() == [] and first.load("grid-direct-cpu.0") is None
    first.clear()  # clearing twice is harmless


def test_an_unreadable_piece_is_missing_and_bad_names_are_refused(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    checkpoint = StoreCheckpoint("run1", store)
    checkpoint.save("p.0", {"a": np.zeros(3)})
    (tmp_path / "artifacts" / "partial" / "run1" / "p.0.npz").write_bytes(b"half a file")
    assert checkpoint.load("p.0") is None
    with pytest.raises(ValueError):
        checkpoint.save("../escape", {"a": np.zeros(1)})
    with pytest.raises(ValueError):
        StoreCheckpoint("../other-run", store)
    with pytest.raises(ValueError):  # no pickling, even of a piece
        checkpoint.save("p.1", {"a": np.array([object()], dtype=object)})
