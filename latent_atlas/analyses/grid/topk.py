"""Reducing rows of logits to top-k ids, probabilities and entropy, without full sorts.

Pure torch functions: ``topk_rows`` (a two-level top-k equal to ``torch.topk``
up to the order of ties) and ``reduce_logits`` (top-k, softmax probabilities
of the full row and entropy in nats, chunk by chunk, in place).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EXP_FLOOR", "TOPK_BLOCK", "reduce_logits", "topk_rows"]

TOPK_BLOCK = 128  # block width of the two-level top-k
# Shifted logits below this are raised to it before exp: exp(-80) = 1.8e-35, so even a
# vocabulary of a million such terms changes no float32 sum, while exp below about -87
# (float32 underflow) takes a slow path that is some 50x slower on x86 CPUs.
EXP_FLOOR = -80.0


def topk_rows(z: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """``torch.topk(z, k, dim=1)`` (values descending, int64 indices) in two cheap levels.

    The maximum of every block of ``block`` columns is one vectorised pass; the
    top-k elements of a row lie in the k blocks with the largest maxima (a
    block holding a top-k element e is outranked only by blocks whose maxima
    exceed e, and each of those maxima is itself a top-k element, so fewer
    than k blocks outrank it), so a top-k over the ``k * block`` candidates
    finishes the job. Equal values may come out in a different order than
    ``torch.topk``'s.
    """
    rows, width = z.shape
    full = width // block
    if full < 2 * k or rows == 0:
        return torch.topk(z, k, dim=1)
    maxima = z[:, : full * block].unflatten(1, (full, block)).amax(dim=2)
    if width > full * block:
        maxima = torch.cat([maxima, z[:, full * block :].amax(dim=1, keepdim=True)], dim=1)
    chosen = torch.topk(maxima, k, dim=1).indices
    offsets = torch.arange(block, device=z.device)
    index = (chosen.unsqueeze(2) * block + offsets).reshape(rows, k * block)
    outside = index >= width
    candidates = z.gather(1, index.clamp_(max=width - 1))
    candidates.masked_fill_(outside, float("-inf"))
    values, picked = torch.topk(candidates, k, dim=1)
    return values, index.gather(1, picked)


def row_dots(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` for rows of two (r, V) tensors, without an (r, V) temporary."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(a[i], b[i]) for i in range(a.shape[0])])


def reduce_logits(
    logits: Tensor, k: int, *, chunk_rows: int | None = None, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` ids (int64), their probabilities and the entropy (nats) of rows of logits (B, V).

    ``logits`` must be float32 and may be overwritten (it is used as scratch).
    Rows are processed ``chunk_rows`` at a time (default: all) so that the
    passes over one chunk stay in cache. Probabilities are the softmax of the
    full row: ``p_i = exp(l_i - m) / Z`` with ``m`` the row maximum; entropy
    ``log Z - sum(e * (l - m)) / Z`` with ``e = exp(max(l - m, EXP_FLOOR))``.
    ``scratch`` (at least (chunk, V) float32) saves an allocation per call.
    """
    if logits.dtype != torch.float32 or logits.ndim != 2:
        raise ValueError("reduce_logits expects a 2-d float32 tensor")
    rows, vocab = logits.shape
    k = min(k, vocab)
    ids = torch.empty((rows, k), dtype=torch.long, device=logits.device)
    probs = torch.empty((rows, k), dtype=torch.float32, device=logits.device)
    entropy = torch.empty((rows,), dtype=torch.float32, device=logits.device)
    step = rows if chunk_rows is None else max(1, chunk_rows)
    if scratch is None or scratch.shape[0] < min(step, rows) or scratch.shape[1] != vocab:
        scratch = torch.empty((min(step, rows), vocab), dtype=torch.float32, device=logits.device)
    with torch.inference_mode():
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            z = logits[start:stop]
            e = scratch[: stop - start]
            top_v, top_i = topk_rows(z, k)
            z.sub_(top_v[:, :1]).clamp_(min=EXP_FLOOR)
            torch.exp(z, out=e)
            total = e.sum(dim=1)
            weighted = row_dots(e, z)
            entropy[start:stop] = (torch.log(total) - weighted / total).clamp_min_(0.0)
            probs[start:stop] = torch.exp(top_v - top_v[:, :1]) / total.unsqueeze(1)
            ids[start:stop] = top_i
    return ids, probs, entropy
