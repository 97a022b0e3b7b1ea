"""Expected durations of runs, from past succeeded runs of the same kind and size.

Invariants:

* ``run_size`` is a pure function of a run's kind and params (grid cells,
  geometry prompts x tokens, SAE tokens, ...); runs of one kind whose sizes
  round to the same ``log2`` are one bucket.
* An estimate is the median duration (the succeeded attempt's start .. end)
  of the most recent ``PER_BUCKET`` succeeded runs of the bucket; with none, a
  per-kind default. Its ``basis`` says which, in words shown to users.
* ``EstimateTable.load`` reads the database once; ``estimate`` is then pure.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

PER_BUCKET = 20
RECENT_RUNS = 2_000

# Seconds, for a kind with no past run of the size asked (a small-GPU guess; the table learns).
DEFAULT_DURATION_S: dict[str, float] = {
    "geometry": 30.0,
    "geometry_lens": 10.0,
    "geometry_reproject": 20.0,
    "grid": 120.0,
    "sae": 300.0,
    "sae_train": 600.0,
    "anatomy": 30.0,
    "scan": 20.0,
}
FALLBACK_DURATION_S = 60.0


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def run_size(kind: str, params: Mapping[str, Any]) -> int:
    """The work of a run in the kind's own unit (cells, tokens, rows); at least 1."""
    if kind == "grid":
        size = _int(params.get("size"), 200)
        return size * size
    if kind == "geometry":
        token_ids = params.get("token_ids")
        if isinstance(token_ids, list) and token_ids:
            return max(1, sum(len(ids) for ids in token_ids if isinstance(ids, list)))
        prompts = params.get("prompts")
        n_prompts = len(prompts) if isinstance(prompts, list) else 1
        return max(1, n_prompts * _int(params.get("max_tokens"), 32))
    if kind == "geometry_lens":
        rows = params.get("rows")
        return max(1, len(rows) if isinstance(rows, list) else 1)
    if kind == "sae":
        return _int(params.get("n_tokens"), 100_000)
    if kind == "sae_train":
        return _int(params.get("training_tokens"), 150_000)
    if kind == "anatomy":
        return _int(params.get("max_tokens"), 32) * max(1, _int(params.get("ig_steps"), 1))
    if kind == "scan":
        tokens = _int(params.get("max_tokens"), 32)
        return tokens * (2 if params.get("mode") not in (None, "single") else 1)
    return 1


def size_bucket(size: int) -> int:
    return round(math.log2(max(int(size), 1)))


@dataclass(frozen=True)
class Estimate:
    duration_s: float
    basis: str


@dataclass
class EstimateTable:
    """Past durations by (kind, size bucket), newest first."""

    durations: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    @classmethod
    def from_history(cls, history: Iterable[tuple[str, Mapping[str, Any], float]]) -> EstimateTable:
        """``history``: (kind, params, duration_s) of succeeded runs, newest first."""
        table: dict[tuple[str, int], list[float]] = defaultdict(list)
        for kind, params, duration in history:
            key = (kind, size_bucket(run_size(kind, params)))
            if len(table[key]) < PER_BUCKET and duration >= 0:
                table[key].append(float(duration))
        return cls(dict(table))

    @classmethod
    def load(cls, session: Session) -> EstimateTable:
        from models.run import Run, RunAttempt, RunStatus

        rows = session.execute(
            select(Run.kind, Run.params, RunAttempt.started_at, RunAttempt.finished_at)
            .join(RunAttempt, RunAttempt.run_id == Run.id)
            .where(Run.status == RunStatus.succeeded.value, RunAttempt.outcome == "succeeded",
                   RunAttempt.finished_at.is_not(None))
            .order_by(RunAttempt.finished_at.desc())
            .limit(RECENT_RUNS)
        ).all()
        return cls.from_history(
            (row.kind, row.params or {}, (row.finished_at - row.started_at).total_seconds()) for row in rows
        )

    def estimate(self, kind: str, params: Mapping[str, Any]) -> Estimate:
        past = self.durations.get((kind, size_bucket(run_size(kind, params))), [])
        if past:
            runs = "run" if len(past) == 1 else "runs"
            return Estimate(statistics.median(past),
                            f"median of {len(past)} past {kind} {runs} of this size")
        default = DEFAULT_DURATION_S.get(kind, FALLBACK_DURATION_S)
        return Estimate(default, f"no past {kind} run of this size yet; a default of {default:.0f} s")
