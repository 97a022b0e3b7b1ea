"""The harvest's per-batch reducers in torch, on the activations' device (GPU or CPU).

The numpy reducers (``reducers.py``, ``cofire.py``) stay the reference; each class here
keeps the same state as its numpy twin, updated from a *dense* batch of SAE
activations ``feats`` (n, d_sae) and the global token index of each row ``token``
(n,) int64, both on the device, and hands it back as that twin with ``to_numpy()``
(the only host transfer: ``d_sae x k`` or ``d_sae x bins`` numbers, never the tokens).
A zero in ``feats`` is "not firing", as in ``SparseBatch``.

Invariants (tested against the numpy reducers and brute force on CPU torch,
tests/unit/sae/test_device_reducers.py):

* ``DeviceTopK`` equals ``TopK`` exactly, ties included: each (value, token) becomes one
  int64 key, the value's float32 bits mapped to an order-preserving int32 in the high
  word and ``2**32 - 1 - token`` in the low word, so "larger value, then smaller token"
  is plain integer order and no sort has ties to break (tokens must be below 2**32;
  empty slots hold ``INT64_MIN``). It works on the batch's non-zeros (``torch.nonzero``
  on the device), never on the dense ``n x d_sae`` batch: on a CPU a dense pass costs
  more than the whole numpy reducer.
* ``DeviceHistogram`` equals ``Histogram`` exactly (``torch.bucketize(right=True)`` is
  ``np.searchsorted(side="right")`` on the same float32 edges).
* ``DeviceStats``: counts and max exact; the float64 sums equal up to summation order.
* ``DeviceCoFiring``: counts exact (0/1 matrix products in float32 are exact below 2**24
  rows per chunk); products equal up to float32 summation order. Dense matmuls restricted
  to the latents that fired in the batch, in column blocks of ``block`` latents, so the
  temporary memory is ``n x block`` plus ``block x active``; the state is a dense
  (d, d) pair on the device (8 d**2 bytes, as the numpy twin). The matmuls' work is
  ``4 n active**2`` flops: at 16k latents nearly all fire in a 16k-token batch, about
  1 GFLOP per token, far more than the forward. So ``method="auto"`` takes, per batch,
  the cheaper of that and the *pairs* method: each token's firing pairs ``i <= j``
  (``sum L0 (L0 + 1) / 2``, ~2k per token at L0 64) scatter-added into the upper
  triangle (``index_add_``: atomics on a GPU; float sums in any order), in chunks of
  at most ``pair_chunk`` pairs. On a CPU the numba pair kernel of ``cofire.py`` is
  faster still and the harvest keeps it there.

Merging stays on the host: ``to_numpy()`` then the numpy ``merge``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latent_atlas.analyses.sae.cofire import MAX_COFIRE_LATENTS, CoFiring
from latent_atlas.analyses.sae.device_intervals import DeviceIntervals
from latent_atlas.analyses.sae.reducers import Histogram, LatentStats, TopK, hist_edges

__all__ = ["DeviceCoFiring", "DeviceHistogram", "DeviceReducerSet", "DeviceStats", "DeviceTopK", "decode_keys",
           "encode_keys"]

EMPTY = torch.iinfo(torch.int64).min
_LOW = (1 << 32) - 1


def _ordered_int(bits: Tensor) -> Tensor:
    """float32 bits (as int32) -> int32 in the floats' order (an involution)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def encode_keys(value: Tensor, token: Tensor) -> Tensor:
    """int64 keys ordered as (value descending ... ) is key descending; see the module docstring."""
    high = _ordered_int(value.to(torch.float32).contiguous().view(torch.int32)).to(torch.int64)
    return high * (1 << 32) + (_LOW - token.to(torch.int64))


def decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(value float32, token int64) of keys; ``EMPTY`` gives (-inf, -1)."""
    empty = keys == EMPTY
    token = _LOW - (keys & _LOW)
    high = (keys >> 32).to(torch.int32)
    value = _ordered_int(high).view(torch.float32)
    value = torch.where(empty, torch.full_like(value, -np.inf), value)
    return value, torch.where(empty, torch.full_like(token, -1), token)


def _check(feats: Tensor, token: Tensor, d_sae: int) -> None:
    if feats.ndim != 2 or feats.shape[1] != d_sae or token.shape != (feats.shape[0],):
        raise ValueError(f"expected feats (n, {d_sae}) and token (n,), got {tuple(feats.shape)} and "
                         f"{tuple(token.shape)}")


class DeviceTopK:
    """Per-latent top-``k`` as int64 keys (d, k) on ``device``; ``to_numpy()`` gives the equal ``TopK``.

    A batch's non-zeros are first cut to those above their latent's current k-th key
    (after the first batches, few), then merged with the state rows of the latents they
    touch by a sort on the key and a stable sort on the latent: each latent's entries end
    up contiguous and in key order, and the first ``k`` of each run are the new row.
    """

    def __init__(self, d_sae: int, k: int, device: torch.device | str = "cpu") -> None:
        self.d_sae, self.k = d_sae, k
        self.keys = torch.full((d_sae, k), EMPTY, dtype=torch.int64, device=device)

    def update_sparse(self, latent: Tensor, token: Tensor, value: Tensor) -> None:
        """From the non-zeros: ``latent``, ``token`` (global index, below 2**32) int64 and ``value``."""
        if value.numel() == 0:
            return
        keys = encode_keys(value, token)
        better = keys > self.keys[latent, -1]
        latent, keys = latent[better], keys[better]
        if keys.numel() == 0:
            return
        rows = torch.unique(latent)
        old = self.keys[rows]
        all_lat = torch.cat([rows.repeat_interleave(self.k), latent])
        all_keys = torch.cat([old.flatten(), keys])
        order = torch.argsort(all_keys, descending=True)
        order = order[torch.argsort(all_lat[order], stable=True)]
        all_lat, all_keys = all_lat[order], all_keys[order]
        rank = torch.arange(all_lat.numel(), device=all_lat.device) - torch.searchsorted(all_lat, all_lat)
        keep = rank < self.k
        self.keys[rows] = EMPTY
        self.keys[all_lat[keep], rank[keep]] = all_keys[keep]

    def update(self, feats: Tensor, token: Tensor) -> None:
        """From a dense batch (n, d) and its rows' global token indices (n,)."""
        _check(feats, token, self.d_sae)
        where = torch.nonzero(feats)
        self.update_sparse(where[:, 1], token[where[:, 0]], feats[where[:, 0], where[:, 1]])

    def to_numpy(self) -> TopK:
        out = TopK(self.d_sae, self.k)
        value, token = decode_keys(self.keys)
        out.value, out.token = value.cpu().numpy().copy(), token.cpu().numpy().copy()
        return out


class DeviceHistogram:
    """``Histogram``'s counts (d, bins) on ``device``."""

    def __init__(self, d_sae: int, bins: int, device: torch.device | str = "cpu") -> None:
        self.d_sae, self.bins = d_sae, bins
        self.edges = torch.from_numpy(hist_edges(bins)).to(device)
        self.counts = torch.zeros(d_sae * bins, dtype=torch.int64, device=device)

    def update_sparse(self, latent: Tensor, value: Tensor) -> None:
        """From the non-zeros: ``latent`` (nnz,) int64 and ``value`` (nnz,)."""
        if value.numel() == 0:
            return
        which = torch.bucketize(value.abs().to(torch.float32), self.edges, right=True) - 1
        which = which.clamp_(0, self.bins - 1)
        self.counts += torch.bincount(latent * self.bins + which, minlength=self.d_sae * self.bins)

    def to_numpy(self) -> Histogram:
        out = Histogram(self.d_sae, self.bins)
        out.counts = self.counts.reshape(self.d_sae, self.bins).cpu().numpy().copy()
        return out


class DeviceStats:
    """``LatentStats`` (count, float64 sum, max, tokens encoded) on ``device``."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.d_sae = d_sae
        self.n_tokens = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        float64 = torch.float64 if torch.device(device).type != "mps" else torch.float32
        self.total = torch.zeros(d_sae, dtype=float64, device=device)
        self.max = torch.full((d_sae,), -np.inf, dtype=torch.float32, device=device)

    def update_sparse(self, latent: Tensor, value: Tensor, encoded: int) -> None:
        self.n_tokens += int(encoded)
        if value.numel() == 0:
            return
        self.count += torch.bincount(latent, minlength=self.d_sae)
        self.total.index_add_(0, latent, value.to(self.total.dtype))
        self.max.scatter_reduce_(0, latent, value.to(torch.float32), reduce="amax", include_self=True)

    def to_numpy(self) -> LatentStats:
        out = LatentStats(self.d_sae)
        out.n_tokens = self.n_tokens
        out.count = self.count.cpu().numpy().copy()
        out.total = self.total.cpu().double().numpy().copy()
        out.max = self.max.cpu().numpy().copy()
        return out


class DeviceCoFiring:
    """``CoFiring``'s pair counts and activation products as dense (d, d) matrices on ``device``.

    ``method``: ``"matmul"``, ``"pairs"`` or ``"auto"`` (per batch, by the work estimate
    ``n active**2`` vs ``PAIR_COST x pairs``); see the module docstring.
    """

    PAIR_COST = 64  # a scattered atomic add, in dense-matmul multiply-adds (a rough guess, only picks the method)

    def __init__(self, d_sae: int, device: torch.device | str = "cpu", block: int = 4096,
                 method: str = "auto", pair_chunk: int = 1 << 23) -> None:
        if d_sae > MAX_COFIRE_LATENTS:
            raise ValueError(f"co-firing needs 8 d**2 bytes; {d_sae:,} latents exceed the "
                             f"limit of {MAX_COFIRE_LATENTS:,}")
        if method not in ("auto", "matmul", "pairs"):
            raise ValueError(f"method must be auto, matmul or pairs, not {method!r}")
        self.d_sae, self.block, self.method, self.pair_chunk = d_sae, block, method, pair_chunk
        self.count = torch.zeros((d_sae, d_sae), dtype=torch.int32, device=device)
        self.product = torch.zeros((d_sae, d_sae), dtype=torch.float32, device=device)

    def update(self, feats: Tensor) -> None:
        if feats.shape[0] == 0:
            return
        fired_latent = (feats != 0).any(dim=0)
        active = torch.nonzero(fired_latent).flatten()
        if active.numel() == 0:
            return
        method = self.method
        if method == "auto":
            per_row = (feats != 0).sum(dim=1, dtype=torch.int64)
            pairs = int((per_row * (per_row + 1) // 2).sum())
            method = "pairs" if self.PAIR_COST * pairs < feats.shape[0] * active.numel() ** 2 else "matmul"
        if method == "pairs":
            self._update_pairs(feats)
        else:
            self._update_matmul(feats, active)

    def _update_matmul(self, feats: Tensor, active: Tensor) -> None:
        values = feats[:, active].to(torch.float32)
        fired = (values != 0).to(torch.float32)
        for start in range(0, active.numel(), self.block):
            cols = active[start:start + self.block]
            part_v, part_f = values[:, start:start + self.block], fired[:, start:start + self.block]
            self.count[cols[:, None], active[None, :]] += (part_f.T @ fired).round_().to(torch.int32)
            self.product[cols[:, None], active[None, :]] += part_v.T @ values

    def _update_pairs(self, feats: Tensor) -> None:
        """Every token's pairs ``i <= j`` of firing latents, scatter-added into the upper triangle."""
        rows, latent = torch.nonzero(feats, as_tuple=True)  # row-major: latents ascending within a row
        value = feats[rows, latent].to(torch.float32)
        n = feats.shape[0]
        per_row = torch.bincount(rows, minlength=n)
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
        width = int(per_row.max())
        lat = torch.full((n, width), -1, dtype=torch.int64, device=feats.device)
        val = torch.zeros((n, width), dtype=torch.float32, device=feats.device)
        lat[rows, slot], val[rows, slot] = latent, value
        upper = torch.ones((width, width), dtype=torch.bool, device=feats.device).triu()
        count, product = self.count.view(-1), self.product.view(-1)
        step = max(1, self.pair_chunk // (width * width))
        for start in range(0, n, step):
            li, vi = lat[start:start + step], val[start:start + step]
            valid = li >= 0
            keep = valid[:, :, None] & valid[:, None, :] & upper
            flat = (li[:, :, None] * self.d_sae + li[:, None, :])[keep]
            count.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
            product.index_add_(0, flat, (vi[:, :, None] * vi[:, None, :])[keep])

    def to_numpy(self) -> CoFiring:
        out = CoFiring.__new__(CoFiring)
        out.d_sae = self.d_sae
        out.count = np.triu(self.count.cpu().numpy()).astype(np.int32)
        out.product = np.triu(self.product.cpu().numpy()).astype(np.float32)
        return out


class DeviceReducerSet:
    """Top-k, histogram and stats (co-firing when ``cofire``, interval samples when ``intervals``) on ``device``.

    ``update(feats, token)`` takes a batch's dense activations and global token indices;
    ``update_nonzero`` the same plus its non-zeros when the caller has them already
    (``torch.nonzero`` runs once per batch). ``intervals`` = ``(bins, per_bin, seed)``
    adds ``DeviceIntervals`` (``device_intervals.py``). ``HarvestReducers.finish_device``
    replaces the matching numpy reducers by this state (``to_numpy``).
    """

    def __init__(self, d_sae: int, *, top_k: int, hist_bins: int, cofire: bool,
                 device: torch.device | str = "cpu", intervals: tuple[int, int, int] | None = None) -> None:
        self.d_sae = d_sae
        self.topk = DeviceTopK(d_sae, top_k, device)
        self.hist = DeviceHistogram(d_sae, hist_bins, device)
        self.stats = DeviceStats(d_sae, device)
        self.cofire = DeviceCoFiring(d_sae, device) if cofire else None
        self.intervals = DeviceIntervals(d_sae, *intervals, device=device) if intervals is not None else None

    def update(self, feats: Tensor, token: Tensor) -> None:
        _check(feats, token, self.d_sae)
        where = torch.nonzero(feats)
        self.update_nonzero(feats, token, where[:, 1], token[where[:, 0]], feats[where[:, 0], where[:, 1]])

    def update_nonzero(self, feats: Tensor, token: Tensor, nz_latent: Tensor, nz_token: Tensor,
                       nz_value: Tensor) -> None:
        """``update`` given the batch's non-zeros (latent, global token, value), e.g. from ``torch.nonzero``."""
        _check(feats, token, self.d_sae)
        if token.numel() and int(token.max()) > _LOW:
            raise ValueError("token indices must be below 2**32")
        self.update_sparse(nz_latent, nz_token, nz_value, feats.shape[0])
        if self.cofire is not None:
            self.cofire.update(feats)

    def update_sparse(self, latent: Tensor, token: Tensor, value: Tensor, encoded: int) -> None:
        """Every reducer but co-firing (which needs ``update``'s dense batch) from non-zeros."""
        self.stats.update_sparse(latent, value, encoded)
        self.hist.update_sparse(latent, value)
        self.topk.update_sparse(latent, token, value)
        if self.intervals is not None:
            self.intervals.update_sparse(latent, token, value)
