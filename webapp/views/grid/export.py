"""Grid views: the JSON document and the PNG of a token map (pure functions of the run's data)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from webapp.views.grid.data import (
    COLOR_MODES,
    FONT_CANDIDATES,
    PALETTE_RGB,
    PNG_CELL_RANGE,
    PNG_MAX_SIDE,
    PNG_TARGET_SIDE,
    GridData,
    cell_label,
    cell_rgb,
    text_is_dark,
)
from webapp.views.grid.figures import legend_entries

# --------------------------------------------------------------------------- exports


def _short_floats(values: np.ndarray, digits: int) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _exact_floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimal that reads back as the same float32."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def export_document(data: GridData, run: Mapping[str, Any] | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The token map as one JSON document (see ``layout`` inside for the indexing)."""
    ids = np.unique(data.top_ids)
    summary = data.summary
    plane: dict[str, Any] = {"kind": summary.get("plane"), "info": summary.get("plane_info") or {}}
    for name in ("center", "u", "v"):
        if arrays is not None and f"plane_{name}" in arrays:
            plane[name] = _exact_floats(arrays[f"plane_{name}"])
    return {
        "format": "latent-atlas grid token map, version 1",
        "run": {key: (run or {}).get(key) for key in ("id", "title", "model", "owner", "created_at")}
        | {"id": data.run_id},
        "config": dict(data.params),
        "layout": "top_ids[j][i], top_probs[j][i] and entropy[j][i] describe the point (x[i], y[j]); "
                  "tokens maps every token id to its string",
        "size": data.n,
        "top_k": data.k,
        "layer": summary.get("layer"),
        "n_layers": summary.get("n_layers"),
        "plane": plane,
        "x": _exact_floats(data.xs),
        "y": _exact_floats(data.ys),
        "top_ids": data.top_ids.astype(np.int64).tolist(),
        "top_probs": _short_floats(data.top_probs, 7),
        "entropy": _short_floats(data.entropy, 6),
        "entropy_units": "nats",
        "tokens": {str(int(t)): data.token(int(t)) for t in ids},
        "colours": {str(t): data.colour(t) for t in sorted(data.top1_counts)},
        "legend": [{key: entry[key] for key in ("id", "token", "cells", "share")}
                   for entry in legend_entries(data, rows=50)],
        "fast_path": summary.get("fast_path"),
        "dtype": summary.get("dtype"),
    }


def default_cell_px(n: int) -> int:
    return int(min(32, max(8, PNG_TARGET_SIDE // max(n, 1))))


@lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont

    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _label_mask(token: str, cell: int) -> np.ndarray:
    """Coverage (cell, cell) uint8 (255 = ink) of the token written centred in one cell.

    The font is as large as fits (from 45% down to 28% of the cell), then the
    text is cut with an ellipsis.
    """
    from PIL import Image, ImageDraw

    room = cell - 3
    text = cell_label(token, 64)
    sizes = range(max(6, int(cell * 0.45)), max(6, int(cell * 0.28)) - 1, -1)
    font = _font(sizes[-1])
    for size in sizes:
        if _font(size).getlength(text) <= room:
            font = _font(size)
            break
    while len(text) > 1 and font.getlength(text) > room:
        text = text[:-2] + "…" if len(text) > 2 else text[:1]
    image = Image.new("L", (cell, cell), 0)
    ImageDraw.Draw(image).text((cell / 2, cell / 2), text, fill=255, font=font, anchor="mm")
    return np.asarray(image, dtype=np.uint8)


def token_map_image(data: GridData, mode: str = "token", cell_px: int | None = None,
                    text: bool = True) -> np.ndarray:
    """The map as an RGB image (N * cell, N * cell, 3), y increasing upwards like the figure.

    Every cell is a block of its colour with its top token written on it and a
    1-pixel darker edge; token masks are drawn once per distinct token.
    """
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {mode!r}")
    n = data.n
    cell = default_cell_px(n) if cell_px is None else int(cell_px)
    bg = cell_rgb(data, mode)[::-1]  # top image row = highest y
    distinct, inverse = np.unique(data.top1[::-1], return_inverse=True)
    inverse = inverse.reshape(n, n)
    edge = np.zeros((cell, cell), dtype=np.uint16)
    if cell >= 8:
        edge[-1, :] = edge[:, -1] = 46  # darken the cell's last row and column by 18%
    if text and cell >= 8:
        masks = np.stack([_label_mask(data.token(int(t)), cell) for t in distinct])
    else:
        masks = np.zeros((len(distinct), cell, cell), dtype=np.uint8)
    if mode == "token":  # the whole cell follows from the token: one tile per token
        colours = PALETTE_RGB[data.colour_slot(distinct)]
        tiles = _composite(colours[:, None, None, :], masks, edge)  # (D, c, c, 3)
        return tiles[inverse].transpose(0, 2, 1, 3, 4).reshape(n * cell, n * cell, 3)
    out = np.empty((n * cell, n * cell, 3), dtype=np.uint8)
    rows = max(1, (1 << 23) // (n * cell * cell * 3))  # cell rows per chunk
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = _composite(bg[start:stop, :, None, None, :], masks[inverse[start:stop]], edge)
        out[start * cell : stop * cell] = block.transpose(0, 2, 1, 3, 4).reshape(
            (stop - start) * cell, n * cell, 3)
    return out


def _composite(colour: np.ndarray, mask: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Cells of ``colour`` (..., 1, 1, 3) with the edge darkened and text ``mask`` (..., c, c) inked."""
    dark = text_is_dark(colour)[..., None]  # (..., 1, 1, 1)
    base = colour.astype(np.uint16) * (256 - edge[..., None]) >> 8
    m = mask[..., None].astype(np.uint16)
    ink = np.where(dark, 17, 255).astype(np.uint16)
    return ((base * (255 - m) + ink * m + 127) // 255).astype(np.uint8)


def token_map_png(data: GridData, mode: str = "token", cell_px: int | None = None) -> bytes:
    """PNG bytes of ``token_map_image``."""
    from PIL import Image

    image = Image.fromarray(token_map_image(data, mode, cell_px), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def png_cell_px(n: int, requested: str | None) -> int:
    """The cell size for a PNG request; ``ValueError`` with a message when out of bounds."""
    if requested in (None, ""):
        return default_cell_px(n)
    try:
        cell = int(requested)
    except ValueError:
        raise ValueError("cell must be a whole number of pixels") from None
    low, high = PNG_CELL_RANGE
    if not low <= cell <= high:
        raise ValueError(f"cell must be between {low} and {high} pixels")
    if n * cell > PNG_MAX_SIDE:
        raise ValueError(f"{n} cells of {cell} px make an image wider than {PNG_MAX_SIDE} px; "
                         f"use cell={max(low, PNG_MAX_SIDE // n)} or less")
    return cell


