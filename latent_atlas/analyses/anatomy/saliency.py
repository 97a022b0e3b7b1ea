"""Gradient saliency of each input token for one next-token score.

The score is ``logit(target)`` at the last position, minus ``logit(foil)`` for
a contrastive score (``forward.score_of``); the input is each token's embedding
row x_t (position embeddings, where the model has them, are added inside the
model and are not attributed). Per token t:

* ``grad_norm[t] = || dS/dx_t ||``;
* ``grad_input[t] = sum_d x_td dS/dx_td``;
* integrated gradients against a baseline x' (``baseline``: ``"mean"``, the
  vocabulary's mean embedding row at every position; ``"pad"``, the pad
  token's row; or ``"zero"``):
  ``ig[t] = sum_d (x - x')_td * mean_k dS/dx_td (x' + alpha_k (x - x'))`` with
  the midpoint rule ``alpha_k = (k + 1/2) / m``, k = 0..m-1, evaluated
  ``batch`` alphas per forward.

Completeness: ``sum_t ig[t]`` approximates ``S(x) - S(x')``; the midpoint
rule's error shrinks like 1/m^2 along a smooth path, and
``integrated_gradients`` returns the gap (``completeness_error``) so the page
can show it. The zero baseline is poor for pre-norm models with RMSNorm
(Llama): the first norm is scale-invariant, so S hardly changes along the
path except within ~sqrt(eps) of x' = 0, where the steps never land (the
gap then stays ~15% of the score difference however many steps). The pad
row is often that zero row too (``padding_idx``). The default mean baseline
keeps the path away from 0, and the gap falls like 1/m^2 on GPT-2 and Llama
(tests/unit/anatomy/test_run.py).

The first token (``keep_first``, on by default): on the demo model (SmolLM2)
the first position is an attention sink whose residual grows to a norm of
~22,600 at layer 11 (README, Findings). Moving its embedding from the
baseline switches that on abruptly somewhere along the path: S(alpha) for
"The capital of France is" jumps 17.3 -> -2.3 -> 16.9 between alpha = 0.125
and 0.2, so no Riemann sum converges (completeness error 187 % of
S(x) - S(x') at 16 steps, 175 % at 64, 160 % at 256). With ``keep_first``
the first position stays at its own embedding on the whole path (so it gets
no attribution: x - x' is 0 there) and S(alpha) is smooth: 3.1 % at 16
steps, 0.01 % at 64. For a one-token prompt ``keep_first`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latent_atlas.analyses.anatomy.forward import score_of
from latent_atlas.lm.loading import LanguageModel

__all__ = ["IntegratedGradients", "gradient_scores", "integrated_gradients"]


def gradient_scores(embeddings: Tensor, gradient: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(grad_norm, grad_input), each (T,) float32, from (T, d) embeddings and gradient."""
    g = gradient.float()
    return (g.norm(dim=-1).numpy().astype(np.float32),
            (embeddings.float() * g).sum(dim=-1).numpy().astype(np.float32))


@dataclass
class IntegratedGradients:
    attributions: np.ndarray   # (T,) float32
    score: float               # S(x)
    baseline_score: float      # S(x')
    steps: int

    @property
    def completeness_error(self) -> float:
        """|sum of attributions - (S(x) - S(x'))|."""
        return abs(float(self.attributions.sum()) - (self.score - self.baseline_score))


def _score(lm: LanguageModel, embeds: Tensor, target: int, foil: int | None) -> Tensor:
    out = lm.model(inputs_embeds=embeds, use_cache=False)
    return score_of(out.logits.float(), target, foil)


def integrated_gradients(lm: LanguageModel, ids: list[int], target: int, foil: int | None,
                         steps: int, batch: int, baseline: str = "mean",
                         progress: Callable[[int], None] | None = None,
                         keep_first: bool = True) -> IntegratedGradients:
    """Integrated gradients with ``steps`` midpoint alphas, ``batch`` per forward (see the module docstring)."""
    if steps < 1:
        raise ValueError("integrated gradients need at least one step")
    model = lm.model
    input_ids = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        embed = lm.adapter.token_embedding_of(model)
        x = embed(input_ids)[0]  # (T, d)
        if baseline == "zero":
            base = torch.zeros_like(x)
        elif baseline == "mean":
            base = embed.weight.mean(dim=0).expand_as(x)
        elif baseline == "pad":
            base = embed(torch.tensor([lm.tokenizer.pad_token_id], device=lm.device))[0].expand_as(x)
        else:
            raise ValueError(f"unknown baseline {baseline!r} (use 'mean', 'pad' or 'zero')")
        if keep_first and x.shape[0] > 1:  # the attention sink stays put (module docstring)
            base = base.clone()
            base[0] = x[0]
        score = float(_score(lm, x[None], target, foil)[0])
        base_score = float(_score(lm, base[None], target, foil)[0])
    delta = x - base
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    done = 0
    for start in range(0, steps, batch):
        a = alphas[start:start + batch].to(device=x.device, dtype=x.dtype)
        path = (base[None] + a[:, None, None] * delta[None]).detach().requires_grad_(True)
        with torch.enable_grad():
            s = _score(lm, path, target, foil).sum()
            (grad,) = torch.autograd.grad(s, path)
        total += grad.float().sum(dim=0)
        done += len(a)
        if progress is not None:
            progress(done)
    attributions = (delta.float() * total / steps).sum(dim=-1).cpu().numpy().astype(np.float32)
    return IntegratedGradients(attributions, score, base_score, steps)
