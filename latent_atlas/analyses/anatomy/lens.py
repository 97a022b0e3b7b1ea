"""The logit lens at every block (and sub-layer point) and position of one prompt.

Points, in order (``point_labels``): ``embeddings`` (the residual entering
block 0), then per layer l ``l: after attention`` (only with ``sublayers``)
and ``l: after MLP`` (the block output). Each point's state goes through the
model's final norm and unembedding (``latent_atlas.lm.lens`` does the same for
one state). Invariants (P points, T positions):

* ``top_ids`` (P, T) int32 and ``top_probs`` (P, T) float32: the top-1 token
  and its probability (softmax in float32 over the whole vocabulary);
* the last point is the last block's output, so its logits are the model's
  own logits (the tests check it);
* at the last position, per point: ``final_prob`` and ``final_rank`` (0 =
  top) of the model's final prediction, ``entropy`` (nats) and ``kl`` =
  KL(final || point) in nats, so the last point has rank 0 and KL 0;
* memory: the logits of at most ``chunk`` states exist at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latent_atlas.lm.loading import LanguageModel

__all__ = ["LensTable", "lens_points", "lens_table"]


@dataclass
class LensTable:
    labels: list[str]
    top_ids: np.ndarray     # (P, T) int32
    top_probs: np.ndarray   # (P, T) float32
    final_prob: np.ndarray  # (P,) float32
    final_rank: np.ndarray  # (P,) int32
    entropy: np.ndarray     # (P,) float32
    kl: np.ndarray          # (P,) float32
    final_id: int


def lens_points(block_input: Tensor, resid_mid: list[Tensor], resid_post: list[Tensor],
                sublayers: bool) -> tuple[list[str], Tensor]:
    """(labels, states (P, T, d)) in the order of the module docstring."""
    labels = ["embeddings"]
    states = [block_input]
    for layer, (mid, post) in enumerate(zip(resid_mid, resid_post, strict=True)):
        if sublayers:
            labels.append(f"{layer}: after attention")
            states.append(mid)
        labels.append(f"{layer}: after MLP")
        states.append(post)
    return labels, torch.stack(states)


def _logits(lm: LanguageModel, states: Tensor) -> Tensor:
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    return unembed(norm(states.to(device=lm.device, dtype=lm.dtype))).float()


def lens_table(lm: LanguageModel, labels: list[str], states: Tensor, chunk: int = 256) -> LensTable:
    """Decode every (point, position) state; see the module docstring."""
    p, t, d = states.shape
    flat = states.reshape(p * t, d)
    ids = torch.empty(p * t, dtype=torch.int32)
    probs = torch.empty(p * t, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, flat.shape[0], chunk):
            logp = torch.log_softmax(_logits(lm, flat[start:start + chunk]), dim=-1)
            top = logp.max(dim=-1)
            ids[start:start + chunk] = top.indices.int().cpu()
            probs[start:start + chunk] = top.values.exp().cpu()
        # clamped so that a zero probability never makes 0 * -inf in the entropy or the KL
        last = torch.log_softmax(_logits(lm, states[:, -1]), dim=-1).clamp_min(-1e4)  # (P, V)
    final = last[-1]
    final_id = int(final.argmax())
    p_final = final.exp()
    final_logp = last[:, final_id]
    rank = (last > final_logp[:, None]).sum(dim=-1)
    entropy = -(last.exp() * last).sum(dim=-1)
    kl = (p_final[None] * (final[None] - last)).sum(dim=-1).clamp_min(0)
    return LensTable(
        labels=labels,
        top_ids=ids.reshape(p, t).numpy(),
        top_probs=probs.reshape(p, t).numpy(),
        final_prob=final_logp.exp().cpu().numpy().astype(np.float32),
        final_rank=rank.cpu().numpy().astype(np.int32),
        entropy=entropy.cpu().numpy().astype(np.float32),
        kl=kl.cpu().numpy().astype(np.float32),
        final_id=final_id,
    )
