"""The cluster point cloud: tokens reconstructed from a few picked SAE latents, projected by PCA.

Every token where a picked latent fired gets the vector ``x_t = sum_j a_tj * r_j``
over the picked latents ``j`` (``a_tj`` its activation from the CSC arrays
``lat_ptr`` / ``lat_token`` / ``lat_value``, ``r_j`` its decoder row exactly as
``decoder_rows(sae)`` gives it; the decoder bias is a constant shift and does
not change a PCA). The cloud is then projected by PCA to 2 or 3 dimensions.

How it stays incremental (no recomputation of all tokens on an update):

* the reconstruction is kept in the coordinates of the picked rows: a
  coefficient matrix ``A`` (token slot x column slot, float64) with
  ``x_t = A[t] @ R``; adding latent ``j`` writes its own ``m_j`` activations into a
  free column, removing it zeroes exactly those entries, so an update costs
  ``O(m_j * k)`` (``k`` picked latents), never ``O(tokens)``;
* running sums for the covariance, ``n`` (tokens in the cloud), ``S1 = sum_t A[t]``
  and ``S2 = sum_t A[t]^T A[t]``, are updated by the same delta: adding a column
  adds its row/column of ``S2`` (the products with the other columns on the
  latent's own tokens); removing one just forgets them. Tokens whose last picked
  latent goes away leave the cloud (their rows are all zero then, so the sums
  need no change beyond ``n``);
* the PCA refit is ``k x k``: with ``R^T = Q U`` (thin QR), the covariance of the
  reconstructions is ``Q (U M U^T) Q^T`` where ``M = S2/n - mu mu^T``, so its
  eigenvectors come from the ``k x k`` matrix ``U M U^T``; projecting the cloud is
  then ``(A - mu) @ U^T @ V`` (``O(tokens * k)``, the figure needs those
  coordinates anyway).

Invariants (tested in ``tests/unit/sae/test_cloud.py``): after any sequence of
``add`` / ``remove`` calls, ``reconstruction()`` equals ``full_reconstruction``
of the picked set and ``project()`` equals a PCA of it (up to the sign of each
axis, which is fixed so the largest loading is positive); explained variance
ratios are of the cloud's total variance. Pure numpy, no I/O: decoder rows and
the latents' sparse activations are handed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CloudProjection", "ClusterCloud", "full_reconstruction", "latent_slice"]

RowSource = Callable[[int], np.ndarray]  # latent id -> its decoder row (d_in,)
ActivationSource = Callable[[int], tuple[np.ndarray, np.ndarray]]  # latent -> (tokens, values)


def latent_slice(lat_ptr: np.ndarray, lat_token: np.ndarray, lat_value: np.ndarray,
                 latent: int) -> tuple[np.ndarray, np.ndarray]:
    """(token indices, activations) of one latent from the latent-major CSC arrays."""
    start, stop = int(lat_ptr[latent]), int(lat_ptr[latent + 1])
    return np.asarray(lat_token[start:stop]), np.asarray(lat_value[start:stop])


def full_reconstruction(picked: Sequence[int], activations: ActivationSource,
                        rows: RowSource) -> tuple[np.ndarray, np.ndarray]:
    """(sorted token indices, reconstructions (n, d_in) float64) of ``picked``, from scratch.

    The reference the incremental cloud is tested against.
    """
    pieces = [(activations(j), np.asarray(rows(j), dtype=np.float64)) for j in picked]
    if not pieces:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    tokens = np.unique(np.concatenate([np.asarray(t, dtype=np.int64) for (t, _), _ in pieces]))
    out = np.zeros((len(tokens), pieces[0][1].shape[0]))
    for (t, v), row in pieces:
        where = np.searchsorted(tokens, np.asarray(t, dtype=np.int64))
        out[where] += np.asarray(v, dtype=np.float64)[:, None] * row[None, :]
    return tokens, out


@dataclass(frozen=True)
class CloudProjection:
    """A PCA of the cloud: one row of ``coords`` per token of ``tokens`` (same order)."""

    tokens: np.ndarray  # (n,) int64 global token indices
    coords: np.ndarray  # (n, dims) float32; zero columns beyond the cloud's rank
    explained: np.ndarray  # (dims,) explained variance ratio per axis
    dominant: np.ndarray  # (n,) int64 picked latent with the largest activation at each token


class ClusterCloud:
    """The incremental cloud of one picked set of latents (see the module docstring).

    ``activations(j)`` gives latent ``j``'s (ascending token indices, values),
    ``rows(j)`` its decoder row; ``n_tokens`` is the number of harvested tokens
    (global token indices are below it). Not thread-safe: callers lock.
    """

    def __init__(self, n_tokens: int, d_in: int, activations: ActivationSource,
                 rows: RowSource) -> None:
        self.n_tokens, self.d_in = int(n_tokens), int(d_in)
        self._activations, self._rows = activations, rows
        self._slot_of_token = np.full(self.n_tokens, -1, dtype=np.int64)
        self._token_of_slot = np.zeros(0, dtype=np.int64)
        self._count = np.zeros(0, dtype=np.int32)  # picked latents firing at a slot; 0 = free
        self._free_slots: list[int] = []
        self._coef = np.zeros((0, 0))  # (token slots, column slots)
        self._R = np.zeros((0, self.d_in))  # decoder row per column slot
        self._column_of: dict[int, int] = {}  # latent -> column slot
        self._free_columns: list[int] = []
        self._S1 = np.zeros(0)
        self._S2 = np.zeros((0, 0))
        self.n = 0  # tokens in the cloud

    # ----------------------------------------------------------------- state

    @property
    def picked(self) -> list[int]:
        """The picked latents, in the order they were added."""
        return list(self._column_of)

    def __contains__(self, latent: int) -> bool:
        return int(latent) in self._column_of

    def _grow_columns(self) -> int:
        if self._free_columns:
            return self._free_columns.pop()
        old = self._coef.shape[1]
        new = max(4, 2 * old)
        coef = np.zeros((self._coef.shape[0], new))
        coef[:, :old] = self._coef
        self._coef = coef
        R = np.zeros((new, self.d_in))
        R[:old] = self._R
        self._R = R
        S1 = np.zeros(new)
        S1[:old] = self._S1
        S2 = np.zeros((new, new))
        S2[:old, :old] = self._S2
        self._S1, self._S2 = S1, S2
        self._free_columns.extend(range(new - 1, old, -1))
        return old

    def _slots_for(self, tokens: np.ndarray) -> np.ndarray:
        """Slots of ``tokens``, giving new ones (zero rows) to tokens not yet in the cloud."""
        slots = self._slot_of_token[tokens]
        new = tokens[slots < 0]
        if len(new):
            reuse = min(len(new), len(self._free_slots))
            fresh = len(new) - reuse
            given = [self._free_slots.pop() for _ in range(reuse)]
            if fresh:
                start = self._coef.shape[0]
                capacity = max(start + fresh, 2 * start, 1024)
                coef = np.zeros((capacity, self._coef.shape[1]))
                coef[:start] = self._coef
                self._coef = coef
                token_of_slot = np.full(capacity, -1, dtype=np.int64)
                token_of_slot[:start] = self._token_of_slot
                self._token_of_slot = token_of_slot
                count = np.zeros(capacity, dtype=np.int32)
                count[:start] = self._count
                self._count = count
                self._free_slots.extend(range(capacity - 1, start + fresh - 1, -1))
                given.extend(range(start, start + fresh))
            given_arr = np.asarray(given, dtype=np.int64)
            self._slot_of_token[new] = given_arr
            self._token_of_slot[given_arr] = new
            slots = self._slot_of_token[tokens]
        return slots

    # ----------------------------------------------------------------- updates

    def add(self, latent: int) -> int:
        """Add ``latent`` (a no-op if picked); returns how many of its tokens it touched."""
        latent = int(latent)
        if latent in self._column_of:
            return 0
        tokens, values = self._activations(latent)
        tokens = np.asarray(tokens, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.n_tokens):
            raise IndexError(f"latent {latent}: token index out of range 0..{self.n_tokens - 1}")
        row = np.asarray(self._rows(latent), dtype=np.float64).reshape(-1)
        if row.shape[0] != self.d_in:
            raise ValueError(f"latent {latent}: decoder row has {row.shape[0]} values, expected {self.d_in}")
        column = self._grow_columns()
        slots = self._slots_for(tokens)
        self.n += int(np.count_nonzero(self._count[slots] == 0))
        self._count[slots] += 1
        active = np.fromiter(self._column_of.values(), dtype=np.int64, count=len(self._column_of))
        cross = values @ self._coef[np.ix_(slots, active)] if active.size else np.zeros(0)
        self._coef[slots, column] = values
        self._R[column] = row
        self._S1[column] = values.sum()
        self._S2[column, column] = values @ values
        self._S2[column, active] = cross
        self._S2[active, column] = cross
        self._column_of[latent] = column
        return int(tokens.size)

    def remove(self, latent: int) -> int:
        """Remove ``latent`` (a no-op if not picked); returns how many of its tokens it touched."""
        latent = int(latent)
        column = self._column_of.pop(latent, None)
        if column is None:
            return 0
        tokens, _ = self._activations(latent)
        tokens = np.asarray(tokens, dtype=np.int64)
        slots = self._slot_of_token[tokens]
        self._coef[slots, column] = 0.0
        self._count[slots] -= 1
        gone = slots[self._count[slots] == 0]
        self.n -= int(gone.size)
        self._slot_of_token[self._token_of_slot[gone]] = -1
        self._token_of_slot[gone] = -1
        self._free_slots.extend(gone.tolist())
        self._R[column] = 0.0
        self._S1[column] = 0.0
        self._S2[column, :] = 0.0
        self._S2[:, column] = 0.0
        self._free_columns.append(column)
        return int(tokens.size)

    def set_picked(self, latents: Sequence[int]) -> tuple[list[int], list[int]]:
        """Add and remove latents so the picked set is ``latents``; returns (added, removed)."""
        wanted = [int(j) for j in dict.fromkeys(latents)]
        removed = [j for j in self.picked if j not in set(wanted)]
        for j in removed:
            self.remove(j)
        added = [j for j in wanted if j not in self._column_of]
        for j in added:
            self.add(j)
        return added, removed

    # ----------------------------------------------------------------- reading

    def _occupied(self) -> np.ndarray:
        return np.flatnonzero(self._count > 0)

    def reconstruction(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted token indices, reconstructions (n, d_in)) of the cloud, from its current state."""
        slots = self._occupied()
        order = np.argsort(self._token_of_slot[slots], kind="stable")
        slots = slots[order]
        columns = np.fromiter(self._column_of.values(), dtype=np.int64, count=len(self._column_of))
        return self._token_of_slot[slots], self._coef[np.ix_(slots, columns)] @ self._R[columns]

    def covariance_sums(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, S1, S2) over the picked columns in ``picked`` order (the running sums)."""
        columns = np.fromiter(self._column_of.values(), dtype=np.int64, count=len(self._column_of))
        return self.n, self._S1[columns].copy(), self._S2[np.ix_(columns, columns)].copy()

    def project(self, dims: int = 2) -> CloudProjection:
        """PCA of the cloud to ``dims`` (2 or 3) axes, tokens sorted ascending."""
        if dims not in (2, 3):
            raise ValueError("dims must be 2 or 3")
        slots = self._occupied()
        slots = slots[np.argsort(self._token_of_slot[slots], kind="stable")]
        tokens = self._token_of_slot[slots]
        latents = np.fromiter(self._column_of.keys(), dtype=np.int64, count=len(self._column_of))
        columns = np.fromiter(self._column_of.values(), dtype=np.int64, count=len(self._column_of))
        coords = np.zeros((len(slots), dims), dtype=np.float32)
        explained = np.zeros(dims)
        if not len(slots) or not len(columns):
            return CloudProjection(tokens, coords, explained, np.zeros(len(slots), dtype=np.int64))
        coef = self._coef[np.ix_(slots, columns)]
        dominant = latents[np.argmax(np.abs(coef), axis=1)]
        n = float(self.n)
        mu = self._S1[columns] / n
        M = self._S2[np.ix_(columns, columns)] / n - np.outer(mu, mu)
        _, U = np.linalg.qr(self._R[columns].T)  # R^T = Q U
        C = U @ M @ U.T
        C = (C + C.T) / 2
        values, vectors = np.linalg.eigh(C)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
        total = values.sum()
        keep = min(dims, len(values))
        basis = U.T @ vectors[:, :keep]  # coefficient space -> principal axes
        # Each axis' sign: its largest loading (in the orthonormal Q basis) positive.
        flip = np.sign(vectors[np.argmax(np.abs(vectors[:, :keep]), axis=0), np.arange(keep)])
        flip[flip == 0] = 1.0
        coords[:, :keep] = ((coef - mu) @ basis) * flip
        if total > 0:
            explained[:keep] = values[:keep] / total
        return CloudProjection(tokens, coords, explained, dominant)
