"""The SAE of a ``sae_train`` run as a sae-lens directory, for checks before queueing.

A harvest that names a trained run (``SaeSource(kind="run")``) is checked
against its model in the web process (``SaeParams`` reads ``ctx["sae_run_dir"]``):
the SAE's ``d_in`` must equal the model's hidden size and its hook must name a
layer the model has. Invariant: the directory is the one the worker uses
(``{data_dir}/cache/sae-runs/<run_id>``, same content), written once and
atomically (``materialise_sae_dir``); only a succeeded ``sae_train`` run has one,
anything else is a ``ValueError`` whose message the form and the API show.
"""

from __future__ import annotations

from pathlib import Path

from latent_atlas.analyses.sae.train import ARRAY_PREFIX, materialise_sae_dir
from latent_atlas.settings import get_settings

__all__ = ["sae_run_dir"]


def sae_run_dir(run_id: str) -> Path:
    """The directory holding the SAE that run ``run_id`` trained; ``ValueError`` when it has none."""
    from webapp import runs_service

    try:
        run = runs_service.get_run(run_id)
    except runs_service.RunNotFound:
        raise ValueError(f"there is no run {run_id}") from None
    if run.kind != "sae_train":
        raise ValueError(f"run {run_id} is a {run.kind} run; an SAE comes from a sae_train run")
    if run.status != "succeeded":
        raise ValueError(f"run {run_id} is {run.status}; its SAE exists once it has succeeded")
    names = [a.name for a in run.artifacts if a.name.startswith(ARRAY_PREFIX)]
    return materialise_sae_dir(
        dict(run.summary or {}),
        lambda: runs_service.load_arrays(run, names),
        get_settings().data_dir / "cache" / "sae-runs" / run.id,
    )
