"""Stored runs as the input of a model-free run kind (``AnalysisKind.needs_model`` false).

``StoredRuns().load(run_id, names)`` returns a finished run's summary and the
named arrays it has (others are skipped); ``rows(run_id, name, rows)`` reads
only some rows of one array (e.g. a few stored states for the logit lens);
``model(run_id)`` is the catalogue model the run used; ``info(run_id)`` is
``{kind, status, model, summary}`` of any run (``None`` when there is none),
for checks that name what is wrong with an input. Invariant: only a
``succeeded`` run can be an input; anything else is a clear ``ValueError`` that
fails the child.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from latent_atlas.settings import get_settings
from models import Run, RunStatus, session_scope
from models.store import ArtifactStore


class StoredRuns:
    def _read(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        """(summary, params, artifact uris by name) of a succeeded run."""
        with session_scope() as session:
            run = session.scalar(select(Run).options(selectinload(Run.artifacts)).where(Run.id == run_id))
            if run is None:
                raise ValueError(f"run {run_id} does not exist")
            if run.status != RunStatus.succeeded.value:
                raise ValueError(f"run {run_id} is {run.status}; only a succeeded run can be an input")
            return dict(run.summary or {}), dict(run.params or {}), {a.name: a.uri for a in run.artifacts}

    def load(self, run_id: str, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        summary, _, uris = self._read(run_id)
        store = ArtifactStore()
        return summary, {name: store.read_array(uri) for name, uri in uris.items() if name in names}

    def rows(self, run_id: str, name: str, rows: np.ndarray) -> np.ndarray:
        _, _, uris = self._read(run_id)
        if name not in uris:
            raise ValueError(f"run {run_id} has no stored {name!r}")
        return ArtifactStore().read_rows(uris[name], rows)

    def info(self, run_id: str) -> dict[str, Any] | None:
        with session_scope() as session:
            run = session.get(Run, run_id)
            if run is None:
                return None
            return {"kind": run.kind, "status": run.status, "model": run.model,
                    "summary": dict(run.summary or {})}

    def model(self, run_id: str) -> str:
        return str(self._read(run_id)[1].get("model", ""))

    def sae_dir(self, run_id: str) -> Path:
        """The directory holding the SAE that ``sae_train`` run ``run_id`` saved (see the module docstring)."""
        from latent_atlas.analyses.sae.train import ARRAY_PREFIX, materialise_sae_dir

        summary, _, uris = self._read(run_id)
        if "sae_cfg" not in summary:
            raise ValueError(f"run {run_id} saved no SAE (only a sae_train run does)")
        store = ArtifactStore()
        return materialise_sae_dir(
            summary,
            lambda: {name: store.read_array(uri) for name, uri in uris.items() if name.startswith(ARRAY_PREFIX)},
            get_settings().data_dir / "cache" / "sae-runs" / run_id,
        )
