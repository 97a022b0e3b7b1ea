"""The logit lens: what a residual-stream state decodes to.

``logit_lens`` applies the model's final norm and unembedding to any state of
width ``d_model`` and returns the top-k tokens with their softmax
probabilities. Invariants: the model is not modified, probabilities are
computed in float32 over the whole vocabulary (after the model's final logit
soft-cap, if it has one: Gemma 2/3), and memory stays bounded by processing
states in chunks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latent_atlas.lm.adapters import soft_cap
from latent_atlas.lm.loading import LanguageModel

__all__ = ["logit_lens"]


def logit_lens(
    lm: LanguageModel,
    states: Tensor | np.ndarray,
    k: int = 5,
    *,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` next tokens of ``states`` (..., d_model) through final norm + unembedding.

    Returns ``(top_ids, top_probs)``, each of shape (..., k), on the CPU
    (``int64`` ids, ``float32`` probabilities, descending).
    """
    tensor = torch.as_tensor(states)
    if tensor.shape[-1] != lm.d_model:
        raise ValueError(f"states have width {tensor.shape[-1]}, the model has d_model {lm.d_model}")
    k = min(k, lm.vocab_size)
    if k < 1:
        raise ValueError("k must be at least 1")
    lead = tensor.shape[:-1]
    flat = tensor.reshape(-1, lm.d_model)
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    cap = lm.adapter.softcap_of(lm.model)
    ids: list[Tensor] = []
    probs: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, flat.shape[0], chunk):
            part = flat[start : start + chunk].to(device=lm.device, dtype=lm.dtype)
            logits = soft_cap(unembed(norm(part)).float(), cap)
            p, i = torch.softmax(logits, dim=-1).topk(k, dim=-1)
            ids.append(i.cpu())
            probs.append(p.cpu())
    top_ids = torch.cat(ids) if ids else torch.empty(0, k, dtype=torch.long)
    top_probs = torch.cat(probs) if probs else torch.empty(0, k)
    return top_ids.reshape(*lead, k), top_probs.reshape(*lead, k)
