"""The types and helpers of sharded runs (``latent_atlas.analyses.shards`` has the contract and registry).

Kept apart from the registry so a kind's ``shard.py`` imports them without an
import cycle. ``ShardResult`` is a shard's (or a merge's) arrays and summary;
``ShardableKind`` the protocol; ``even_ranges``, ``check_parts`` and
``check_spec`` the checks every kind shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from latent_atlas.analyses.base import Progress, Result

__all__ = ["ShardResult", "ShardableKind", "check_parts", "check_spec", "even_ranges", "shard_count"]


@dataclass(frozen=True)
class ShardResult:
    """What one shard (or a merge of neighbouring shards) gives: arrays and a JSON-safe summary."""

    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        for name, array in self.arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype == object:
                raise TypeError(f"shard array {name!r} must be a numeric numpy array")


class ShardableKind(Protocol):
    """A run kind that can be split; see the module docstring for the contract."""

    name: str
    min_units_per_shard: int  # never make a shard smaller than this many work units

    def work_units(self, params: Any) -> int: ...

    def split(self, params: Any, n: int) -> list[dict[str, Any]]: ...

    def run_shard(self, params: Any, shard: dict[str, Any], lm: Any, progress: Progress,
                  **kw: Any) -> ShardResult: ...

    def merge(self, params: Any, parts: list[ShardResult]) -> ShardResult: ...

    def finish(self, params: Any, merged: ShardResult, lm: Any, progress: Progress, **kw: Any) -> Result: ...


def shard_count(units: int, idle_workers: int, min_units_per_shard: int) -> int:
    """How many shards to cut a run of ``units`` work units into, with ``idle_workers`` free.

    1 (never split) when fewer than 2 workers are idle or the run has less than
    two shards' worth of work; else as many shards as idle workers, but none
    smaller than ``min_units_per_shard``.
    """
    if units < 0 or idle_workers < 0 or min_units_per_shard < 1:
        raise ValueError("units and idle_workers must be >= 0 and min_units_per_shard >= 1")
    if idle_workers < 2:
        return 1
    return max(1, min(idle_workers, units // min_units_per_shard))


def even_ranges(pieces: int, n: int) -> list[tuple[int, int]]:
    """Split ``pieces`` whole pieces into at most ``n`` contiguous, non-empty ranges of near-equal size."""
    if n < 1:
        raise ValueError(f"the number of shards must be >= 1, got {n}")
    count = max(1, min(n, pieces))
    return [(i * pieces // count, (i + 1) * pieces // count) for i in range(count)]


def check_parts(parts: list[ShardResult], start: str, stop: str) -> None:
    """``parts`` are non-empty and neighbours: each part's ``stop`` is the next one's ``start``."""
    if not parts:
        raise ValueError("nothing to merge: no shard results")
    for left, right in zip(parts, parts[1:], strict=False):
        if left.summary[stop] != right.summary[start]:
            raise ValueError(
                f"shard results are not neighbours: one ends at {left.summary[stop]}, "
                f"the next starts at {right.summary[start]}"
            )


def check_spec(shard: dict[str, Any], keys: tuple[str, ...]) -> None:
    """A shard spec names ``index``, ``count`` and ``keys`` as non-negative integers."""
    for key in ("index", "count", *keys):
        value = shard.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"shard spec needs a non-negative integer {key!r}, got {value!r}")
