"""The logit lens at every block (and sub-layer point) and position of one prompt.

Points, in order (``point_labels``): ``embeddings`` (the residual entering
block 0), then per layer l ``l: after attention`` (only with ``sublayers``)
and ``l: after MLP`` (the block output). Each point's state goes through the
model's final norm, the unembedding and the model's final logit soft-cap
(Gemma 2: ``cap * tanh(z / cap)``), exactly as the model's own head does, so
the last point's logits are the model's logits. Invariants (P points, T positions):

* ``top_ids`` (P, T) int32 and ``top_probs`` (P, T) float32: the top-1 token
  and its probability (softmax in float32 over the whole vocabulary), for the
  positions ``decoded_from .. T-1`` (the last ``positions``); earlier
  positions hold id -1 and probability NaN (not decoded). Why not every
  position: one decoded state costs a V x d product (V = 49,152, d = 576 on the
  demo model), so P x T states cost P * V * d / (2 * parameters) forwards;
  61 points x 512 positions of the demo model are ~6 forward+backward passes,
  three times the run's whole budget. A window of positions is what the page
  shows at a time;
* the top-1 probability is ``1 / sum_v exp(z_v - max z)``, computed in place
  on each chunk's logits (no log-softmax copy);
* at the last position, every point (always decoded in full): ``final_prob``
  and ``final_rank`` (0 = top) of the model's final prediction, ``entropy``
  (nats) and ``kl`` = KL(final || point) in nats, so the last point has rank 0
  and KL 0;
* memory: the float32 logits of at most ``chunk`` states exist at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latent_atlas.lm.adapters import soft_cap
from latent_atlas.lm.loading import LanguageModel

__all__ = ["LensTable", "lens_logits", "lens_points", "lens_table", "top1"]


@dataclass
class LensTable:
    labels: list[str]
    top_ids: np.ndarray     # (P, T) int32, -1 before decoded_from
    top_probs: np.ndarray   # (P, T) float32, NaN before decoded_from
    final_prob: np.ndarray  # (P,) float32
    final_rank: np.ndarray  # (P,) int32
    entropy: np.ndarray     # (P,) float32
    kl: np.ndarray          # (P,) float32
    final_id: int
    decoded_from: int = 0   # first decoded position


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


def lens_logits(lm: LanguageModel, states: Tensor) -> Tensor:
    """float32 logits (n, V) of states (n, d): final norm, unembedding, the model's soft-cap."""
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    logits = unembed(norm(states.to(device=lm.device, dtype=lm.dtype))).float()
    return soft_cap(logits, lm.adapter.softcap_of(lm.model))


def top1(lm: LanguageModel, states: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """(ids int32, probs float32), each (n,), on the CPU: the top-1 token of each state and its probability."""
    n = states.shape[0]
    ids = torch.empty(n, dtype=torch.int32)
    probs = torch.empty(n, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            z = lens_logits(lm, states[start:start + chunk])
            top, index = z.max(dim=-1)
            # p(top) = 1 / sum exp(z - top), in place on this chunk's logits
            mass = z.sub_(top[:, None]).exp_().sum(dim=-1)
            ids[start:start + chunk] = index.int().cpu()
            probs[start:start + chunk] = mass.reciprocal().cpu()
    return ids, probs


def lens_table(lm: LanguageModel, labels: list[str], states: Tensor, positions: int | None = None,
               chunk: int = 256) -> LensTable:
    """Decode every point at the last ``positions`` positions (None: all); see the module docstring."""
    p, t, d = states.shape
    first = 0 if positions is None else max(0, t - positions)
    ids = torch.full((p, t), -1, dtype=torch.int32)
    probs = torch.full((p, t), float("nan"), dtype=torch.float32)
    window = states[:, first:].reshape(-1, d)
    top_ids, top_probs = top1(lm, window, chunk)
    ids[:, first:] = top_ids.reshape(p, t - first)
    probs[:, first:] = top_probs.reshape(p, t - first)
    with torch.inference_mode():
        # clamped so that a zero probability never makes 0 * -inf in the entropy or the KL
        last = torch.log_softmax(lens_logits(lm, states[:, -1]), dim=-1).clamp_min(-1e4)  # (P, V)
    final = last[-1]
    final_id = int(final.argmax())
    p_final = final.exp()
    final_logp = last[:, final_id]
    rank = (last > final_logp[:, None]).sum(dim=-1)
    entropy = -(last.exp() * last).sum(dim=-1)
    kl = (p_final[None] * (final[None] - last)).sum(dim=-1).clamp_min(0)
    return LensTable(
        labels=labels,
        top_ids=ids.numpy(),
        top_probs=probs.numpy(),
        final_prob=final_logp.exp().cpu().numpy().astype(np.float32),
        final_rank=rank.cpu().numpy().astype(np.int32),
        entropy=entropy.cpu().numpy().astype(np.float32),
        kl=kl.cpu().numpy().astype(np.float32),
        final_id=final_id,
        decoded_from=first,
    )
