"""Co-firing between latents: exact Jaccard and co-activation, kept as top-E edges per latent.

State (independent of the number of tokens): two dense (d, d) matrices whose upper
triangle (i <= j) is used, ``count[i, j]`` = tokens where latents i and j both fire
(int32: exact below 2**31 tokens) and ``product[i, j]`` = sum over tokens of
``a_i * a_j`` (float32 sums: relative error about ``tokens * 2**-24`` at worst, far
less in practice). Memory ``8 d**2`` bytes: 2 GiB for 16,384 latents, which is why
``MAX_COFIRE_LATENTS`` bounds ``d`` (a larger SAE gets no co-firing edges, said in the
summary). Each batch adds, token by token, every pair of the token's active latents
(a numba kernel that releases the GIL: work ``tokens x L0**2 / 2``, never ``d**2``).

Definitions (on the harvested tokens):

* Jaccard ``J_ij = c_ij / (n_i + n_j - c_ij)`` with ``n_i`` = tokens where i fires;
* co-activation ``A_ij = p_ij / sqrt(p_ii p_jj)``: the cosine of the two latents'
  activation vectors over all tokens (uncentred).

``edges`` keeps, per latent, the ``E`` other latents with the largest value (ties: the
smaller index), only those with a positive value; padding -1 / NaN.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from latent_atlas.analyses.sae.reducers import SparseBatch

__all__ = ["MAX_COFIRE_LATENTS", "CoFiring", "top_edges"]

MAX_COFIRE_LATENTS = 24_576  # 4.5 GiB of state: gpt2-small-res-jb's width


def top_edges(score: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of ``score`` (row r is latent ``rows[r]``; itself excluded).

    Only positive finite scores are edges; order: value descending, then column ascending.
    Returns (len(rows), k) int32 indices (-1 padding) and float32 values (NaN padding).
    """
    n, d = score.shape
    score = np.where(np.isfinite(score) & (score > 0), score, -np.inf)
    score[np.arange(n), rows] = -np.inf
    k_eff = min(k, d)
    if k_eff < d:
        part = np.argpartition(-score, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.tile(np.arange(d), (n, 1))
    vals = np.take_along_axis(score, part, axis=1)
    # exact ordering inside the candidates; a tie at the k-th value is resolved by index below
    order = np.lexsort([part, -vals], axis=1)
    part, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    if k_eff < d:  # argpartition may pick any of tied values at the boundary: fix those rows
        kth = vals[:, -1]
        ties = np.flatnonzero(np.isfinite(kth) & ((score == kth[:, None]).sum(axis=1) > (vals == kth[:, None]).sum(axis=1)))
        for r in ties:
            cols = np.lexsort([np.arange(d), -score[r]])[:k_eff]
            part[r], vals[r] = cols, score[r, cols]
    idx = np.full((n, k), -1, np.int32)
    val = np.full((n, k), np.nan, np.float32)
    good = np.isfinite(vals)
    idx[:, :k_eff] = np.where(good, part, -1)
    val[:, :k_eff] = np.where(good, vals, np.nan)
    return idx, val


@cache
def _kernel() -> Any:
    """The compiled pair kernel (numba is imported on first use: the web process never needs it)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def accumulate(starts, latents, values, count, product):  # pragma: no cover - compiled
        """For each token (entries ``starts[r]:starts[r+1]``, latents ascending): every pair i <= j."""
        for r in range(starts.size - 1):
            lo, hi = starts[r], starts[r + 1]
            for p in range(lo, hi):
                i = latents[p]
                vi = values[p]
                for q in range(p, hi):
                    j = latents[q]
                    count[i, j] += 1
                    product[i, j] += vi * values[q]

    return accumulate


class CoFiring:
    """Exact pairwise co-firing counts and activation products; see the module docstring."""

    def __init__(self, d_sae: int) -> None:
        if d_sae > MAX_COFIRE_LATENTS:
            raise ValueError(f"co-firing needs 8 d**2 bytes; {d_sae:,} latents exceed the "
                             f"limit of {MAX_COFIRE_LATENTS:,}")
        self.d_sae = d_sae
        self.count = np.zeros((d_sae, d_sae), np.int32)
        self.product = np.zeros((d_sae, d_sae), np.float32)

    def update(self, batch: SparseBatch) -> None:
        if batch.value.size == 0:
            return
        key = batch.token * self.d_sae + batch.latent
        order = None if bool((key[1:] > key[:-1]).all()) else np.argsort(key, kind="stable")
        token = batch.token if order is None else batch.token[order]
        latent = batch.latent if order is None else batch.latent[order]
        value = batch.value if order is None else batch.value[order]
        starts = np.flatnonzero(np.r_[True, token[1:] != token[:-1], True]).astype(np.int64)
        _kernel()(starts, latent.astype(np.int64), value.astype(np.float32), self.count, self.product)

    def merge(self, other: CoFiring) -> CoFiring:
        if other.d_sae != self.d_sae:
            raise ValueError("CoFiring.merge: different configurations")
        out = CoFiring.__new__(CoFiring)
        out.d_sae = self.d_sae
        out.count = self.count + other.count
        out.product = self.product + other.product
        return out

    @staticmethod
    def _rows(upper: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows of the symmetric matrix whose upper triangle ``upper`` holds (float64)."""
        full = upper[rows].astype(np.float64) + upper[:, rows].T.astype(np.float64)
        full[np.arange(rows.size), rows] = upper[rows, rows]
        return full

    def symmetric(self) -> tuple[np.ndarray, np.ndarray]:
        """(count, product) as full symmetric matrices (for tests and small SAEs)."""
        rows = np.arange(self.d_sae)
        return self._rows(self.count, rows), self._rows(self.product, rows)

    def edges(self, k: int, block: int = 1024) -> dict[str, np.ndarray]:
        """``edge_jaccard_idx/val`` and ``edge_coact_idx/val`` (d, k), computed by row blocks."""
        d = self.d_sae
        # upper (i <= j; lower triangle is zero) -> symmetric rows: upper[rows] + upper[:, rows].T - diagonal
        fires = np.diagonal(self.count).astype(np.float64)
        energy = np.diagonal(self.product).astype(np.float64)
        norm = np.sqrt(np.maximum(energy, 0.0))
        out = {name: np.full((d, k), -1, np.int32) if name.endswith("idx") else np.full((d, k), np.nan, np.float32)
               for name in ("edge_jaccard_idx", "edge_jaccard_val", "edge_coact_idx", "edge_coact_val")}
        for start in range(0, d, block):
            rows = np.arange(start, min(start + block, d))
            c = self._rows(self.count, rows)
            p = self._rows(self.product, rows)
            union = fires[rows, None] + fires[None, :] - c
            with np.errstate(divide="ignore", invalid="ignore"):
                jac = np.where(c > 0, c / union, 0.0)
                coact = p / (norm[rows, None] * norm[None, :])
            coact = np.where(p > 0, coact, 0.0)
            out["edge_jaccard_idx"][rows], out["edge_jaccard_val"][rows] = top_edges(jac, k, rows)
            out["edge_coact_idx"][rows], out["edge_coact_val"][rows] = top_edges(coact, k, rows)
        return out
