"""The static export of a geometry run: one HTML file per view plus an index, zipped in memory."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from webapp.views.geometry.page import export_figures

__all__ = ["bundle_subtitle", "html_bundle_zip"]


def html_bundle_zip(run_id: str, summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """The static export of a run (one HTML file per view + index) as a zip, in memory."""
    import tempfile
    from pathlib import Path

    from webapp.render import write_bundle

    with tempfile.TemporaryDirectory() as tmp:
        files = write_bundle(export_figures(arrays, summary), Path(tmp), title=f"Latent Atlas run {run_id}",
                             subtitle=bundle_subtitle(run_id, summary), png=False)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"latent-atlas-{run_id}/{path.name}")
        return buffer.getvalue()


def bundle_subtitle(run_id: str, summary: Mapping[str, Any]) -> str:
    return (f"run {run_id} · model {summary.get('model', '?')} · {summary.get('n_prompts', '?')} prompts · "
            f"{int(summary.get('n_points') or 0):,} points · {str(summary.get('reduction', 'pca')).upper()} "
            f"{summary.get('dims', '?')}D")

