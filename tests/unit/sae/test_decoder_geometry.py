"""Decoder geometry (cosine edges, Engels et al. clusters, UMAP) and logit effects, against brute force."""

from __future__ import annotations

import numpy as np
import torch

from latent_atlas.analyses.sae.decoder_geometry import (
    angular_affinity,
    component_clusters,
    cosine_edges,
    decoder_umap,
    default_n_clusters,
    spectral_clusters,
)
from latent_atlas.analyses.sae.logit_effects import (
    latent_labels,
    logit_effects,
    most_frequent_top_token,
)


def planted(n_circle: int = 12, n_other: int = 40, d_in: int = 64, seed: int = 0) -> np.ndarray:
    """Decoder rows: ``n_circle`` latents tiling a circle (dims 0, 1) around a shared direction
    (dim 2), as the weekday latents of Engels et al. do; then random others in the other dims."""
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * np.arange(n_circle) / n_circle
    circle = np.zeros((n_circle, d_in))
    circle[:, 0], circle[:, 1], circle[:, 2] = 0.6 * np.cos(theta), 0.6 * np.sin(theta), 1.0
    circle[:, 3:] = 0.02 * rng.standard_normal((n_circle, d_in - 3))
    other = rng.standard_normal((n_other, d_in))
    other[:, :3] = 0.0
    rows = np.concatenate([circle, other]) * rng.uniform(0.5, 2.0, (n_circle + n_other, 1))
    return rows.astype(np.float32)


def test_cosine_edges_equal_brute_force() -> None:
    rows = planted()
    idx, val = cosine_edges(rows, 5, block=7)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    sims = unit.astype(np.float64) @ unit.T.astype(np.float64)
    for i in range(rows.shape[0]):
        cands = sorted((j for j in range(rows.shape[0]) if j != i and sims[i, j] > 0),
                       key=lambda j: (-sims[i, j], j))[:5]
        assert idx[i, :len(cands)].tolist() == cands
        np.testing.assert_allclose(val[i, :len(cands)], sims[i, cands], rtol=1e-5)
        assert (idx[i, len(cands):] == -1).all()


def test_components_recover_the_circle() -> None:
    rows = planted()
    idx, val = cosine_edges(rows, 4)
    labels = component_clusters(idx, val)
    assert len(set(labels[:12].tolist())) == 1 and labels[0] == 0  # one component, numbered first
    assert (labels[12:] == -1).all()  # random directions are nobody's neighbours above 0.5


def test_spectral_clusters_recover_the_circle() -> None:
    rows = planted()
    labels, method = spectral_clusters(rows, n_clusters=4, seed=0)
    assert method == "dense"
    circle = labels[:12]
    assert len(set(circle.tolist())) == 1
    assert np.count_nonzero(labels == circle[0]) <= 14  # the cluster is (almost only) the circle


def test_angular_affinity_and_cluster_count() -> None:
    np.testing.assert_allclose(angular_affinity(np.array([1.0, 0.0, -1.0, 1.0000001])), [1.0, 0.5, 0.0, 1.0])
    assert default_n_clusters(24_576) == 983 and default_n_clusters(3) == 2


def test_umap_of_decoder_is_finite_and_separates_the_circle() -> None:
    rows = planted(n_other=60)
    emb = decoder_umap(rows, seed=0, n_neighbors=8)
    assert emb.shape == (72, 2) and emb.dtype == np.float32 and np.isfinite(emb).all()
    centre = emb[:12].mean(0)
    spread = np.linalg.norm(emb[:12] - centre, axis=1).mean()
    others = np.linalg.norm(emb[12:] - centre, axis=1).mean()
    assert spread < others


def test_logit_effects_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((9, 16)).astype(np.float32)
    unembed = torch.from_numpy(rng.standard_normal((50, 16)).astype(np.float32))
    out = logit_effects(rows, unembed, k=4, block=4)
    logits = rows.astype(np.float64) @ unembed.numpy().T.astype(np.float64)
    np.testing.assert_array_equal(out["logit_top_id"], np.argsort(-logits, axis=1)[:, :4])
    np.testing.assert_array_equal(out["logit_bottom_id"], np.argsort(logits, axis=1)[:, :4])
    np.testing.assert_allclose(out["logit_top_val"], -np.sort(-logits, axis=1)[:, :4], rtol=1e-4)
    assert out["logit_top_id"].dtype == np.int32 and out["logit_bottom_val"].dtype == np.float32


def test_labels_use_the_most_frequent_top_token() -> None:
    token_id = np.array([5, 7, 7, 9, 5, 5], np.int32)
    top_token = np.array([[1, 0, 2, -1], [0, 4, 1, 2], [-1, -1, -1, -1]])
    assert most_frequent_top_token(top_token, token_id).tolist() == [7, 5, -1]
    logit = np.array([[9], [7], [5]])
    labels = latent_labels(top_token, token_id, logit, lambda t: {5: " five", 7: "seven", 9: "<b>"}[t])
    assert labels == ["seven / <b>", "' five' / seven", "(dead) / ' five'"]
