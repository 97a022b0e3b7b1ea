"""Streaming reducers of SAE latent activations: memory independent of the corpus size.

Every reducer consumes ``SparseBatch`` es (the non-zero activations of a batch of
tokens, as (global token index, latent, value) triplets) with ``update`` and
combines with another reducer of the same configuration with ``merge``.
Invariants, tested against brute force on a small corpus:

* ``update`` over batches in any split equals one update over all of them, and
  ``merge(a, b)`` equals a reducer that saw a's and b's batches (a later issue
  shards harvests); token indices are *global*, so a shard harvests with its
  own token offset and shards never share a token index;
* the state's size depends on ``d_sae`` and the configuration only, never on
  the number of tokens seen;
* ties are broken deterministically (larger value first, then smaller token
  index), so results do not depend on the order batches arrive in.

Reducers here: ``TopK`` (per-latent top-k examples), ``Histogram`` (fixed
log-spaced bins shared by all latents), ``LatentStats`` (firing count, density,
max, mean over firing tokens). Interval samples are in ``intervals.py``,
co-firing edges in ``cofire.py``; ``HarvestReducers`` bundles all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HarvestReducers", "Histogram", "LatentStats", "SparseBatch", "TopK", "hist_edges", "select_per_group"]


@dataclass(frozen=True)
class SparseBatch:
    """Non-zero activations of ``n_tokens`` consecutive tokens starting at ``token_start``.

    ``token`` (nnz,) int64 global token indices in ``[token_start, token_start + n_tokens)``,
    ``latent`` (nnz,) int64, ``value`` (nnz,) float32 (> 0 for ReLU-style SAEs; any non-zero
    value counts as a firing). Entries may come in any order.
    """

    token: np.ndarray
    latent: np.ndarray
    value: np.ndarray
    token_start: int
    n_tokens: int
    encoded: int = -1  # tokens that went through the SAE (-1: all ``n_tokens``); density counts these

    @staticmethod
    def from_dense(acts: np.ndarray, token_start: int) -> SparseBatch:
        """The non-zero entries of a dense (n_tokens, d_sae) activation matrix."""
        rows, cols = np.nonzero(acts)
        return SparseBatch(rows.astype(np.int64) + token_start, cols.astype(np.int64),
                           acts[rows, cols].astype(np.float32), token_start, int(acts.shape[0]))


def select_per_group(group: np.ndarray, keys: list[np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``m`` entries of each group when sorted by ``keys`` (most significant first).

    Returns ``(index, rank)``: positions into the inputs, grouped by ascending group and
    ordered by the keys inside a group, and each one's 0-based rank in its group.
    """
    if group.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort([*reversed(keys), group])
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    lengths = np.diff(np.r_[starts, sorted_group.size])
    rank = np.arange(sorted_group.size) - np.repeat(starts, lengths)
    keep = rank < m
    return order[keep], rank[keep]


class TopK:
    """Per-latent top-``k`` activations: ``value`` (d, k) descending, ``token`` (d, k) global index.

    Empty slots hold ``-inf`` / ``-1`` internally; ``result`` writes NaN / -1.
    """

    def __init__(self, d_sae: int, k: int) -> None:
        self.d_sae, self.k = d_sae, k
        self.value = np.full((d_sae, k), -np.inf, np.float32)
        self.token = np.full((d_sae, k), -1, np.int64)

    def _insert(self, token: np.ndarray, latent: np.ndarray, value: np.ndarray) -> None:
        last_v, last_t = self.value[latent, -1], self.token[latent, -1]
        keep = (value > last_v) | ((value == last_v) & ((token < last_t) | (last_t < 0)))
        if not keep.any():
            return
        token, latent, value = token[keep], latent[keep], value[keep]
        rows = np.unique(latent)
        old_v, old_t = self.value[rows].ravel(), self.token[rows].ravel()
        old_l = np.repeat(rows, self.k)
        filled = old_t >= 0
        all_l = np.concatenate([old_l[filled], latent])
        all_v = np.concatenate([old_v[filled], value])
        all_t = np.concatenate([old_t[filled], token])
        index, rank = select_per_group(all_l, [-all_v.astype(np.float64), all_t], self.k)
        self.value[rows] = -np.inf
        self.token[rows] = -1
        self.value[all_l[index], rank] = all_v[index]
        self.token[all_l[index], rank] = all_t[index]

    def update(self, batch: SparseBatch) -> None:
        self._insert(batch.token, batch.latent, batch.value.astype(np.float32))

    def merge(self, other: TopK) -> TopK:
        if (other.d_sae, other.k) != (self.d_sae, self.k):
            raise ValueError("TopK.merge: different configurations")
        out = TopK(self.d_sae, self.k)
        out.value, out.token = self.value.copy(), self.token.copy()
        filled = other.token >= 0
        latent = np.nonzero(filled)[0].astype(np.int64)
        out._insert(other.token[filled], latent, other.value[filled])
        return out

    def result(self) -> dict[str, np.ndarray]:
        value = np.where(self.token >= 0, self.value, np.nan).astype(np.float32)
        return {"top_value": value, "top_token": self.token.copy()}


def hist_edges(bins: int, low: float = 1e-3, high: float = 1e4) -> np.ndarray:
    """The shared log-spaced histogram edges (bins + 1,) float32 from ``low`` to ``high``."""
    return np.geomspace(low, high, bins + 1).astype(np.float32)


class Histogram:
    """Per-latent counts of non-zero activations in fixed log-spaced bins shared by all latents.

    |value| below the first edge counts in the first bin, above the last edge in the last
    (the edges span 1e-3..1e4, wider than any SAE's activations we know of).
    """

    def __init__(self, d_sae: int, bins: int) -> None:
        self.d_sae, self.bins = d_sae, bins
        self.edges = hist_edges(bins)
        self.counts = np.zeros((d_sae, bins), np.int64)

    def update(self, batch: SparseBatch) -> None:
        if batch.value.size == 0:
            return
        which = np.searchsorted(self.edges, np.abs(batch.value), side="right") - 1
        which = np.clip(which, 0, self.bins - 1)
        flat = np.bincount(batch.latent * self.bins + which, minlength=self.d_sae * self.bins)
        self.counts += flat.reshape(self.d_sae, self.bins)

    def merge(self, other: Histogram) -> Histogram:
        if (other.d_sae, other.bins) != (self.d_sae, self.bins):
            raise ValueError("Histogram.merge: different configurations")
        out = Histogram(self.d_sae, self.bins)
        out.counts = self.counts + other.counts
        return out

    def result(self) -> dict[str, np.ndarray]:
        return {"hist_edges": self.edges.copy(), "hist_counts": self.counts.astype(np.int32)}


class LatentStats:
    """Firing count, density (fires / encoded tokens), max and mean over firing tokens."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.n_tokens = 0
        self.count = np.zeros(d_sae, np.int64)
        self.total = np.zeros(d_sae, np.float64)
        self.max = np.full(d_sae, -np.inf, np.float32)

    def update(self, batch: SparseBatch) -> None:
        self.n_tokens += int(batch.n_tokens if batch.encoded < 0 else batch.encoded)
        if batch.value.size == 0:
            return
        self.count += np.bincount(batch.latent, minlength=self.d_sae)
        self.total += np.bincount(batch.latent, weights=batch.value.astype(np.float64), minlength=self.d_sae)
        np.maximum.at(self.max, batch.latent, batch.value.astype(np.float32))

    def merge(self, other: LatentStats) -> LatentStats:
        if other.d_sae != self.d_sae:
            raise ValueError("LatentStats.merge: different configurations")
        out = LatentStats(self.d_sae)
        out.n_tokens = self.n_tokens + other.n_tokens
        out.count = self.count + other.count
        out.total = self.total + other.total
        out.max = np.maximum(self.max, other.max)
        return out

    def result(self) -> dict[str, np.ndarray]:
        fired = self.count > 0
        mean = np.divide(self.total, self.count, out=np.zeros(self.d_sae), where=fired)
        return {
            "fire_count": self.count.copy(),
            "density": (self.count / max(self.n_tokens, 1)).astype(np.float32),
            "max_act": np.where(fired, self.max, 0.0).astype(np.float32),
            "mean_act": mean.astype(np.float32),
        }


class HarvestReducers:
    """Every per-latent reducer of a harvest, fed the same batches; ``merge`` and ``result`` in one.

    ``cofire`` is False for SAEs wider than ``cofire.MAX_COFIRE_LATENTS`` (no edges then).

    With ``device`` (a torch device), top-k, histogram and stats run in torch on that
    device (``device_reducers.DeviceReducerSet``, fed by ``update_dense``), and so do
    co-firing and the interval samples unless the device is the CPU (there the numba
    pair kernel and the numpy ``Intervals`` are faster; ``mps`` keeps intervals on the
    host too: no float64; ``device_intervals`` overrides the choice, e.g. for tests);
    ``update`` then feeds only the host-side rest, if any (``needs_host_batch``).
    ``merge`` and ``result`` first bring the device state home (``finish_device``).
    """

    def __init__(self, d_sae: int, *, top_k: int, interval_bins: int, interval_per_bin: int,
                 hist_bins: int, seed: int = 0, cofire: bool = True, device: object = None,
                 device_intervals: bool | None = None) -> None:
        from latent_atlas.analyses.sae.cofire import CoFiring
        from latent_atlas.analyses.sae.intervals import Intervals

        self.d_sae = d_sae
        self.stats = LatentStats(d_sae)
        self.topk = TopK(d_sae, top_k)
        self.hist = Histogram(d_sae, hist_bins)
        self.intervals = Intervals(d_sae, interval_bins, interval_per_bin, seed)
        self.cofire = CoFiring(d_sae) if cofire else None
        self.on_device = None
        if device is not None:
            import torch

            from latent_atlas.analyses.sae.device_intervals import supports_device_intervals
            from latent_atlas.analyses.sae.device_reducers import DeviceReducerSet

            device = torch.device(device)  # type: ignore[call-overload]
            on_intervals = device.type != "cpu" if device_intervals is None else device_intervals
            on_intervals = on_intervals and supports_device_intervals(device)
            self.on_device = DeviceReducerSet(d_sae, top_k=top_k, hist_bins=hist_bins, device=device,
                                              cofire=cofire and device.type != "cpu",
                                              intervals=(interval_bins, interval_per_bin, seed) if on_intervals
                                              else None)
            if self.on_device.cofire is not None:
                self.cofire = None

    @property
    def needs_host_batch(self) -> bool:
        """Whether ``update`` has any host-side reducer to feed (False: the device set runs them all)."""
        part = self.on_device
        return part is None or part.intervals is None or self.cofire is not None

    def update(self, batch: SparseBatch) -> None:
        """Every host-side reducer (all of them unless a device set runs the rest)."""
        part = self.on_device
        if part is None:
            self.stats.update(batch)
            self.topk.update(batch)
            self.hist.update(batch)
        if part is None or part.intervals is None:
            self.intervals.update(batch)
        if self.cofire is not None:
            self.cofire.update(batch)

    def update_dense(self, feats: object, token: object, nonzero: tuple[object, object, object] | None = None) -> None:
        """The device-side reducers: ``feats`` (n, d) and ``token`` (n,) global indices, torch, on the device.

        ``nonzero``: the batch's non-zeros ``(latent, token, value)`` when the caller has them.
        """
        if self.on_device is None:
            raise ValueError("update_dense needs HarvestReducers(..., device=...)")
        if nonzero is None:
            self.on_device.update(feats, token)  # type: ignore[arg-type]
        else:
            self.on_device.update_nonzero(feats, token, *nonzero)  # type: ignore[arg-type]

    def finish_device(self) -> None:
        """Bring the device state to the host (idempotent); afterwards all reducers are numpy."""
        part = self.on_device
        if part is None:
            return
        self.stats, self.topk, self.hist = part.stats.to_numpy(), part.topk.to_numpy(), part.hist.to_numpy()
        if part.cofire is not None:
            self.cofire = part.cofire.to_numpy()
        if part.intervals is not None:
            self.intervals = part.intervals.to_numpy()
        self.on_device = None

    def merge(self, other: HarvestReducers) -> HarvestReducers:
        self.finish_device()
        other.finish_device()
        out = HarvestReducers.__new__(HarvestReducers)
        out.d_sae = self.d_sae
        out.on_device = None
        out.stats = self.stats.merge(other.stats)
        out.topk = self.topk.merge(other.topk)
        out.hist = self.hist.merge(other.hist)
        out.intervals = self.intervals.merge(other.intervals)
        if (self.cofire is None) != (other.cofire is None):
            raise ValueError("HarvestReducers.merge: one side has co-firing, the other not")
        out.cofire = None if self.cofire is None or other.cofire is None else self.cofire.merge(other.cofire)
        return out

    def result(self, edges_k: int) -> dict[str, np.ndarray]:
        """The contract's per-latent arrays (co-firing edges all padding when not computed)."""
        self.finish_device()
        arrays = {**self.stats.result(), **self.topk.result(), **self.hist.result(),
                  **self.intervals.result()}
        if self.cofire is not None:
            arrays.update(self.cofire.edges(edges_k))
        else:
            for name in ("jaccard", "coact"):
                arrays[f"edge_{name}_idx"] = np.full((self.d_sae, edges_k), -1, np.int32)
                arrays[f"edge_{name}_val"] = np.full((self.d_sae, edges_k), np.nan, np.float32)
        return arrays
