"""An anatomy run's data for the page: small arrays cached, large ones read a row at a time.

Invariants:

* ``ARRAYS`` names every array the page loads whole; the two large ones,
  ``attention`` (L*H, T, T) and ``rollout`` (L, T, T), are never loaded whole:
  ``head_pattern`` and ``rollout_layer`` read one row each with
  ``ArtifactStore.read_rows`` (T * T * 2 bytes: 512 KiB at 512 tokens);
* ``check_index`` and ``parse_query`` turn a layer or head from a URL or an
  input into an int in range, or a ``ValueError`` whose message names the
  valid range, so a bad value never reaches an array index;
* a finished run's data never changes, so ``load`` caches a few runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

import numpy as np

KIND = "anatomy"
LARGE = ("attention", "rollout")
ARRAYS = [
    "token_ids", "attention_thumbs", "resid_norm", "attn_norm", "mlp_norm", "neuron_ids", "neuron_values",
    "embed_ids", "embed_2d", "embed_3d", "neighbour_ids", "neighbour_cos", "saliency_grad_norm",
    "saliency_grad_input", "saliency_ig", "lens_ids", "lens_probs", "lens_final_prob", "lens_final_rank",
    "lens_entropy", "lens_kl",
]


@dataclass
class AnatomyData:
    run_id: str
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    uris: dict[str, str]
    store_url: str | None = None  # the artifact store (default: the portal's)

    @property
    def n_layers(self) -> int:
        return int(self.summary.get("n_layers") or self.arrays["resid_norm"].shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.summary.get("n_heads") or 1)

    @property
    def tokens(self) -> list[str]:
        return [str(t) for t in self.summary.get("tokens") or []]

    def vocab(self, token_id: int) -> str:
        return str((self.summary.get("vocab") or {}).get(str(int(token_id)), f"#{int(token_id)}"))


def check_index(name: str, value: Any, count: int) -> int:
    """``value`` as an int in ``0..count-1``; ``ValueError`` naming the range otherwise."""
    message = f"{name} must be a whole number from 0 to {count - 1}"
    if isinstance(value, bool) or value is None:
        raise ValueError(message)
    if isinstance(value, int):
        index = value
    else:
        try:
            index = int(str(value).strip())
        except ValueError:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(message) from None
            if not number.is_integer():
                raise ValueError(message) from None
            index = int(number)
    if not 0 <= index < count:
        raise ValueError(f"{name} {index} is out of range for this model (0..{count - 1})")
    return index


def parse_query(search: str | None, n_layers: int, n_heads: int) -> tuple[int | None, int | None, list[str]]:
    """(layer, head, errors) from a URL query such as ``?layer=3&head=2``; absent values are ``None``."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    errors: list[str] = []
    values: dict[str, int | None] = {"layer": None, "head": None}
    for name, count in (("layer", n_layers), ("head", n_heads)):
        if name in query:
            raw = query[name][0]
            try:
                values[name] = check_index(name, raw[:20], count)
            except ValueError as exc:
                errors.append(f"URL: {exc}")
    return values["layer"], values["head"], errors


def from_run(run: Any, arrays: Mapping[str, np.ndarray], store_url: str | None = None) -> AnatomyData:
    if run.kind != KIND:
        raise ValueError(f"run {run.id} is a {run.kind} run, not an anatomy run")
    missing = [n for n in ("token_ids", "resid_norm", "attention_thumbs") if n not in arrays]
    if missing:
        raise ValueError(f"run {run.id} has no {', '.join(missing)}")
    uris = {a.name: a.uri for a in run.artifacts if a.name in LARGE}
    return AnatomyData(run.id, dict(run.summary or {}), dict(arrays), uris, store_url)


@lru_cache(maxsize=4)
def load(run_id: str) -> AnatomyData:
    """The page data of a succeeded anatomy run (cached: results never change once stored)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.status != "succeeded":
        raise ValueError(f"run {run_id} is {run.status}; its views exist once it has succeeded")
    return from_run(run, runs_service.load_arrays(run, ARRAYS))


def _row(data: AnatomyData, name: str, row: int) -> np.ndarray:
    from models.store import ArtifactStore

    uri = data.uris.get(name)
    if uri is None:
        raise ValueError(f"run {data.run_id} has no stored {name}")
    return ArtifactStore(data.store_url).read_rows(uri, np.array([row]))[0].astype(np.float32)


def head_pattern(data: AnatomyData, layer: int, head: int) -> np.ndarray:
    """The (T, T) pattern of one (layer, query head), read alone from the stored tensor."""
    layer = check_index("layer", layer, data.n_layers)
    head = check_index("head", head, data.n_heads)
    return _row(data, "attention", layer * data.n_heads + head)


def rollout_layer(data: AnatomyData, layer: int) -> np.ndarray:
    """The (T, T) attention rollout through block ``layer``, read alone."""
    return _row(data, "rollout", check_index("layer", layer, data.n_layers))
