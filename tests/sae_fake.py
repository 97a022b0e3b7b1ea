"""A small synthetic harvest result that follows the SAE contract's array names, shapes and dtypes.

``fake_harvest`` builds, from a seeded random sparse activation matrix, every
array a ``sae`` run stores (the array contract in ``latent_atlas/analyses/sae/run.py``) computed
the straightforward way, plus a summary with ``labels`` and ``vocab``. Views,
the cloud and the bench are built and tested on it before (and besides) a real
harvest. Pure numpy; a test helper, not a substitute for the real run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EDGE_NAMES = ("cosine", "jaccard", "coact")


def save_random_sae(directory: Any, d_sae: int = 64) -> None:
    """A sparse random StandardSAE on the tiny GPT-2's residual after block 1, saved by sae-lens."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from tiny_models import D_MODEL

    meta = SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny")
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=d_sae, metadata=meta))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        sae.b_enc.fill_(-0.4)
    sae.save_model(str(directory))


def _top_edges(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    matrix = matrix.astype(np.float64).copy()
    np.fill_diagonal(matrix, -np.inf)
    d = matrix.shape[0]
    k = min(k, d - 1)
    idx = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(matrix, idx, axis=1)
    out_idx = np.full((d, k), -1, dtype=np.int32)
    out_val = np.full((d, k), np.nan, dtype=np.float32)
    good = np.isfinite(val) & (val > 0)
    out_idx[good] = idx[good]
    out_val[good] = val[good]
    return out_idx, out_val


def fake_harvest(d_sae: int = 24, d_in: int = 8, n_tokens: int = 400, *, seq_len: int = 20,
                 vocab_size: int = 50, top_k: int = 5, window: int = 3, interval_bins: int = 3,
                 interval_per_bin: int = 2, hist_bins: int = 8, edges_k: int = 4, density: float = 0.08,
                 seed: int = 0, decoder: np.ndarray | None = None,
                 acts: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, summary) of a fake ``sae`` run; ``acts`` (n_tokens, d_sae) overrides the random ones."""
    rng = np.random.default_rng(seed)
    if acts is None:
        fires = rng.random((n_tokens, d_sae)) < density
        acts = np.where(fires, rng.gamma(2.0, 1.0, (n_tokens, d_sae)), 0.0).astype(np.float32)
    acts = np.asarray(acts, dtype=np.float32)
    n_tokens, d_sae = acts.shape
    if decoder is None:
        decoder = rng.standard_normal((d_sae, d_in)).astype(np.float32)
        decoder /= np.linalg.norm(decoder, axis=1, keepdims=True)
    decoder = np.asarray(decoder, dtype=np.float32)
    d_in = decoder.shape[1]
    token_id = rng.integers(0, vocab_size, n_tokens).astype(np.int32)
    token_doc = (np.arange(n_tokens) // seq_len).astype(np.int32)
    token_pos = (np.arange(n_tokens) % seq_len).astype(np.int32)

    fire = acts > 0
    fire_count = fire.sum(axis=0).astype(np.int64)
    sums = acts.sum(axis=0, dtype=np.float64)
    mean_act = np.where(fire_count > 0, sums / np.maximum(fire_count, 1), 0.0).astype(np.float32)
    positive = acts[fire]
    low = float(positive.min()) if positive.size else 1e-3
    high = float(positive.max()) if positive.size else 1.0
    hist_edges = np.logspace(np.log10(max(low, 1e-6)), np.log10(high * 1.0001), hist_bins + 1).astype(np.float32)
    hist_counts = np.zeros((d_sae, hist_bins), dtype=np.int32)
    for j in range(d_sae):
        values = acts[fire[:, j], j]
        hist_counts[j] = np.histogram(np.clip(values, hist_edges[0], hist_edges[-1]), bins=hist_edges)[0]

    top_value = np.full((d_sae, top_k), np.nan, dtype=np.float32)
    top_token = np.full((d_sae, top_k), -1, dtype=np.int64)
    per = interval_bins * interval_per_bin
    interval_value = np.full((d_sae, per), np.nan, dtype=np.float32)
    interval_token = np.full((d_sae, per), -1, dtype=np.int64)
    for j in range(d_sae):
        where = np.flatnonzero(fire[:, j])
        order = where[np.argsort(-acts[where, j], kind="stable")][:top_k]
        top_value[j, :len(order)] = acts[order, j]
        top_token[j, :len(order)] = order
        if where.size:
            edges = np.linspace(0, acts[where, j].max(), interval_bins + 1)
            at = 0
            for b in range(interval_bins):
                inside = where[(acts[where, j] > edges[b]) & (acts[where, j] <= edges[b + 1])][:interval_per_bin]
                interval_value[j, at:at + len(inside)] = acts[inside, j]
                interval_token[j, at:at + len(inside)] = inside
                at += interval_per_bin

    lat_ptr = np.zeros(d_sae + 1, dtype=np.int64)
    lat_ptr[1:] = np.cumsum(fire_count)
    lat_token = np.concatenate([np.flatnonzero(fire[:, j]) for j in range(d_sae)]).astype(np.int32)
    lat_value = np.concatenate([acts[fire[:, j], j] for j in range(d_sae)]).astype(np.float32)

    unit = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    cosine = unit @ unit.T
    f = fire.astype(np.float64)
    both = f.T @ f
    union = fire_count[:, None] + fire_count[None, :] - both
    jaccard = np.where(union > 0, both / np.maximum(union, 1), 0.0)
    coact = np.where(fire_count[:, None] > 0, both / np.maximum(fire_count[:, None], 1), 0.0)
    edges: dict[str, np.ndarray] = {}
    for name, matrix in zip(EDGE_NAMES, (cosine, jaccard, coact), strict=True):
        edges[f"edge_{name}_idx"], edges[f"edge_{name}_val"] = _top_edges(matrix, edges_k)

    umap = rng.standard_normal((d_sae, 2)).astype(np.float32)
    cluster_spectral = (np.arange(d_sae) % max(1, d_sae // 6)).astype(np.int32)
    cluster_components = np.where(np.arange(d_sae) % 3 == 0, -1, np.arange(d_sae) // 3).astype(np.int32)
    unembed = rng.standard_normal((d_in, vocab_size)).astype(np.float32)
    logits = decoder @ unembed
    logit_top_id = np.argsort(-logits, axis=1)[:, :10].astype(np.int32)
    logit_bottom_id = np.argsort(logits, axis=1)[:, :10].astype(np.int32)
    arrays = {
        "fire_count": fire_count, "density": (fire_count / n_tokens).astype(np.float32),
        "max_act": acts.max(axis=0).astype(np.float32), "mean_act": mean_act,
        "hist_edges": hist_edges, "hist_counts": hist_counts,
        "top_value": top_value, "top_token": top_token,
        "interval_value": interval_value, "interval_token": interval_token,
        "token_id": token_id, "token_doc": token_doc, "token_pos": token_pos,
        "lat_ptr": lat_ptr, "lat_token": lat_token, "lat_value": lat_value,
        "decoder": decoder, "umap": umap,
        "cluster_spectral": cluster_spectral, "cluster_components": cluster_components,
        **edges,
        "logit_top_id": logit_top_id, "logit_bottom_id": logit_bottom_id,
        "logit_top_val": np.take_along_axis(logits, logit_top_id, axis=1).astype(np.float32),
        "logit_bottom_val": np.take_along_axis(logits, logit_bottom_id, axis=1).astype(np.float32),
    }
    vocab = {str(i): (f"<tok{i}>" if i % 7 == 0 else f" w{i}") for i in range(vocab_size)}
    labels = [f"{vocab[str(int(token_id[top_token[j, 0]]))] if top_token[j, 0] >= 0 else '—'} / "
              f"{vocab[str(int(logit_top_id[j, 0]))]}" for j in range(d_sae)]
    summary = {"d_sae": d_sae, "d_in": d_in, "hook_layer": 0, "n_tokens": n_tokens,
               "tokens_requested": n_tokens, "corpus_note": "synthetic", "labels": labels,
               "vocab": vocab, "sae": {"kind": "fake"}, "timings": {}}
    return arrays, summary
