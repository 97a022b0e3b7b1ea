"""The logit lens of chosen points of a finished geometry run, on demand (run kind ``geometry_lens``).

A geometry run computes the lens in the worker for at most ``lens_max_points``
points (fewer on a CPU); any other point of a run that stored its states is
decoded by this small child run: the stored states of the chosen rows are read
(those rows only), then final norm + unembedding, top ``LENS_K``.

Invariants: the model is the source run's own (checked); at most
``MAX_LENS_ROWS`` rows per run; the arrays are ``rows`` (the point rows, in the
order given), ``lens_ids`` (rows, k; int32) and ``lens_probs`` (rows, k;
float16), as in the geometry run; ``summary["tokens"]`` maps ids to strings.
The states are the stored (float16 by default) ones, so a probability can
differ from the run's own lens in the third decimal.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.geometry import LENS_K
from latent_atlas.analyses.geometry.reproject import RUN_ID_PATTERN
from latent_atlas.analyses.validation import CatalogueModel
from latent_atlas.lm import LanguageModel
from latent_atlas.lm.lens import logit_lens

__all__ = ["MAX_LENS_ROWS", "LensParams", "run_lens"]

MAX_LENS_ROWS = 2_000


class StoredRowsLike(Protocol):
    def rows(self, run_id: str, name: str, rows: np.ndarray) -> np.ndarray: ...

    def model(self, run_id: str) -> str: ...


class LensParams(BaseModel):
    """Decode ``rows`` of ``source_run``'s stored states through ``model`` (the source's model)."""

    model_config = ConfigDict(extra="forbid")

    source_run: str = Field(pattern=RUN_ID_PATTERN)
    model: CatalogueModel
    rows: list[int] = Field(min_length=1, max_length=MAX_LENS_ROWS)

    @field_validator("rows")
    @classmethod
    def _rows_ok(cls, value: list[int]) -> list[int]:
        if min(value) < 0:
            raise PydanticCustomError("negative_row", "rows: point rows are >= 0")
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate_row", "rows: each point at most once")
        return value


def run_lens(params: LensParams, lm: LanguageModel, progress: Progress = no_progress, *,
             runs: StoredRowsLike) -> Result:
    source_model = runs.model(params.source_run)
    if source_model != params.model:
        raise ValueError(f"run {params.source_run} used model {source_model!r}, not {params.model!r}")
    progress(0.1, f"reading {len(params.rows):,} stored states")
    states = runs.rows(params.source_run, "states", np.asarray(params.rows, dtype=np.int64))
    if states.ndim != 2 or states.shape[1] != lm.d_model:
        raise ValueError(f"run {params.source_run}'s states have shape {states.shape}; "
                         f"the model's width is {lm.d_model}")
    progress(0.5, "logit lens")
    top_ids, top_probs = logit_lens(lm, torch.from_numpy(states.astype(np.float32)), k=LENS_K)
    ids = top_ids.numpy().astype(np.int32)
    unique = np.unique(ids)
    tokens = lm.tokenizer.batch_decode([[int(t)] for t in unique])
    summary: dict[str, Any] = {
        "source_run": params.source_run,
        "k": int(ids.shape[1]),
        "points": len(params.rows),
        "method": "final norm + unembedding of the stored state, softmax over the vocabulary",
        "tokens": {str(int(t)): s for t, s in zip(unique, tokens, strict=True)},
    }
    return Result(arrays={"rows": np.asarray(params.rows, dtype=np.int64), "lens_ids": ids,
                          "lens_probs": top_probs.numpy().astype(np.float16)}, summary=summary)
