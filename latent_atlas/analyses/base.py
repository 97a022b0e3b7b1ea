"""The contract every run kind follows.

An analysis is a pydantic ``Params`` model plus a pure function
``run(params, lm, progress) -> Result``. Invariants:

* ``run`` touches no database, broker or web object; it reports through the
  ``progress`` callable only and is testable in a notebook.
* ``progress(fraction, stage)`` is called between batches with a fraction in
  [0, 1]; it raises ``Cancelled`` when the run was cancelled, so an analysis must
  call it at least once per batch and hold nothing that needs cleaning up when
  it raises.
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


@dataclass
class Result:
    """What an analysis returns: named arrays plus a small JSON summary."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, array in self.arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype == object:
                raise TypeError(f"result array {name!r} must be a numeric numpy array")
