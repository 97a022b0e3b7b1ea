"""Logit effects of SAE latents and a one-line label per latent.

* ``logit_effects``: each decoder row (``source.decoder_rows``) through the model's
  unembedding matrix, ``row @ W_U^T`` (the direct effect of the direction on the logits,
  without the final norm, as Neuronpedia and SAEDashboard show it), top and bottom
  ``LOGIT_K`` tokens. Computed in latent blocks, so memory is ``block x vocab``.
* ``latent_labels``: "most frequent top-activating token / top logit token"; ties between
  equally frequent tokens go to the one with the larger activation (the earlier example).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["LOGIT_K", "latent_labels", "logit_effects", "most_frequent_top_token"]

LOGIT_K = 10


def logit_effects(rows: np.ndarray, unembedding: torch.Tensor, k: int = LOGIT_K,
                  block: int = 1024) -> dict[str, np.ndarray]:
    """``logit_top_id/val`` and ``logit_bottom_id/val`` (d, k): the extreme entries of ``rows @ W_U^T``.

    ``unembedding`` is the (vocab, d_in) weight; the products run on its device in float32.
    Top values are descending, bottom values ascending.
    """
    weight = unembedding.detach().to(torch.float32)
    d = rows.shape[0]
    k = min(k, int(weight.shape[0]))
    out = {"logit_top_id": np.zeros((d, k), np.int32), "logit_top_val": np.zeros((d, k), np.float32),
           "logit_bottom_id": np.zeros((d, k), np.int32), "logit_bottom_val": np.zeros((d, k), np.float32)}
    for start in range(0, d, block):
        stop = min(start + block, d)
        chunk = torch.from_numpy(np.ascontiguousarray(rows[start:stop], dtype=np.float32)).to(weight.device)
        logits = chunk @ weight.T
        top = torch.topk(logits, k, dim=1, largest=True, sorted=True)
        bottom = torch.topk(logits, k, dim=1, largest=False, sorted=True)
        out["logit_top_id"][start:stop] = top.indices.cpu().numpy()
        out["logit_top_val"][start:stop] = top.values.cpu().numpy()
        out["logit_bottom_id"][start:stop] = bottom.indices.cpu().numpy()
        out["logit_bottom_val"][start:stop] = bottom.values.cpu().numpy()
    return out


def most_frequent_top_token(top_token: np.ndarray, token_id: np.ndarray) -> np.ndarray:
    """(d,) int64: the vocabulary id seen most often among each latent's top examples (-1: none)."""
    d = top_token.shape[0]
    out = np.full(d, -1, np.int64)
    for latent in range(d):
        examples = top_token[latent][top_token[latent] >= 0]
        if examples.size == 0:
            continue
        ids = token_id[examples]
        values, first, counts = np.unique(ids, return_index=True, return_counts=True)
        best = np.lexsort([first, -counts])[0]  # most frequent, then the earliest (largest act)
        out[latent] = values[best]
    return out


def latent_labels(top_token: np.ndarray, token_id: np.ndarray, logit_top_id: np.ndarray,
                  decode: Callable[[int], str]) -> list[str]:
    """One label per latent: "<frequent top token> / <top logit token>" (``(dead)`` if it never fired)."""

    def show(text: str) -> str:
        stripped = text.strip()
        return stripped if stripped and stripped == text else repr(text)

    frequent = most_frequent_top_token(top_token, token_id)
    cache: dict[int, str] = {}

    def name(token: int) -> str:
        if token not in cache:
            cache[token] = show(decode(token))
        return cache[token]

    return [f"{'(dead)' if f < 0 else name(int(f))} / {name(int(logit_top_id[i, 0]))}"
            for i, f in enumerate(frequent)]
