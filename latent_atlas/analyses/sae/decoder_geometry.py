"""Geometry of an SAE's decoder directions: cosine neighbours, UMAP, Engels et al. clusters.

Input: ``rows`` (d, d_in) float32 = ``source.decoder_rows(sae)`` (never the raw ``W_dec``).

* ``cosine_edges``: per latent the ``E`` others of largest cosine similarity (ties: the
  smaller index; only positive similarities are edges), computed by row blocks, so
  memory is ``block x d``, never ``d x d``.
* ``decoder_umap``: UMAP (cosine metric) of the rows to 2-D, seeded.
* ``spectral_clusters``: Engels et al. (2024), section 4: spectral clustering with the
  affinity ``1 - arccos(cos_sim) / pi`` (in [0, 1]). Exact (dense affinity) up to
  ``SPECTRAL_DENSE_MAX`` latents; above that the affinity is kept only on each latent's
  ``SPARSE_NEIGHBOURS`` nearest neighbours by cosine (symmetrised), which keeps memory
  linear in d (said in the run summary). The spectral embedding keeps at most
  ``SPECTRAL_COMPONENTS`` eigenvectors, found by Lanczos iteration (no factorisation;
  k-means then forms the clusters in it), so thousands of latents and clusters stay
  affordable on a CPU.
* ``component_clusters``: their second method: the graph joining each latent to its top-2
  cosine neighbours when the similarity is above 0.5; clusters are the connected components
  of more than one latent, numbered 0.. by smallest member; a lone latent gets -1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from latent_atlas.analyses.sae.cofire import top_edges

__all__ = [
    "SPARSE_NEIGHBOURS",
    "SPECTRAL_DENSE_MAX",
    "angular_affinity",
    "component_clusters",
    "cosine_edges",
    "decoder_umap",
    "default_n_clusters",
    "spectral_clusters",
    "unit_rows",
]

SPECTRAL_DENSE_MAX = 8_192
SPARSE_NEIGHBOURS = 64
SPECTRAL_COMPONENTS = 64


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (a zero row stays zero), float32."""
    rows = np.asarray(rows, dtype=np.float32)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 0)


def angular_affinity(cos: np.ndarray) -> np.ndarray:
    """Engels et al.'s affinity ``1 - arccos(sim) / pi`` (sim clipped to [-1, 1])."""
    return 1.0 - np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi


def cosine_edges(rows: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``edge_cosine_idx`` (d, k) int32 and ``edge_cosine_val`` (d, k) float32; see the docstring."""
    unit = unit_rows(rows)
    d = unit.shape[0]
    idx = np.full((d, k), -1, np.int32)
    val = np.full((d, k), np.nan, np.float32)
    for start in range(0, d, block):
        sel = np.arange(start, min(start + block, d))
        sims = (unit[sel] @ unit.T).astype(np.float64)
        idx[sel], val[sel] = top_edges(sims, k, sel)
    return idx, val


def decoder_umap(rows: np.ndarray, seed: int, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """(d, 2) float32 UMAP of the decoder directions, cosine metric."""
    from latent_atlas.reduce import umap_embed

    d = rows.shape[0]
    if d < 4:  # UMAP needs a neighbourhood; a handful of latents gets the first two coordinates
        out = np.zeros((d, 2), np.float32)
        out[:, : min(2, rows.shape[1])] = rows[:, :2]
        return out
    return umap_embed(unit_rows(rows), 2, seed, metric="cosine", n_neighbors=min(n_neighbors, d - 1),
                      min_dist=min_dist)


def default_n_clusters(d: int) -> int:
    """Engels et al. used 1,000 clusters for 24,576 latents: about d / 25, at least 2."""
    return int(max(2, min(d - 1, round(d / 25))))


def spectral_clusters(rows: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, str]:
    """(d,) int32 cluster of each latent, and the affinity used ("dense" or "knn-64")."""
    unit = unit_rows(rows)
    d = unit.shape[0]
    if d <= SPECTRAL_DENSE_MAX:
        affinity = angular_affinity((unit @ unit.T).astype(np.float64))
        method = "dense"
    else:
        k = SPARSE_NEIGHBOURS
        indices, _ = cosine_edges(unit, k)
        r = np.repeat(np.arange(d), k)
        c = indices.ravel().astype(np.int64)
        ok = c >= 0
        r, c = r[ok], c[ok]
        sims = np.einsum("ij,ij->i", unit[r], unit[c])
        graph = sp.coo_matrix((angular_affinity(sims), (r, c)), shape=(d, d)).tocsr()
        affinity = graph.maximum(graph.T)
        method = f"knn-{k}"
    labels = _spectral_labels(affinity, n_clusters, seed)
    return labels, method


def _spectral_labels(affinity: np.ndarray | sp.spmatrix, n_clusters: int, seed: int) -> np.ndarray:
    """Normalised spectral clustering (Ng, Jordan & Weiss; what scikit-learn's SpectralClustering does):
    the top eigenvectors of ``D^-1/2 A D^-1/2`` by Lanczos (``eigsh``: matrix-vector products only,
    no factorisation), rows scaled to unit length, then k-means into ``n_clusters``."""
    from scipy.sparse.linalg import eigsh
    from sklearn.cluster import KMeans

    d = affinity.shape[0]
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    if sp.issparse(affinity):
        normalised = sp.diags(scale) @ affinity @ sp.diags(scale)
    else:
        normalised = affinity * scale[:, None] * scale[None, :]
    m = min(n_clusters, SPECTRAL_COMPONENTS, d - 1)
    v0 = np.random.default_rng(seed).uniform(-1, 1, d)
    _, vectors = eigsh(normalised, k=m, which="LA", v0=v0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    embedding = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    kmeans = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
    return kmeans.fit_predict(embedding).astype(np.int32)


def component_clusters(edge_idx: np.ndarray, edge_val: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Connected components of the top-2-neighbour graph above ``threshold``; see the docstring."""
    d = edge_idx.shape[0]
    top = edge_idx[:, :2].astype(np.int64)
    sims = edge_val[:, :2]
    ok = (top >= 0) & (np.nan_to_num(sims, nan=-np.inf) > threshold)
    r = np.repeat(np.arange(d), top.shape[1]).reshape(top.shape)[ok]
    c = top[ok]
    graph = sp.coo_matrix((np.ones(r.size), (r, c)), shape=(d, d))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    labels = np.full(d, -1, np.int32)
    multi = sizes[comp] > 1
    # number the components by their smallest member
    first = {}
    for latent in np.flatnonzero(multi):
        first.setdefault(int(comp[latent]), len(first))
    labels[multi] = [first[int(c)] for c in comp[multi]]
    return labels
