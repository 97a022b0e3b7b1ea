"""Token embeddings: the prompt's tokens among a vocabulary sample, projected, and their neighbours.

Invariants:

* rows of the projection are the prompt's distinct token ids in order of first
  appearance, then ``sample`` other ids drawn without replacement with the
  seed (never one of the prompt's); ``prompt_rows`` says how many come first;
* 2D and 3D coordinates come from one PCA fit (the 2D ones are the first two
  components of the 3D fit) or from two UMAP runs with the seed;
* neighbours are over the *whole* vocabulary by cosine of the embedding rows,
  the token itself excluded; a row of zeros has cosine 0 with everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latent_atlas.reduce import pca_fit, umap_embed

__all__ = ["EmbeddingView", "embedding_view", "nearest_tokens"]


@dataclass
class EmbeddingView:
    ids: np.ndarray          # (N,) int32 projected token ids
    coords2: np.ndarray      # (N, 2) float32
    coords3: np.ndarray      # (N, 3) float32
    prompt_rows: int         # the first prompt_rows ids are the prompt's distinct tokens
    explained: list[float]   # PCA: explained variance ratio of the 3 components; UMAP: []


def _sample_ids(vocab: int, exclude: np.ndarray, sample: int, seed: int) -> np.ndarray:
    pool = np.setdiff1d(np.arange(vocab, dtype=np.int64), exclude)
    sample = min(sample, pool.size)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=sample, replace=False)) if sample else pool[:0]


def embedding_view(weight: Tensor, prompt_ids: list[int], sample: int, seed: int,
                   projection: str = "pca") -> EmbeddingView:
    """Project the prompt's tokens and a vocabulary sample of ``weight`` (V, d) to 2D and 3D."""
    distinct = np.array(list(dict.fromkeys(int(i) for i in prompt_ids)), dtype=np.int64)
    ids = np.concatenate([distinct, _sample_ids(weight.shape[0], distinct, sample, seed)])
    rows = weight[torch.from_numpy(ids).to(weight.device)].detach().float().cpu().numpy()
    n_comp = min(3, rows.shape[0], rows.shape[1])
    if projection == "umap" and rows.shape[0] > 4:
        coords3 = umap_embed(rows, 3, seed)
        coords2 = umap_embed(rows, 2, seed)
        explained: list[float] = []
    else:
        fit = pca_fit(rows, n_comp)
        coords = fit.transform(rows)
        coords3 = np.zeros((rows.shape[0], 3), dtype=np.float32)
        coords3[:, :n_comp] = coords
        coords2 = coords3[:, :2].copy()
        explained = [float(x) for x in fit.explained_variance_ratio]
    return EmbeddingView(ids.astype(np.int32), np.asarray(coords2, np.float32),
                         np.asarray(coords3, np.float32), int(distinct.size), explained)


def nearest_tokens(weight: Tensor, ids: list[int], k: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour ids int32, cosines float32), each (len(ids), k), over the whole vocabulary."""
    query = weight[torch.tensor(ids, device=weight.device)].float()
    query = query / query.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = min(k, weight.shape[0] - 1)
    best_val = torch.full((len(ids), k + 1), -2.0, device=weight.device)
    best_idx = torch.zeros((len(ids), k + 1), dtype=torch.long, device=weight.device)
    with torch.no_grad():
        for start in range(0, weight.shape[0], chunk):
            part = weight[start:start + chunk].float()
            part = part / part.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sims = query @ part.T
            own = torch.tensor(ids, device=weight.device)[:, None] - start
            valid = (own >= 0) & (own < part.shape[0])
            sims[valid.nonzero(as_tuple=True)[0], own[valid]] = -2.0  # never one's own neighbour
            vals = torch.cat([best_val, sims], dim=1)
            idx = torch.cat([best_idx, torch.arange(start, start + part.shape[0], device=weight.device)
                             .expand(len(ids), -1)], dim=1)
            top = vals.topk(k + 1, dim=1)
            best_val, best_idx = top.values, idx.gather(1, top.indices)
    return (best_idx[:, :k].cpu().numpy().astype(np.int32), best_val[:, :k].cpu().numpy().astype(np.float32))
