"""Interval samples (SAEDashboard's "interval" groups), as a streaming, mergeable reducer.

SAEDashboard splits a latent's range ``(0, max]`` into ``bins`` equal intervals and
shows ``per_bin`` random examples of each. The final max is unknown while streaming,
so this reducer keeps, per latent, a *fine* grid of ``G = FINE * bins`` cells on
``[0, S)`` where ``S = 2**e`` is the smallest power of two above the latent's running
max (``frexp``), and in every cell the ``per_bin`` entries of smallest hash key
(``key = splitmix64(seed, token, latent)``: a uniform random sample without
replacement, deterministic, and bottom-m of a union = bottom-m of the bottom-m's).
When the max passes ``S`` the scale doubles and cells merge pairwise, exactly.

At the end, output bin ``b`` of a latent with max ``M`` is the union of the fine
cells whose midpoint lies in ``[b M / bins, (b+1) M / bins)`` (the last bin also takes
cells above ``M``), and its samples are the ``per_bin`` smallest keys of that union.
Error bound: since ``M >= S/2``, a bin edge moves by at most half a fine cell,
``S / (2G) <= M / (FINE * bins)``, i.e. at most 1/FINE (= 1/4) of a bin's width;
inside the (moved) edges the sample is exactly uniform. Memory: ``d * G * per_bin``
slots of 20 bytes (16k latents, 10 bins x 5: 64 MB).

Output: ``interval_value`` / ``interval_token`` (d, bins * per_bin), column
``b * per_bin + i``; inside a bin by descending value; NaN / -1 padding.
"""

from __future__ import annotations

import numpy as np

from latent_atlas.analyses.sae.reducers import SparseBatch, select_per_group

__all__ = ["FINE", "Intervals", "hash_keys"]

FINE = 4
_EMPTY = np.uint64(np.iinfo(np.uint64).max)
_NO_SCALE = np.iinfo(np.int32).min


def hash_keys(seed: int, token: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, token, latent): uint64 keys, a pure function of the three."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + token.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + latent.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _cell(value: np.ndarray, exponent: np.ndarray, cells: int) -> np.ndarray:
    """Fine cell of each |value| on [0, 2**exponent): floor(v / S * G), clipped (exact in float64)."""
    scaled = np.ldexp(np.abs(value).astype(np.float64), -exponent.astype(np.int64)) * cells
    return np.minimum(np.floor(scaled).astype(np.int64), cells - 1)


class Intervals:
    """See the module docstring. ``seed`` fixes the random sample."""

    def __init__(self, d_sae: int, bins: int, per_bin: int, seed: int = 0) -> None:
        self.d_sae, self.bins, self.per_bin, self.seed = d_sae, bins, per_bin, seed
        self.cells = FINE * bins
        self.exponent = np.full(d_sae, _NO_SCALE, np.int32)
        self.max = np.zeros(d_sae, np.float32)
        shape = (d_sae, self.cells, per_bin)
        self.key = np.full(shape, _EMPTY, np.uint64)
        self.token = np.full(shape, -1, np.int64)
        self.value = np.zeros(shape, np.float32)

    # -- internals -----------------------------------------------------------------------------
    def _rescale(self, rows: np.ndarray, new_exponent: np.ndarray) -> None:
        """Move ``rows`` to larger scales: cell j -> j >> shift, bottom-m per merged cell."""
        old = self.exponent[rows]
        grown = old != _NO_SCALE
        self.exponent[rows] = new_exponent
        rows, shift = rows[grown], (new_exponent - old)[grown].astype(np.int64)
        if rows.size == 0:
            return
        key, token, value = self.key[rows], self.token[rows], self.value[rows]
        filled = token >= 0
        r, j, _ = np.nonzero(filled)
        new_cell = j >> shift[r]
        group = rows[r] * self.cells + new_cell
        k, t, v = key[filled], token[filled], value[filled]
        self.key[rows], self.token[rows], self.value[rows] = _EMPTY, -1, 0.0
        index, rank = select_per_group(group, [k, t], self.per_bin)
        g = group[index]
        self.key[g // self.cells, g % self.cells, rank] = k[index]
        self.token[g // self.cells, g % self.cells, rank] = t[index]
        self.value[g // self.cells, g % self.cells, rank] = v[index]

    def _insert(self, token: np.ndarray, latent: np.ndarray, value: np.ndarray, key: np.ndarray) -> None:
        cell = _cell(value, self.exponent[latent], self.cells)
        last_k, last_t = self.key[latent, cell, -1], self.token[latent, cell, -1]
        keep = (key < last_k) | (last_t < 0) | ((key == last_k) & (token < last_t))
        if not keep.any():
            return
        token, latent, value, key, cell = token[keep], latent[keep], value[keep], key[keep], cell[keep]
        group = latent * self.cells + cell
        groups = np.unique(group)
        gl, gc = groups // self.cells, groups % self.cells
        old_k, old_t, old_v = self.key[gl, gc].ravel(), self.token[gl, gc].ravel(), self.value[gl, gc].ravel()
        filled = old_t >= 0
        all_g = np.concatenate([np.repeat(groups, self.per_bin)[filled], group])
        all_k = np.concatenate([old_k[filled], key])
        all_t = np.concatenate([old_t[filled], token])
        all_v = np.concatenate([old_v[filled], value])
        self.key[gl, gc], self.token[gl, gc], self.value[gl, gc] = _EMPTY, -1, 0.0
        index, rank = select_per_group(all_g, [all_k, all_t], self.per_bin)
        g = all_g[index]
        self.key[g // self.cells, g % self.cells, rank] = all_k[index]
        self.token[g // self.cells, g % self.cells, rank] = all_t[index]
        self.value[g // self.cells, g % self.cells, rank] = all_v[index]

    def _add(self, token: np.ndarray, latent: np.ndarray, value: np.ndarray, key: np.ndarray) -> None:
        if value.size == 0:
            return
        np.maximum.at(self.max, latent, np.abs(value).astype(np.float32))
        rows = np.unique(latent)
        needed = np.frexp(self.max[rows].astype(np.float64))[1].astype(np.int32)
        moving = needed > self.exponent[rows]
        if moving.any():
            self._rescale(rows[moving], needed[moving])
        self._insert(token, latent, value, key)

    # -- public --------------------------------------------------------------------------------
    def update(self, batch: SparseBatch) -> None:
        key = hash_keys(self.seed, batch.token, batch.latent)
        self._add(batch.token, batch.latent, batch.value.astype(np.float32), key)

    def merge(self, other: Intervals) -> Intervals:
        if (other.d_sae, other.bins, other.per_bin, other.seed) != (
                self.d_sae, self.bins, self.per_bin, self.seed):
            raise ValueError("Intervals.merge: different configurations")
        out = Intervals(self.d_sae, self.bins, self.per_bin, self.seed)
        out.exponent, out.max = self.exponent.copy(), self.max.copy()
        out.key, out.token, out.value = self.key.copy(), self.token.copy(), self.value.copy()
        filled = other.token >= 0
        latent = np.nonzero(filled)[0].astype(np.int64)
        # other's max may come from an entry no longer sampled: raise the scale first
        rows = np.flatnonzero(other.exponent != _NO_SCALE)
        np.maximum.at(out.max, rows, other.max[rows])
        needed = np.frexp(out.max[rows].astype(np.float64))[1].astype(np.int32)
        moving = needed > out.exponent[rows]
        if moving.any():
            out._rescale(rows[moving], needed[moving])
        out._insert(other.token[filled], latent, other.value[filled], other.key[filled])
        return out

    def result(self) -> dict[str, np.ndarray]:
        d, m, bins = self.d_sae, self.per_bin, self.bins
        value = np.full((d, bins * m), np.nan, np.float32)
        token = np.full((d, bins * m), -1, np.int64)
        lat, cell, _ = np.nonzero(self.token >= 0)
        if lat.size:
            scale = np.ldexp(1.0, self.exponent[lat].astype(np.int64))
            mid = (cell + 0.5) * scale / self.cells
            top = self.max[lat].astype(np.float64)
            out_bin = np.minimum(np.floor(mid / top * bins).astype(np.int64), bins - 1)
            filled = self.token >= 0
            k, t, v = self.key[filled], self.token[filled], self.value[filled]
            group = lat * bins + out_bin
            index, _ = select_per_group(group, [k, t], m)
            # inside a bin: by descending value (then token) for display
            g, vv, tt = group[index], v[index], t[index]
            order = np.lexsort([tt, -vv.astype(np.float64), g])
            g, vv, tt = g[order], vv[order], tt[order]
            starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            rank = np.arange(g.size) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
            value[g // bins, (g % bins) * m + rank] = vv
            token[g // bins, (g % bins) * m + rank] = tt
        return {"interval_value": value, "interval_token": token}
