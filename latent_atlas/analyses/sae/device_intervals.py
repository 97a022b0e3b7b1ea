"""``Intervals`` (interval samples) in torch, on the activations' device: the same state, exactly.

The numpy ``Intervals`` (``intervals.py``) stays the reference and defines the sample;
``DeviceIntervals`` keeps the identical state (per latent: scale exponent, running max,
and per fine cell the ``per_bin`` entries of smallest ``(key, token)``) as torch tensors
on ``device``, updated from the non-zeros of a batch that are already there, and hands
it back with ``to_numpy()`` as an ``Intervals`` (so ``merge``/``result``/shards are
unchanged). The only host transfer is that final state, never the tokens.

Invariants (tests/unit/sae/test_device_intervals.py, on CPU torch):

* ``hash_keys_torch`` equals ``intervals.hash_keys`` bit for bit. torch has no full
  uint64 arithmetic: keys are computed in int64, whose ``+``/``*`` wrap modulo 2**64
  exactly as uint64 would (two's complement); the constants above 2**63 are written
  as their negative int64 twins, and a logical right shift ``z >>> s`` is the
  arithmetic shift masked to its low ``64 - s`` bits.
* Keys are kept *order-mapped*: ``key ^ INT64_MIN`` (the sign bit flipped), so signed
  int64 comparison and sorting of the mapped keys is unsigned order of the uint64 keys;
  the empty slot (uint64 max) maps to ``INT64_MAX``. ``to_numpy`` maps back.
* Cell, rescale and insert follow ``Intervals`` step by step (``|v| * 2**-e`` in float64
  for the cell, exact like numpy's ``ldexp``, ``frexp`` of the float64 max for the scale, bottom-``per_bin`` by group then key
  then token), so after any sequence of batches ``to_numpy()`` equals the numpy
  reducer fed the same batches, array for array. float64 is needed: not on ``mps``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latent_atlas.analyses.sae.intervals import FINE, Intervals

__all__ = ["DeviceIntervals", "hash_keys_torch", "supports_device_intervals"]

_MIN = torch.iinfo(torch.int64).min
_EMPTY = torch.iinfo(torch.int64).max  # order-mapped uint64 max
_NO_SCALE = np.iinfo(np.int32).min


def _signed(constant: int) -> int:
    """The int64 with the same 64 bits as the uint64 ``constant``."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits by ``s`` (0 < s < 64)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def hash_keys_torch(seed: int, token: Tensor, latent: Tensor) -> Tensor:
    """``intervals.hash_keys`` in int64 (the uint64 keys' bits): splitmix64 of (seed, token, latent)."""
    seed_term = _signed((_signed(seed % (1 << 64)) * _GOLDEN) % (1 << 64))
    z = token.to(torch.int64) * _MIX1 + latent.to(torch.int64) * _MIX2 + seed_term
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def supports_device_intervals(device: torch.device | str) -> bool:
    """Whether ``DeviceIntervals`` can run there (it needs float64 and int64 wraparound)."""
    return torch.device(device).type != "mps"


def _select_per_group(group: Tensor, key: Tensor, token: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``reducers.select_per_group(group, [key, token], m)`` in torch: (index, rank).

    Sorted by key, then stably by group; only when two entries of a group share a key
    (64-bit hashes of distinct (token, latent): practically never) is the token needed
    to break the tie, and then the full three-key order is computed.
    """
    order = torch.argsort(key)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group, sorted_key = group[order], key[order]
    if order.numel() > 1 and bool(((sorted_group[1:] == sorted_group[:-1])
                                   & (sorted_key[1:] == sorted_key[:-1])).any()):
        order = torch.argsort(token, stable=True)
        order = order[torch.argsort(key[order], stable=True)]
        order = order[torch.argsort(group[order], stable=True)]
        sorted_group = group[order]
    rank = torch.arange(order.numel(), device=group.device) - torch.searchsorted(sorted_group, sorted_group)
    keep = rank < m
    return order[keep], rank[keep]


def _present(index: Tensor, size: int) -> Tensor:
    """The distinct values of ``index`` (all in ``[0, size)``), ascending: ``torch.unique`` without a sort."""
    return torch.nonzero(torch.bincount(index, minlength=size)).flatten()


class DeviceIntervals:
    """See the module docstring. State on ``device``; ``to_numpy()`` gives the equal ``Intervals``."""

    def __init__(self, d_sae: int, bins: int, per_bin: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if not supports_device_intervals(device):
            raise ValueError(f"DeviceIntervals needs float64 and int64 arithmetic, not available on {device}")
        self.d_sae, self.bins, self.per_bin, self.seed = d_sae, bins, per_bin, seed
        self.cells = FINE * bins
        self.device = torch.device(device)
        self.exponent = torch.full((d_sae,), _NO_SCALE, dtype=torch.int32, device=device)
        self.max = torch.zeros(d_sae, dtype=torch.float32, device=device)
        # flat (d * cells, per_bin): row g = latent * cells + cell
        shape = (d_sae * self.cells, per_bin)
        self.key = torch.full(shape, _EMPTY, dtype=torch.int64, device=device)
        self.token = torch.full(shape, -1, dtype=torch.int64, device=device)
        self.value = torch.zeros(shape, dtype=torch.float32, device=device)

    # -- internals (each mirrors the numpy method of the same name) ----------------------------------
    def _cell(self, value: Tensor, exponent: Tensor) -> Tensor:
        # |v| * 2**-e exactly (= numpy's ldexp): the power of two built from its float64 bits
        # (float32 exponents are within [-149, 128]), not torch.ldexp, which may go through pow
        power = ((1023 - exponent.to(torch.int64)) << 52).view(torch.float64)
        scaled = value.abs().to(torch.float64) * power * self.cells
        return torch.clamp(torch.floor(scaled).to(torch.int64), max=self.cells - 1)

    def _place(self, group: Tensor, key: Tensor, token: Tensor, value: Tensor) -> None:
        """Bottom-``per_bin`` of each group's entries into its (already emptied) state row."""
        index, rank = _select_per_group(group, key, token, self.per_bin)
        g = group[index]
        self.key[g, rank] = key[index]
        self.token[g, rank] = token[index]
        self.value[g, rank] = value[index]

    def _rescale(self, rows: Tensor, new_exponent: Tensor) -> None:
        old = self.exponent[rows]
        grown = old != _NO_SCALE
        self.exponent[rows] = new_exponent
        rows, shift = rows[grown], (new_exponent - old)[grown].to(torch.int64)
        if rows.numel() == 0:
            return
        flat = (rows[:, None] * self.cells + torch.arange(self.cells, device=rows.device)).flatten()
        key, token, value = self.key[flat], self.token[flat], self.value[flat]  # (r * cells, m)
        filled = token >= 0
        slot_row, _ = torch.nonzero(filled, as_tuple=True)
        r, j = slot_row // self.cells, slot_row % self.cells
        new_cell = j >> shift[r].clamp(max=63)
        group = rows[r] * self.cells + new_cell
        k, t, v = key[filled], token[filled], value[filled]
        self.key[flat], self.token[flat], self.value[flat] = _EMPTY, -1, 0.0
        self._place(group, k, t, v)

    def _insert(self, token: Tensor, latent: Tensor, value: Tensor, key: Tensor) -> None:
        cell = self._cell(value, self.exponent[latent])
        group = latent * self.cells + cell
        last_k, last_t = self.key[group, -1], self.token[group, -1]
        keep = (key < last_k) | (last_t < 0) | ((key == last_k) & (token < last_t))
        token, value, key, group = token[keep], value[keep], key[keep], group[keep]
        if group.numel() == 0:
            return
        groups = _present(group, self.d_sae * self.cells)
        old_k, old_t, old_v = self.key[groups].flatten(), self.token[groups].flatten(), self.value[groups].flatten()
        filled = old_t >= 0
        all_g = torch.cat([groups.repeat_interleave(self.per_bin)[filled], group])
        all_k = torch.cat([old_k[filled], key])
        all_t = torch.cat([old_t[filled], token])
        all_v = torch.cat([old_v[filled], value])
        self.key[groups], self.token[groups], self.value[groups] = _EMPTY, -1, 0.0
        self._place(all_g, all_k, all_t, all_v)

    # -- public ------------------------------------------------------------------------------------
    def update_sparse(self, latent: Tensor, token: Tensor, value: Tensor) -> None:
        """From a batch's non-zeros on the device: ``latent``, ``token`` (global index) int64, ``value``."""
        if value.numel() == 0:
            return
        latent, token = latent.to(torch.int64), token.to(torch.int64)
        value = value.to(torch.float32)
        self.max.scatter_reduce_(0, latent, value.abs(), reduce="amax", include_self=True)
        rows = _present(latent, self.d_sae)
        needed = torch.frexp(self.max[rows].to(torch.float64))[1].to(torch.int32)
        moving = needed > self.exponent[rows]
        self._rescale(rows[moving], needed[moving])
        self._insert(token, latent, value, hash_keys_torch(self.seed, token, latent) ^ _MIN)

    def update(self, feats: Tensor, token: Tensor) -> None:
        """From a dense batch (n, d) and its rows' global token indices (n,)."""
        if feats.ndim != 2 or feats.shape[1] != self.d_sae or token.shape != (feats.shape[0],):
            raise ValueError(f"expected feats (n, {self.d_sae}) and token (n,), got {tuple(feats.shape)} "
                             f"and {tuple(token.shape)}")
        where = torch.nonzero(feats)
        self.update_sparse(where[:, 1], token[where[:, 0]], feats[where[:, 0], where[:, 1]])

    def to_numpy(self) -> Intervals:
        out = Intervals(self.d_sae, self.bins, self.per_bin, self.seed)
        shape = (self.d_sae, self.cells, self.per_bin)
        out.exponent = self.exponent.cpu().numpy().copy()
        out.max = self.max.cpu().numpy().copy()
        out.key = (self.key ^ _MIN).cpu().numpy().view(np.uint64).reshape(shape).copy()
        out.token = self.token.cpu().numpy().reshape(shape).copy()
        out.value = self.value.cpu().numpy().reshape(shape).copy()
        return out
