"""Pieces of a run's work kept across attempts, in the artifact store's file system.

``StoreCheckpoint`` implements ``latent_atlas.analyses.base.Checkpoint`` for
one run: piece ``key`` lives at ``<artifact root>/partial/<run id>/<key>.npz``
(NumPy's own format, never pickled). Invariants:

* a piece is written to a temporary name and renamed, so a worker killed while
  saving leaves no half piece; a piece that cannot be read is treated as
  missing (recomputed), never as an error of the run;
* the path depends on the run ID and the key only, so every attempt of the run
  (on any worker that shares the store) finds the pieces of the earlier ones;
* ``clear`` removes the run's pieces; the worker calls it once the run has
  ended (succeeded, failed or cancelled).
"""

from __future__ import annotations

import io
import logging
import re
import uuid

import numpy as np

from models.store import ArtifactStore

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,199}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StoreCheckpoint:
    def __init__(self, run_id: str, store: ArtifactStore | None = None) -> None:
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run ID: {run_id!r}")
        self.store = store or ArtifactStore()
        self.directory = f"{self.store.root}/partial/{run_id}"

    def _path(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a checkpoint key: {key!r}")
        return f"{self.directory}/{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        fs = self.store.fs
        try:
            if not fs.exists(path):
                return None
            with fs.open(path, "rb") as handle:
                data = handle.read()
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except Exception:  # an unreadable piece is recomputed
            log.warning("checkpoint piece %s unreadable; recomputing it", path, exc_info=True)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        if any(np.asarray(array).dtype.hasobject for array in arrays.values()):
            raise ValueError("object arrays cannot be saved (no pickling)")
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.ascontiguousarray(array) for name, array in arrays.items()})
        fs = self.store.fs
        fs.makedirs(self.directory, exist_ok=True)
        tmp = f"{self.directory}/.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as handle:
            handle.write(buffer.getvalue())
        fs.mv(tmp, path)

    def keys(self) -> list[str]:
        """Keys of the pieces saved so far (sorted)."""
        fs = self.store.fs
        if not fs.exists(self.directory):
            return []
        names = [str(p).rsplit("/", 1)[-1] for p in fs.ls(self.directory, detail=False)]
        return sorted(n[: -len(".npz")] for n in names if n.endswith(".npz"))

    def clear(self) -> None:
        fs = self.store.fs
        try:
            if fs.exists(self.directory):
                fs.rm(self.directory, recursive=True)
        except Exception:  # leftover pieces cost disk space only
            log.warning("could not remove checkpoint pieces in %s", self.directory, exc_info=True)
