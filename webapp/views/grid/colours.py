"""Token colours of grid maps: a Glasbey palette, assigned so that neighbouring regions differ.

The palette is colorcet's ``glasbey_light``: 256 categorical colours (no near
blacks) ordered so that each is as far as possible (in a perceptual colour
space) from all before it; of colorcet's Glasbey sets, its first 16 are the
farthest apart (CIE76 ΔE >= 31). The text on a cell is black or white,
whichever reads better on that cell's colour (``data.text_is_dark``).

``assign_colour_slots(counts, edges)`` gives each token id of a colour context
(one map, or the maps shown side by side) a palette slot:

* distinct ids get distinct slots while the palette lasts, and only the first
  ``min(len(counts), 256)`` slots are used (the most distinct ones);
* tokens are placed most frequent first (ties: smaller id); a token with
  already placed neighbours (``edges``: pairs of ids whose cells touch, with
  the length of their border) takes the free slot farthest (CIELAB ΔE, the
  minimum over those neighbours) from its neighbours' colours; a token without
  placed neighbours takes the first free slot;
* beyond the palette, a token keeps its hashed home slot (``token_palette_index``);
* deterministic: the same counts and edges give the same slots, so a map, its
  legend, its text and its PNG agree, and so do maps that share a context.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import colorcet
import numpy as np

__all__ = [
    "PALETTE",
    "PALETTE_DELTA_E",
    "PALETTE_LAB",
    "PALETTE_RGB",
    "Edges",
    "assign_colour_slots",
    "delta_e",
    "hex_rgb",
    "map_edges",
    "srgb_to_lab",
    "token_palette_index",
]

Edges = Mapping[tuple[int, int], int]  # (smaller id, larger id) -> cell borders they share

PALETTE: tuple[str, ...] = tuple(c.upper() for c in colorcet.palette["glasbey_light"])


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours given as uint8 (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference of sRGB uint8 colours (broadcast over leading axes)."""
    return np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1)


PALETTE_RGB = np.array([hex_rgb(c) for c in PALETTE], dtype=np.uint8)
PALETTE_LAB = srgb_to_lab(PALETTE_RGB)
PALETTE_DELTA_E = np.linalg.norm(PALETTE_LAB[:, None, :] - PALETTE_LAB[None, :, :], axis=-1)


def token_palette_index(ids: np.ndarray | int) -> np.ndarray:
    """A stable palette slot per token id (a multiplicative hash of the id): the fallback slot."""
    h = np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(40)) % np.uint64(len(PALETTE))).astype(np.int64)


def map_edges(top1: np.ndarray) -> dict[tuple[int, int], int]:
    """Pairs of distinct top-1 ids whose cells touch (side by side or one above the other)."""
    grid = np.asarray(top1, dtype=np.int64)
    pairs = [np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()], axis=1),
             np.stack([grid[:-1, :].ravel(), grid[1:, :].ravel()], axis=1)]
    both = np.concatenate(pairs)
    both = both[both[:, 0] != both[:, 1]]
    if not len(both):
        return {}
    both.sort(axis=1)
    unique, counts = np.unique(both, axis=0, return_counts=True)
    return {(int(a), int(b)): int(c) for (a, b), c in zip(unique, counts, strict=True)}


def assign_colour_slots(counts: Mapping[int, int], edges: Edges | None = None) -> dict[int, int]:
    """A palette slot per token id (see the module docstring for the rules)."""
    size = len(PALETTE)
    order = sorted((int(t) for t in counts), key=lambda t: (-counts[t], t))
    neighbours: dict[int, list[int]] = defaultdict(list)
    for (a, b), _border in (edges or {}).items():
        neighbours[int(a)].append(int(b))
        neighbours[int(b)].append(int(a))
    used = min(len(order), size)
    free = np.ones(used, dtype=bool)  # candidate slots: the first ``used`` (most distinct) colours
    slots: dict[int, int] = {}
    for index, token in enumerate(order):
        if index >= size:
            slots[token] = int(token_palette_index(token))
            continue
        placed = [slots[n] for n in neighbours.get(token, ()) if n in slots]
        candidates = np.flatnonzero(free)
        if placed:
            distance = PALETTE_DELTA_E[np.ix_(candidates, placed)].min(axis=1)
            slot = int(candidates[int(np.argmax(distance))])  # first of the farthest
        else:
            slot = int(candidates[0])
        free[slot] = False
        slots[token] = slot
    return slots
