"""The logit lens: what a residual-stream state decodes to.

``logit_lens`` applies the model's final norm and unembedding to any state of
width ``d_model`` and returns the top-k tokens with their softmax
probabilities. Invariants: the model is not modified, probabilities are
computed in float32 over the whole vocabulary (after the model's final logit
soft-cap, if it has one: Gemma 2/3), and memory stays bounded by processing
states in chunks. ``lens_logits`` is the one place the lens's logits are
computed (final norm, unembedding, soft-cap), used by every run kind's lens; it
moves states to each module's device, so a model spread over several devices
(``lm.device_map``) reads out correctly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latent_atlas.lm.adapters import soft_cap
from latent_atlas.lm.device import to_module
from latent_atlas.lm.loading import LanguageModel

__all__ = ["lens_logits", "logit_lens"]


def lens_logits(lm: LanguageModel, states: Tensor) -> Tensor:
    """Logits (..., V) float32 of residual states (..., d_model): final norm, unembedding, final soft-cap.

    The result is on the unembedding's device; the caller runs this under
    ``torch.inference_mode`` (or ``no_grad``) when it wants no graph.
    """
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    normed = norm(to_module(states.to(dtype=lm.dtype), norm))
    logits = unembed(to_module(normed, unembed)).float()
    return soft_cap(logits, lm.adapter.softcap_of(lm.model))


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
    ids: list[Tensor] = []
    probs: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, flat.shape[0], chunk):
            logits = lens_logits(lm, flat[start : start + chunk])
            p, i = torch.softmax(logits, dim=-1).topk(k, dim=-1)
            ids.append(i.cpu())
            probs.append(p.cpu())
    top_ids = torch.cat(ids) if ids else torch.empty(0, k, dtype=torch.long)
    top_probs = torch.cat(probs) if probs else torch.empty(0, k)
    return top_ids.reshape(*lead, k), top_probs.reshape(*lead, k)
