"""Run kind ``geometry_reproject``: a new projection of a geometry run's stored states, no model.

A child run of a finished ``geometry`` run (its ``source_run``, also the Run's
parent): it reads the source's stored raw ``states`` and per-point metadata,
keeps the chosen components and layers, optionally averages (only states that
were not averaged already), and reduces them again (PCA or UMAP, 2D or 3D,
unit-normalised or not, with or without position 0 in the fit). It runs on the
``cpu`` queue and never loads a model. Invariants:

* ``run_reproject(params, runs, progress)`` gets a ``StoredRuns``-like object
  instead of a model: ``runs.load(run_id, names)`` returns the source run's
  ``(summary, arrays)``; in a notebook a dict-backed stand-in does;
* the result has the array and summary contract of a ``geometry`` run (see
  ``latent_atlas.analyses.geometry``) except ``states``, which stay with the
  source; the logit lens and the positional structure are carried over from
  the source for the points kept (the lens is dropped when averaging here);
* ``summary["source_run"]`` names the source, so views and further
  re-projections find the states.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.geometry import Component, Reduction
from latent_atlas.analyses.geometry.points import (
    META,
    Points,
    ReduceOptions,
    average,
    describe,
    subset,
)
from latent_atlas.analyses.validation import CatalogueModel
from latent_atlas.lm.hooks import COMPONENTS

__all__ = ["ReprojectParams", "StoredRunsLike", "run_reproject"]

SOURCE_ARRAYS = ("states", "norm", *META, "lens_ids", "lens_probs", "positional_coords",
                 "positional_position", "positional_count", "positional_explained")
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class StoredRunsLike(Protocol):
    def load(self, run_id: str, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The summary and the named arrays (those that exist) of a finished run."""
        ...


class ReprojectParams(BaseModel):
    """A re-projection of ``source_run``'s stored states."""

    model_config = ConfigDict(extra="forbid")

    source_run: str = Field(pattern=RUN_ID_PATTERN)
    model: CatalogueModel  # the source's model (for listings; never loaded)
    reduction: Reduction = "pca"
    dims: Literal[2, 3] = 3
    unit_normalise: bool = True  # the same defaults as a geometry run
    exclude_position0: bool = True
    components: list[Component] = Field(default_factory=lambda: list(COMPONENTS), min_length=1)
    layer_start: int = Field(0, ge=0, le=4096)
    layer_stop: int | None = Field(None, ge=1, le=4096)
    average: Literal["none", "samples", "positions"] = "none"  # "none": keep the source's points
    umap_neighbors: int = Field(15, ge=2, le=200)
    umap_min_dist: float = Field(0.1, ge=0.0, le=1.0)
    umap_fit_points: int = Field(20_000, ge=100, le=200_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("components")
    @classmethod
    def _components_ok(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate_component", "components: each component at most once")
        return [c for c in COMPONENTS if c in value]

    @model_validator(mode="after")
    def _range(self) -> ReprojectParams:
        if self.layer_stop is not None and self.layer_stop <= self.layer_start:
            raise PydanticCustomError(
                "empty_layer_range", "the layer range {start}..{stop} is empty (stop is exclusive)",
                {"start": self.layer_start, "stop": self.layer_stop})
        return self

    def reduce_options(self) -> ReduceOptions:
        return ReduceOptions(reduction=self.reduction, dims=self.dims, unit_normalise=self.unit_normalise,
                             exclude_position0=self.exclude_position0, seed=self.seed,
                             umap_neighbors=self.umap_neighbors, umap_min_dist=self.umap_min_dist,
                             umap_fit_points=self.umap_fit_points)


def run_reproject(params: ReprojectParams, runs: StoredRunsLike, progress: Progress = no_progress) -> Result:
    """Re-project the source run's states; see the module docstring."""
    progress(0.0, f"reading the states of run {params.source_run}")
    source_summary, source = runs.load(params.source_run, SOURCE_ARRAYS)
    if "states" not in source:
        raise ValueError(f"run {params.source_run} stored no states to re-project "
                         "(it ran with store_states off, or is not a geometry run)")
    n_layers = int(source_summary.get("n_layers") or int(source["layer"].max()) + 1)
    stop = n_layers if params.layer_stop is None else params.layer_stop
    if stop > n_layers or params.layer_start >= n_layers:
        raise ValueError(f"the layer range {params.layer_start}..{stop} does not fit the source's "
                         f"{n_layers} layers")
    points = Points(states=source["states"], norm=source["norm"], **{k: source[k] for k in META})
    wanted = [COMPONENTS.index(c) for c in params.components]
    keep = (np.isin(points.component, wanted) & (points.layer >= params.layer_start)
            & (points.layer < stop))
    if not keep.any():
        raise ValueError("none of the source's points are in the chosen layers and components")
    everything = bool(keep.all())
    if not everything:
        points = subset(points, keep)
    source_average = str(source_summary.get("average", "none"))
    if params.average != "none":
        if source_average != "none":
            raise ValueError(f"run {params.source_run} was already averaged ({source_average}); "
                             "re-project it without averaging")
        progress(0.05, f"averaging over {'prompts' if params.average == 'samples' else 'positions'}")
        points = average(points, params.average)
    arrays, described = describe(points, params.reduce_options(), n_layers,
                                 progress=lambda f, s: progress(0.1 + 0.85 * f, s))
    arrays.update(points.meta())
    arrays["norm"] = points.norm
    lens = dict(source_summary.get("lens") or {})
    if params.average == "none" and "lens_ids" in source:
        arrays["lens_ids"] = source["lens_ids"] if everything else source["lens_ids"][keep]
        arrays["lens_probs"] = source["lens_probs"] if everything else source["lens_probs"][keep]
        lens.update(points=len(points), computed=int((arrays["lens_ids"][:, 0] >= 0).sum()))
    else:
        lens.update(enabled=False, computed=0, points=len(points), tokens={},
                    note="not available for points averaged in a re-projection")
    for name in ("positional_coords", "positional_position", "positional_count", "positional_explained"):
        if name in source:
            arrays[name] = source[name]
    summary = {
        **{k: v for k, v in source_summary.items() if k not in ("separation", "umap")},
        **described,
        "source_run": params.source_run,
        "included_components": list(params.components),
        "layers": [params.layer_start, stop],
        "average": params.average if params.average != "none" else source_average,
        "lens": lens,
        "states": {"stored": False, "source_run": params.source_run},
    }
    return Result(arrays=arrays, summary=summary)
