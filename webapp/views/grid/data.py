"""Grid views: constants, the loaded run (``GridData``), colours and labels; see ``webapp.views.grid``.

Token colours come from ``webapp.views.grid.colours`` (Glasbey palette, slots
assigned per colour context so that neighbouring regions differ); a
``GridData``'s colour context is its own top-1 counts and touching pairs, or
those of every map shown with it (``in_context``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import plotly.express as px

from webapp.views.grid.colours import (
    PALETTE,
    PALETTE_RGB,
    Edges,
    assign_colour_slots,
    hex_rgb,
    map_edges,
    token_palette_index,
)

KIND = "grid"
PLANES = {
    "direct": "direct (x, y in dimensions 0 and 1)",
    "replicated": "replicated (x, y in every dimension pair)",
    "random_projection": "random projection (seeded)",
    "pca": "PCA of real states at this layer",
    "through_states": "through three real states",
}
COLOR_MODES = {"token": "top token", "probability": "probability", "entropy": "entropy"}
SCALES = {"probability": px.colors.sequential.Viridis, "entropy": px.colors.sequential.Plasma}
MAX_TEXT_SIDE = 40  # cells a side at most for token text on the map
HOVER_LINES = 40_000  # top-k lines of hover text in one figure at most
HOVER_TOP1_CELLS = 70_000  # above this, hover shows coordinates only (click for tokens)
LEGEND_ROWS = 12
PLOT_PX = 640  # nominal size of the plot area, for text sizes
MAP_HEIGHT = 720
DEFAULT_SIZE = 64
STATE_COUNT = 3

# PNG export
PNG_MAX_SIDE = 16_384
PNG_TARGET_SIDE = 6_400
PNG_CELL_RANGE = (4, 64)
FONT_CANDIDATES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")


def pid(name: str, slot: str) -> dict[str, str]:
    """The pattern-matching ID of this module's component ``name`` in ``slot``."""
    return {"type": f"grid-{name}", "slot": slot}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GridData:
    """One grid result: arrays, token strings and the run's identity."""

    run_id: str
    summary: Mapping[str, Any]
    params: Mapping[str, Any]
    top_ids: np.ndarray  # (N, N, k) int
    top_probs: np.ndarray  # (N, N, k) float
    entropy: np.ndarray  # (N, N) float
    xs: np.ndarray  # (N,)
    ys: np.ndarray  # (N,)
    state_coords: np.ndarray | None = None  # (3, 2) through_states
    palette_counts: Mapping[int, int] | None = None  # colour context; None: this map alone
    palette_edges: Edges | None = None  # touching top-1 pairs of the colour context

    @classmethod
    def from_arrays(cls, run_id: str, summary: Mapping[str, Any], params: Mapping[str, Any],
                    arrays: Mapping[str, np.ndarray]) -> GridData:
        missing = [n for n in ("top_ids", "top_probs", "entropy", "xs", "ys") if n not in arrays]
        if missing:
            raise ValueError(f"this run has no {', '.join(missing)} arrays")
        top_ids = np.asarray(arrays["top_ids"])
        if top_ids.ndim != 3 or top_ids.shape[0] != top_ids.shape[1]:
            raise ValueError(f"top_ids must be (N, N, k), not {top_ids.shape}")
        return cls(run_id, dict(summary or {}), dict(params or {}), top_ids,
                   np.asarray(arrays["top_probs"], dtype=np.float32),
                   np.asarray(arrays["entropy"], dtype=np.float32),
                   np.asarray(arrays["xs"], dtype=np.float64), np.asarray(arrays["ys"], dtype=np.float64),
                   None if "state_coords" not in arrays else np.asarray(arrays["state_coords"]))

    @property
    def n(self) -> int:
        return int(self.top_ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def top1(self) -> np.ndarray:
        return self.top_ids[..., 0]

    def token(self, token_id: int) -> str:
        key = str(int(token_id))
        for table in ("tokens", "topk_tokens"):
            value = (self.summary.get(table) or {}).get(key)
            if value is not None:
                return str(value)
        return f"(token {key})"

    def spacing(self, axis: np.ndarray) -> float:
        return float(axis[1] - axis[0]) if len(axis) > 1 else 1.0

    @cached_property
    def top1_counts(self) -> dict[int, int]:
        ids, counts = np.unique(self.top1, return_counts=True)
        return {int(t): int(c) for t, c in zip(ids, counts, strict=True)}

    @cached_property
    def top1_edges(self) -> dict[tuple[int, int], int]:
        return map_edges(self.top1)

    @cached_property
    def _slot_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self.palette_counts is None:
            slots = assign_colour_slots(self.top1_counts, self.top1_edges)
        else:
            slots = assign_colour_slots(self.palette_counts, self.palette_edges)
        keys = np.array(sorted(slots), dtype=np.int64)
        return keys, np.array([slots[int(k)] for k in keys], dtype=np.int64)

    def colour_slot(self, ids: np.ndarray | int) -> np.ndarray:
        """Palette slots of token ids in this map's colour context (hash slot if not in it)."""
        ids = np.asarray(ids, dtype=np.int64)
        keys, slots = self._slot_table
        if not len(keys):
            return token_palette_index(ids)
        where = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        return np.where(keys[where] == ids, slots[where], token_palette_index(ids))

    def colour(self, token_id: int) -> str:
        return PALETTE[int(self.colour_slot(int(token_id)))]

    def in_context(self, others: list[GridData]) -> GridData:
        """This map coloured in the joint colour context of itself and ``others``."""
        counts: Counter[int] = Counter(self.top1_counts)
        edges: Counter[tuple[int, int]] = Counter(self.top1_edges)
        for other in others:
            counts.update(other.top1_counts)
            edges.update(other.top1_edges)
        return replace(self, palette_counts=dict(counts), palette_edges=dict(edges))


def load_grid(run_id: str, context: tuple[str, ...] | list[str] | None = None) -> GridData:
    """A run's map, coloured in the context of the runs ``context`` (default: itself)."""
    data = _load_grid(run_id)
    others = [r for r in (context or ()) if r != run_id]
    return data.in_context([_load_grid(r) for r in others]) if others else data


@lru_cache(maxsize=4)
def _load_grid(run_id: str) -> GridData:
    """The grid result of a succeeded run (cached: results never change once stored)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        raise ValueError(f"run {run_id} is a {run.kind} run, not a grid run")
    if run.status != "succeeded":
        raise ValueError(f"run {run_id} is {run.status}; its token map exists once it has succeeded")
    return GridData.from_arrays(run.id, run.summary or {}, run.params or {},
                                runs_service.load_arrays(run))


# --------------------------------------------------------------------------- colours


def discrete_colorscale() -> list[list[Any]]:
    """Steps of equal width, one per palette colour, for z = palette index."""
    p = len(PALETTE)
    scale: list[list[Any]] = []
    for index, colour in enumerate(PALETTE):
        scale.append([index / p, colour])
        scale.append([(index + 1) / p, colour])
    return scale


def scale_rgb(values: np.ndarray, scale: list[str], low: float, high: float) -> np.ndarray:
    """RGB (uint8) of ``values`` on a continuous scale of evenly spaced hex colours."""
    stops = np.array([hex_rgb(c) for c in scale], dtype=np.float64)
    t = np.clip((np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    pos = np.linspace(0.0, 1.0, len(scale))
    return np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def value_range(data: GridData, mode: str) -> tuple[float, float]:
    """Colour scale bounds: 0..1 for probability, the map's own min..max for entropy."""
    if mode == "probability" or not data.entropy.size:
        return 0.0, 1.0
    low, high = float(np.nanmin(data.entropy)), float(np.nanmax(data.entropy))
    return low, max(high, low + 1e-6)


def cell_values(data: GridData, mode: str) -> np.ndarray:
    if mode == "probability":
        return data.top_probs[..., 0]
    if mode == "entropy":
        return data.entropy
    raise ValueError(f"unknown colour mode {mode!r}")


def cell_rgb(data: GridData, mode: str) -> np.ndarray:
    """The colour of every cell (N, N, 3) uint8, as the map draws it."""
    if mode == "token":
        return PALETTE_RGB[data.colour_slot(data.top1)]
    low, high = value_range(data, mode)
    return scale_rgb(cell_values(data, mode), SCALES[mode], low, high)


def text_is_dark(rgb: np.ndarray) -> np.ndarray:
    """True where black text reads better than white on the colour ``rgb`` (..., 3)."""
    r, g, b = (rgb[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b > 0.55


# --------------------------------------------------------------------------- labels


def token_label(token: str) -> str:
    """A token for hover and lists: quoted, so spaces and newlines show."""
    return repr(token)


def cell_label(token: str, max_chars: int) -> str:
    """A token written on a cell: whitespace made visible, cut to ``max_chars``."""
    text = token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    text = "".join(ch if ch.isprintable() else "�" for ch in text) or "∅"
    if len(text) > max_chars:
        text = text[: max(1, max_chars - 1)] + "…"
    return text


def axis_titles(summary: Mapping[str, Any]) -> tuple[str, str]:
    """Axis titles in the plane's own units."""
    plane = str(summary.get("plane") or "direct")
    info = summary.get("plane_info") or {}
    if plane == "direct":
        return "x (residual dimension 0)", "y (residual dimension 1)"
    if plane == "replicated":
        return "x (each even dimension 0, 2, 4, …)", "y (each odd dimension 1, 3, 5, …)"
    if plane == "random_projection":
        seed = info.get("seed", "?")
        return f"x (along random direction u, seed {seed})", f"y (along random direction v, seed {seed})"
    if plane == "pca":
        ratios = info.get("explained_variance_ratio") or []
        titles = []
        for index, axis in enumerate("xy"):
            extra = f", {100 * float(ratios[index]):.1f}% of variance" if index < len(ratios) else ""
            titles.append(f"{axis} (PC{index + 1} in standard deviations{extra})")
        return titles[0], titles[1]
    if plane == "through_states":
        return "x (steps of state 1 − state 0)", "y (steps of state 2 − state 0)"
    return "x", "y"


def describe(summary: Mapping[str, Any]) -> str:
    """``layer 3 of 12 · direct plane · 64 × 64`` (for headers and side by side)."""
    n = summary.get("size", "?")
    return (f"layer {summary.get('layer', '?')} of {summary.get('n_layers', '?')} · "
            f"{summary.get('plane', '?')} plane · {n} × {n}")


