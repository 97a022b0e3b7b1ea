"""One projection for every frame of a scan: fitted once over all frames and both prompts.

``Basis`` is what a scan stores to make its axes reusable: the mean and the
three PCA components (float64) plus whether states are unit-normalised before
projection. Invariants:

* ``project`` is a pure function of a state and the basis, so a state projects
  to the same point in every frame, every prompt and every later run that
  reuses the basis ("project into the space of run X");
* order of operations per state: unit-normalise (if chosen; zero rows stay
  zero) -> subtract the mean -> multiply by the components;
* PCA is exact (``latent_atlas.reduce``); its fit set is every state of every
  frame and prompt, less position 0 when it is excluded;
* UMAP runs on the 50-component PCA of the states, is fitted on at most
  ``umap_fit_points`` of them (a seeded sample) and places the others with
  ``transform``; a UMAP embedding is not stored for reuse (it would need the
  fitted model pickled), so only PCA bases can be reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latent_atlas.reduce import PCAAccumulator

__all__ = ["Basis", "CHUNK", "UMAP_PCA_DIMS", "fit_pca", "fit_umap", "normalise"]

CHUNK = 16_384
UMAP_PCA_DIMS = 50


def normalise(rows: np.ndarray, unit: bool) -> np.ndarray:
    """float32 rows, divided by their L2 norm when ``unit`` (zero rows stay zero)."""
    out = np.asarray(rows, dtype=np.float32)
    if not unit:
        return out
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


@dataclass(frozen=True)
class Basis:
    """``project(x) = (normalise(x) - mean) @ components.T``."""

    mean: np.ndarray  # (d,) float64
    components: np.ndarray  # (k, d) float64, orthonormal rows
    unit_normalise: bool
    explained_variance_ratio: np.ndarray  # (k,); NaN for a reused basis whose ratios are unknown

    @property
    def d_model(self) -> int:
        return int(self.mean.shape[0])

    def project(self, states: np.ndarray) -> np.ndarray:
        """States (..., d) -> coordinates (..., k) float32, in chunks of ``CHUNK`` rows."""
        lead = states.shape[:-1]
        flat = states.reshape(-1, states.shape[-1])
        if flat.shape[1] != self.d_model:
            raise ValueError(f"states have width {flat.shape[1]}; the basis has {self.d_model}")
        mean = self.mean.astype(np.float32)
        basis = np.ascontiguousarray(self.components.T, dtype=np.float32)
        out = np.empty((flat.shape[0], self.components.shape[0]), dtype=np.float32)
        for start in range(0, flat.shape[0], CHUNK):
            out[start : start + CHUNK] = (normalise(flat[start : start + CHUNK], self.unit_normalise) - mean) @ basis
        return out.reshape(*lead, -1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"basis_mean": self.mean.astype(np.float64), "basis_components": self.components.astype(np.float64)}


def _fit_rows(states: np.ndarray, fit_mask: np.ndarray, unit: bool, n_components: int) -> Basis:
    """PCA of the rows of ``states`` (n, d) where ``fit_mask``; chunked float64 accumulation."""
    accumulator = PCAAccumulator()
    index = np.flatnonzero(fit_mask)
    if index.size < 2:
        raise ValueError("the projection needs at least 2 states to fit; use a longer prompt or keep position 0")
    for start in range(0, index.size, CHUNK):
        accumulator.update(normalise(states[index[start : start + CHUNK]], unit))
    fit = accumulator.finalize(min(n_components, states.shape[1]))
    return Basis(fit.mean, fit.components, unit, fit.explained_variance_ratio)


def fit_pca(states: np.ndarray, fit_mask: np.ndarray, unit: bool, dims: int = 3) -> Basis:
    """The PCA basis of the fit rows (``states`` (n, d), ``fit_mask`` (n,))."""
    return _fit_rows(states, fit_mask, unit, dims)


def fit_umap(states: np.ndarray, fit_mask: np.ndarray, unit: bool, *, neighbors: int, min_dist: float,
             fit_points: int, seed: int, progress: Callable[[float, str], None]) -> np.ndarray:
    """3-D UMAP coordinates (n, 3) of every row; see the module docstring for the fit set."""
    import umap  # lazy: slow to import

    pre = _fit_rows(states, fit_mask, unit, UMAP_PCA_DIMS)
    reduced = pre.project(states)
    fit_index = np.flatnonzero(fit_mask)
    if fit_index.size > fit_points:
        fit_index = np.sort(np.random.default_rng(seed).choice(fit_index, size=fit_points, replace=False))
    reducer = umap.UMAP(n_components=3, n_neighbors=max(2, min(neighbors, fit_index.size - 1)),
                        min_dist=min_dist, random_state=seed)
    progress(0.2, f"UMAP: fitting {fit_index.size:,} states")
    coords = np.empty((states.shape[0], 3), dtype=np.float32)
    coords[fit_index] = np.asarray(reducer.fit_transform(reduced[fit_index]), dtype=np.float32)
    rest = np.setdiff1d(np.arange(states.shape[0]), fit_index, assume_unique=True)
    for start in range(0, rest.size, CHUNK):
        progress(0.8, f"UMAP: placing {rest.size:,} more states")
        part = rest[start : start + CHUNK]
        coords[part] = np.asarray(reducer.transform(reduced[part]), dtype=np.float32)
    return coords
