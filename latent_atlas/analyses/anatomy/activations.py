"""Token activations: layers x tokens norms and each token's top MLP neurons.

Invariants (T tokens, L layers, k neurons):

* ``resid_norm[l, t]`` is the L2 norm of the residual after block l (before the
  final norm); ``attn_norm`` and ``mlp_norm`` are the norms of what attention
  and the MLP add to the residual at (l, t);
* ``neuron_ids[l, t]`` (int32) and ``neuron_values[l, t]`` (float32) are the
  k neurons with the largest |activation| at (l, t), ordered by decreasing
  |activation|; values keep their sign (SwiGLU activations can be negative).
  A neuron is an input coordinate of the MLP's down projection.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["norms", "top_neurons"]


def norms(states: list[Tensor]) -> np.ndarray:
    """(L, T) float32 L2 norms of L tensors (T, d)."""
    return torch.stack([s.float().norm(dim=-1) for s in states]).numpy().astype(np.float32)


def top_neurons(neurons: list[Tensor], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values), each (L, T, k): the k largest |activation| neurons per (layer, token)."""
    k = min(k, neurons[0].shape[-1])
    ids, values = [], []
    for acts in neurons:
        top = acts.float().abs().topk(k, dim=-1).indices
        ids.append(top)
        values.append(acts.float().gather(-1, top))
    return (torch.stack(ids).numpy().astype(np.int32), torch.stack(values).numpy().astype(np.float32))
