"""Reuse of identical runs: the run key (params hash) and the lookup of an earlier result.

Invariants:

* The key hashes the *validated* params (``Params.model_dump(mode="json")``:
  defaults filled in, tuples as lists) as canonical JSON (sorted keys, no
  whitespace), together with the kind, the model's identity in the catalogue
  (source, GGUF file, revision, dtype: the same catalogue name pointing at
  other weights is another key) and a digest of every input that lives outside
  the params (a corpus file under ``{data_dir}/corpora``, read by content).
  Uploaded prompt sets and token ids are in the params themselves.
* A run whose inputs cannot be pinned (a Hugging Face hub corpus, streamed
  from a dataset that may change) gets a key but is never reused
  (``KeyedParams.reusable`` is False).
* Only a ``succeeded``, undeleted run of the same kind and key whose artifacts
  are all still in the store is reused; reuse writes nothing (no row, no file, no
  GPU time): the submitter is handed the existing run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from latent_atlas.settings import get_settings
from models import Run, RunStatus
from models.base import utcnow
from models.store import ArtifactStore

__all__ = ["KeyedParams", "ago", "canonical_hash", "find_reusable", "input_digests", "key_params", "model_identity"]


@dataclass(frozen=True)
class KeyedParams:
    params_hash: str
    reusable: bool


def canonical_hash(document: dict[str, Any]) -> str:
    """sha256 of ``document`` as canonical JSON (key order never matters)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def model_identity(model_name: str | None) -> dict[str, Any] | None:
    """What a catalogue name stands for (source, GGUF file, revision, dtype); None if unnamed."""
    if not model_name:
        return None
    models = get_settings().models
    entry = models.get(model_name)
    if entry is None:
        return {"name": model_name}
    return {"source": entry.source, "gguf_file": entry.gguf_file, "revision": entry.revision,
            "dtype": entry.dtype}


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_digests(params: dict[str, Any]) -> tuple[dict[str, str], bool]:
    """Digests of the inputs named by ``params`` but stored outside them; and whether they are pinned.

    Today that is a training corpus (``params["corpus"]``): a file or the demo
    corpus is hashed by content; a hub dataset cannot be pinned.
    """
    corpus = params.get("corpus")
    if not isinstance(corpus, dict):
        return {}, True
    kind = corpus.get("kind")
    if kind == "hub":
        return {}, False
    if kind in ("file", "demo"):
        from latent_atlas.analyses.sae.corpus_demo import DEMO_CORPUS_FILE

        name = DEMO_CORPUS_FILE if kind == "demo" else str(corpus.get("file"))
        return {"corpus": _file_digest(get_settings().data_dir / "corpora" / name)}, True
    return {}, True


def key_params(kind: str, params: dict[str, Any]) -> KeyedParams:
    """The run key of validated, dumped ``params`` of ``kind``."""
    inputs, pinned = input_digests(params)
    document = {"kind": kind, "params": params, "model": model_identity(params.get("model")),
                "inputs": inputs}
    return KeyedParams(canonical_hash(document), pinned)


def find_reusable(session: Session, kind: str, keyed: KeyedParams) -> Run | None:
    """The latest succeeded run of ``kind`` with this key whose artifacts all exist, or None."""
    if not keyed.reusable:
        return None
    candidates = session.scalars(
        select(Run)
        .options(selectinload(Run.artifacts))
        .where(Run.kind == kind, Run.params_hash == keyed.params_hash,
               Run.status == RunStatus.succeeded.value, Run.deleted_at.is_(None))
        .order_by(Run.finished_at.desc())
        .limit(5)
    )
    store = ArtifactStore()
    for run in candidates:
        if all(store.exists(a.uri) for a in run.artifacts):
            return run
    return None


def ago(then: datetime | None, now: datetime | None = None) -> str:
    """``then`` relative to ``now`` in words: "just now", "5 minutes ago", "2 days ago"."""
    if then is None:
        return "at an unknown time"
    seconds = max(0.0, ((now or utcnow()) - then).total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        count = int(seconds // size)
        if count >= 1:
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"
