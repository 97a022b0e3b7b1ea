"""Grid token colours: a perceptually distinct palette, and neighbouring regions that differ.

ΔE is CIE76 in CIELAB: about 2 is a just-noticeable difference, and colours
under ~10 apart look alike on a map of small cells. The old palette (Plotly's
Alphabet + Dark24 + Light24, hashed slots) gave ``' '``, ``'_'``, ``' self'``,
``' I'`` and ``'.'`` near-identical pinks (ΔE down to 1.3 within its 64 first
colours).
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import pytest

from webapp.views.grid import GridData
from webapp.views.grid import colours as gc


def _min_delta_e(slots) -> float:
    slots = list(slots)
    d = gc.PALETTE_DELTA_E[np.ix_(slots, slots)].copy()
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_srgb_to_lab_matches_reference_values():
    lab = gc.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)  # sRGB red, D65


def test_the_palette_is_perceptually_distinct_where_maps_use_it():
    assert len(gc.PALETTE) == 256 and len(set(gc.PALETTE)) == 256
    assert _min_delta_e(range(16)) > 30.0
    assert _min_delta_e(range(48)) > 14.0
    old = list(dict.fromkeys(c.upper() for c in px.colors.qualitative.Alphabet
                             + px.colors.qualitative.Dark24 + px.colors.qualitative.Light24))
    old_rgb = np.array([gc.hex_rgb(c) for c in old[:48]], dtype=np.uint8)
    d = gc.delta_e(old_rgb[:, None], old_rgb[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() < 5.0  # what the portal had: two of 48 colours nearly the same


def test_map_edges_counts_shared_borders():
    top1 = np.array([[1, 1, 2],
                     [1, 3, 2],
                     [3, 3, 2]])
    assert gc.map_edges(top1) == {(1, 2): 1, (1, 3): 3, (2, 3): 2}
    assert gc.map_edges(np.ones((4, 4), dtype=int)) == {}


def _stripes(n_tokens: int, width: int = 3) -> np.ndarray:
    """Vertical stripes of ``n_tokens`` ids with a random order, rows shifted: many borders."""
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(100, 100 + n_tokens))
    n = n_tokens * width
    col = np.arange(n) // width
    shift = (np.arange(n)[:, None] // 7) % n_tokens
    return ids[(col[None, :] + shift) % n_tokens]


@pytest.mark.parametrize("n_tokens", [8, 24, 60])
def test_touching_regions_get_far_apart_colours(n_tokens):
    top1 = _stripes(n_tokens)
    edges = gc.map_edges(top1)
    ids, counts = np.unique(top1, return_counts=True)
    counts = {int(t): int(c) for t, c in zip(ids, counts, strict=True)}
    slots = gc.assign_colour_slots(counts, edges)
    assert sorted(slots.values()) == list(range(n_tokens))
    touching = [gc.PALETTE_DELTA_E[slots[a], slots[b]] for a, b in edges]
    # Without the neighbours (slots in frequency order) the closest touching pair is what chance gives.
    plain = gc.assign_colour_slots(counts)
    plain_touching = [gc.PALETTE_DELTA_E[plain[a], plain[b]] for a, b in edges]
    assert min(touching) > min(plain_touching)
    assert min(touching) >= _min_delta_e(range(n_tokens)) + 5.0
    assert min(touching) > 20.0


def test_the_tokens_of_the_report_differ():
    """Five frequent tokens in touching regions, as on the map in issue 12."""
    names = {220: " ", 62: "_", 2280: " self", 314: " I", 30: "."}
    top1 = np.repeat(np.repeat(np.array([[220, 62, 2280], [314, 30, 220], [62, 2280, 314]]), 10, 0), 10, 1)
    data = GridData.from_arrays("r", {"tokens": {str(k): v for k, v in names.items()}}, {},
                                {"top_ids": top1[..., None], "top_probs": np.ones((30, 30, 1)),
                                 "entropy": np.zeros((30, 30)), "xs": np.arange(30.0), "ys": np.arange(30.0)})
    rgb = np.array([gc.hex_rgb(data.colour(t)) for t in names], dtype=np.uint8)
    d = gc.delta_e(rgb[:, None], rgb[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() > 30.0, d.min()


def test_assignment_is_deterministic_and_covers_more_tokens_than_colours():
    counts = {t: 1 + t % 7 for t in range(300)}
    edges = {(t, t + 1): 1 for t in range(299)}
    first = gc.assign_colour_slots(counts, edges)
    assert first == gc.assign_colour_slots(dict(reversed(list(counts.items()))), edges)
    placed = sorted(first, key=lambda t: (-counts[t], t))[:256]
    assert sorted(first[t] for t in placed) == list(range(256))
    rest = set(first) - set(placed)
    assert all(first[t] == int(gc.token_palette_index(t)) for t in rest)
