"""The contract every run kind follows.

An analysis is a pydantic ``Params`` model plus a pure function
``run(params, lm, progress) -> Result``. Invariants:

* ``run`` touches no database, broker or web object; it reports through the
  ``progress`` callable only and is testable in a notebook.
* ``progress(fraction, stage)`` is called between batches with a fraction in
  [0, 1]; it raises ``Cancelled`` when the run was cancelled, so an analysis must
  call it at least once per batch and hold nothing that needs cleaning up when
  it raises.
* A kind that can resume (``AnalysisKind.resumable``) takes an optional
  ``checkpoint`` (``Checkpoint``): it saves each finished piece of its work
  under a key that depends only on the params and the piece's index (never on
  the attempt, the batch size or the time), and on a retry loads the pieces an
  earlier attempt saved instead of computing them again. The result must
  equal an uninterrupted run's.
* ``Result.arrays`` holds numpy arrays only (numeric dtypes, no objects, so
  they store as ``.npy`` without pickling); ``Result.summary`` holds JSON-safe
  values only (token strings go there, never into arrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Cancelled(Exception):
    """Raised by a progress callback when the user cancelled the run."""


class Progress(Protocol):
    def __call__(self, fraction: float, stage: str) -> None: ...


def no_progress(fraction: float, stage: str) -> None:
    """A progress callback that ignores reports (for notebooks and tests)."""


class Checkpoint(Protocol):
    """Finished pieces of a run's work, kept across attempts (see the module docstring).

    ``load(key)`` returns the arrays saved under ``key`` or None; ``save`` is
    atomic: a piece is either saved whole or absent. Keys are short strings of
    letters, digits, ``-`` and ``.``.
    """

    def load(self, key: str) -> dict[str, np.ndarray] | None: ...

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None: ...


class MemoryCheckpoint:
    """A ``Checkpoint`` in a dict (notebooks and tests); counts what was loaded and saved."""

    def __init__(self) -> None:
        self.pieces: dict[str, dict[str, np.ndarray]] = {}
        self.loaded: list[str] = []
        self.saved: list[str] = []

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        piece = self.pieces.get(key)
        if piece is not None:
            self.loaded.append(key)
        return None if piece is None else {name: array.copy() for name, array in piece.items()}

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self.saved.append(key)
        self.pieces[key] = {name: np.array(array, copy=True) for name, array in arrays.items()}


@dataclass
class Result:
    """What an analysis returns: named arrays plus a small JSON summary."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, array in self.arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype == object:
                raise TypeError(f"result array {name!r} must be a numeric numpy array")
