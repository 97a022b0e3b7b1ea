"""Stored runs as the input of a model-free run kind (``AnalysisKind.needs_model`` false).

``StoredRuns().load(run_id, names)`` returns a finished run's summary and the
named arrays it has (others are skipped). Invariant: only a ``succeeded`` run
can be an input; anything else is a clear ``ValueError`` that fails the child.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models import Run, RunStatus, session_scope
from models.store import ArtifactStore


class StoredRuns:
    def load(self, run_id: str, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with session_scope() as session:
            run = session.scalar(select(Run).options(selectinload(Run.artifacts)).where(Run.id == run_id))
            if run is None:
                raise ValueError(f"run {run_id} does not exist")
            if run.status != RunStatus.succeeded.value:
                raise ValueError(f"run {run_id} is {run.status}; only a succeeded run can be an input")
            summary = dict(run.summary or {})
            uris = {a.name: a.uri for a in run.artifacts if a.name in names}
        store = ArtifactStore()
        return summary, {name: store.read_array(uri) for name, uri in uris.items()}
