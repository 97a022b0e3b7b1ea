"""Attention patterns: the stored tensor, the thumbnail sheet and attention rollout.

Invariants:

* ``pack_patterns`` stores every pattern as float16 in one array of shape
  (L * H, T, T) with row ``layer * H + head``, so the page reads one head as
  one row (``ArtifactStore.read_rows``) and never the whole tensor; H is the
  number of *query* heads (grouped-query models repeat a key/value head for
  each query head of its group, and each query head has its own pattern);
* ``thumbnails`` pools each pattern to at most ``size`` x ``size`` cells (keys
  summed within a block, queries averaged, so pooled rows still sum to 1) and
  maps each thumbnail to uint8 as ``255 * sqrt(pooled / its own maximum)`` (the
  square root lifts the faint spread-out patterns of early layers into view): a
  sheet of L x H small images the page loads as one array;
* ``rollout`` is attention rollout (Abnar & Zuidema 2020): per layer the
  head-mean pattern with the residual added, ``A' = (A + I) / 2`` (rows still
  sum to 1), multiplied through the layers, ``R_l = A'_l R_{l-1}``, ``R_0 = A'_0``;
  row i of ``R_l`` says how much each input token flows into position i after
  block l. Computed in float32 (each step is a row-stochastic product, so
  rounding does not grow: rows sum to 1 within ~1e-6 after 30 layers) and
  stored as float16.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["THUMB_SIZE", "pack_patterns", "pool_pattern", "rollout", "thumbnails"]

THUMB_SIZE = 32


def pack_patterns(attentions: list[Tensor]) -> np.ndarray:
    """(L * H, T, T) float16 from L tensors (H, T, T), converted one layer at a time."""
    n_layers = len(attentions)
    heads, t, _ = attentions[0].shape
    out = np.empty((n_layers * heads, t, t), dtype=np.float16)
    for layer, pattern in enumerate(attentions):
        # torch's vectorised float16 conversion (numpy's is ~10x slower on 512 x 512 patterns)
        out[layer * heads:(layer + 1) * heads] = pattern.to(torch.float16).cpu().numpy()
    return out


def _blocks(t: int, size: int) -> np.ndarray:
    """Start of each of min(t, size) nearly equal blocks of 0..t-1, plus t."""
    parts = min(t, size)
    return np.linspace(0, t, parts + 1).round().astype(np.int64)


def pool_pattern(pattern: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Pool a (T, T) pattern to (s, s), s = min(T, size): mean over query blocks, sum over key blocks."""
    edges = _blocks(pattern.shape[0], size)
    keys = np.add.reduceat(pattern.astype(np.float32), edges[:-1], axis=1)
    sums = np.add.reduceat(keys, edges[:-1], axis=0)
    return sums / np.diff(edges)[:, None]


def thumbnails(attentions: list[Tensor], size: int = THUMB_SIZE) -> np.ndarray:
    """(L * H, s, s) uint8: each head's pooled pattern, square-root scaled by its own maximum to 0..255."""
    heads = attentions[0].shape[0]
    t = attentions[0].shape[-1]
    s = min(t, size)
    out = np.zeros((len(attentions) * heads, s, s), dtype=np.uint8)
    for layer, pattern in enumerate(attentions):
        values = pattern.float().cpu().numpy()
        for head in range(heads):
            pooled = pool_pattern(values[head], size)
            peak = float(pooled.max())
            if peak > 0:
                out[layer * heads + head] = np.rint(np.sqrt(pooled / peak) * 255).astype(np.uint8)
    return out


def rollout(attentions: list[Tensor]) -> np.ndarray:
    """(L, T, T) float16 attention rollout through layers 0..L-1 (see the module docstring)."""
    t = attentions[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float32, device=attentions[0].device)
    joint = eye
    out = np.empty((len(attentions), t, t), dtype=np.float16)
    for layer, pattern in enumerate(attentions):
        mean = pattern.float().mean(dim=0)
        step = 0.5 * (mean + eye)
        joint = step @ joint
        out[layer] = joint.to(torch.float16).cpu().numpy()
    return out
