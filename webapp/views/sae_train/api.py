"""``GET /api/runs/<id>/sae.zip``: the SAE a ``sae_train`` run saved, as a sae-lens directory in a ZIP.

Registered on the JSON API's blueprint by ``register(api)``. The ZIP holds
``cfg.json`` and ``sae_weights.safetensors`` (written by
``latent_atlas.analyses.sae.train.write_sae_dir`` from the stored arrays), so
``SAE.load_from_disk`` loads the unzipped folder. Answers: 200; 400 for a run
of another kind; 404 for an unknown run (the blueprint's handler); 409 for a
run that has not succeeded. Always JSON on error, never a 500 for what a
client sends.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from flask import Blueprint, Response, jsonify

from latent_atlas.analyses.sae.train import ARRAY_PREFIX, write_sae_dir
from webapp import runs_service

KIND = "sae_train"


def _error(status: int, message: str):
    return jsonify(error=message, messages=[message]), status


def sae_zip_bytes(summary: dict, arrays: dict) -> bytes:
    """The ZIP of the sae-lens directory of a run's summary and ``sae__*`` arrays."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="atlas-sae-zip-") as tmp:
        directory = write_sae_dir(summary, arrays, Path(tmp) / "sae")
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in ("cfg.json", "sae_weights.safetensors"):
                archive.write(directory / name, arcname=f"sae/{name}")
    return buffer.getvalue()


def sae_zip(run_id: str):
    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        return _error(400, f"run {run.id} is a {run.kind} run; only {KIND} runs save an SAE")
    if run.status != "succeeded":
        return _error(409, f"run {run.id} is {run.status}; its SAE exists once it has succeeded")
    names = [a.name for a in run.artifacts if a.name.startswith(ARRAY_PREFIX)]
    data = sae_zip_bytes(dict(run.summary or {}), runs_service.load_arrays(run, names))
    return Response(data, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="latent-atlas-{run.id}-sae.zip"'})


def register(api: Blueprint) -> None:
    """Add the route to the API blueprint (before the blueprint is registered on the app)."""
    api.add_url_rule("/runs/<run_id>/sae.zip", "sae_train_zip", sae_zip, methods=["GET"])


__all__ = ["register", "sae_zip", "sae_zip_bytes"]
