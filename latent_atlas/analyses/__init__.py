"""The registry of run kinds.

Each kind names its pydantic ``Params`` model, its pure ``run`` function and the
queue it runs on. The web process uses ``Params`` only (validation before
queueing); workers call ``run``. Kinds arrive issue by issue; the registry is
the one place that lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from latent_atlas.analyses.base import (
    Cancelled,
    Checkpoint,
    MemoryCheckpoint,
    Progress,
    Result,
    no_progress,
)

__all__ = ["AnalysisKind", "Cancelled", "Checkpoint", "KINDS", "MemoryCheckpoint", "Progress", "Result",
           "get_kind", "no_progress"]


@dataclass(frozen=True)
class AnalysisKind:
    name: str
    title: str
    params: type[BaseModel]
    run: Callable[[Any, Any, Progress], Result]
    queue: str = "gpu"  # "gpu": needs a model; "cpu": post-processing only
    # False: ``run(params, runs, progress)`` gets stored runs (``runs.load(run_id, names)``), no model
    needs_model: bool = True
    # True (with a model): ``run(params, lm, progress, runs=...)`` also reads stored runs
    reads_runs: bool = False
    # True: ``run(..., checkpoint=...)`` saves finished pieces and a retry skips them (base.Checkpoint)
    resumable: bool = False


def _registry() -> dict[str, AnalysisKind]:
    from latent_atlas.analyses import anatomy, geometry, grid, scan
    from latent_atlas.analyses.geometry import lens as geometry_lens
    from latent_atlas.analyses.geometry import reproject as geometry_reproject
    from latent_atlas.analyses.sae import params as sae_params
    from latent_atlas.analyses.sae import run as sae_run
    from latent_atlas.analyses.sae import train as sae_train
    from latent_atlas.analyses.sae import train_params as sae_train_params

    return {
        "geometry": AnalysisKind(
            name="geometry",
            title="Latent-space geometry",
            params=geometry.GeometryParams,
            run=geometry.run_geometry,
        ),
        "geometry_reproject": AnalysisKind(
            name="geometry_reproject",
            title="Geometry: re-projection of a run's stored states",
            params=geometry_reproject.ReprojectParams,
            run=geometry_reproject.run_reproject,
            queue="cpu",
            needs_model=False,
        ),
        "geometry_lens": AnalysisKind(
            name="geometry_lens",
            title="Geometry: logit lens of chosen points of a run",
            params=geometry_lens.LensParams,
            run=geometry_lens.run_lens,
            queue="gpu",
            reads_runs=True,
        ),
        "grid": AnalysisKind(
            name="grid",
            title="Token map of a layer (grid)",
            params=grid.GridParams,
            run=grid.run_grid,
            queue="gpu",
            resumable=True,
        ),
        "sae": AnalysisKind(
            name="sae",
            title="SAE latents: harvest, decoder geometry, feature manifolds",
            params=sae_params.SaeParams,
            run=sae_run.run_sae,
            queue="gpu",
            reads_runs=True,  # an SAE trained by a sae_train run is read through the stored runs
        ),
        "sae_train": AnalysisKind(
            name="sae_train",
            title="Train a demo SAE (TopK / BatchTopK, sae-lens) on one layer's residual stream",
            params=sae_train_params.SaeTrainParams,
            run=sae_train.run_sae_train,
            queue="gpu",
        ),
        "anatomy": AnalysisKind(
            name="anatomy",
            title="Model anatomy: summary, activations, attention, embeddings, saliency, logit lens",
            params=anatomy.AnatomyParams,
            run=anatomy.run_anatomy,
            queue="gpu",
        ),
        "scan": AnalysisKind(
            name="scan",
            title="Layer-time scan (one prompt, or A/B diff)",
            params=scan.ScanParams,
            run=scan.run_scan,
            queue="gpu",
            reads_runs=True,  # a basis run ("project into the space of run X")
        ),
    }


KINDS: dict[str, AnalysisKind] = _registry()


def get_kind(name: str) -> AnalysisKind:
    """The kind called ``name``; ``KeyError`` with the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown run kind {name!r} (known: {', '.join(sorted(KINDS))})") from None
