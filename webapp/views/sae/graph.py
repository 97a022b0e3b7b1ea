"""The similarity graph's data: which latents and edges a scope shows (pure numpy).

Scopes: ``neighbourhood`` (a latent, its top-k neighbours and, at depth 2,
theirs; laid out in rings), ``cluster`` (every latent of the latent's spectral
cluster, at their UMAP positions) and ``all`` (every latent at its UMAP
position, with all top-k edges). Edges come from the run's top-E arrays of one
kind (``edge_<kind>_idx`` / ``_val``, -1 / NaN padding), cut to the first ``k``
per latent; an edge is listed once even when both ends name each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from webapp.views.sae.figures import radial_layout

SCOPES = {"neighbourhood": "neighbourhood of the latent", "cluster": "its whole cluster",
          "all": "every latent"}
MAX_DEPTH = 2


@dataclass(frozen=True)
class Subgraph:
    nodes: np.ndarray  # (n,) latent ids
    xy: np.ndarray  # (n, 2)
    edges: list[tuple[int, int, float]]
    centre: int | None


def edge_list(idx: np.ndarray, val: np.ndarray, k: int, among: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Undirected top-``k`` edges (a < b, each once), optionally only between latents in ``among``."""
    idx, val = np.asarray(idx)[:, :k], np.asarray(val)[:, :k]
    src = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    dst, weight = idx.reshape(-1).astype(np.int64), val.reshape(-1).astype(np.float64)
    good = (dst >= 0) & np.isfinite(weight) & (dst != src)
    src, dst, weight = src[good], dst[good], weight[good]
    if among is not None:
        inside = np.zeros(idx.shape[0], dtype=bool)
        inside[np.asarray(among, dtype=np.int64)] = True
        keep = inside[src] & inside[dst]
        src, dst, weight = src[keep], dst[keep], weight[keep]
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    _, first = np.unique(a * idx.shape[0] + b, return_index=True)
    return [(int(a[i]), int(b[i]), float(weight[i])) for i in np.sort(first)]


def neighbourhood(latent: int, idx: np.ndarray, val: np.ndarray, k: int, depth: int = 1) -> Subgraph:
    """``latent``, its top-``k`` neighbours in ring 1 and (depth 2) theirs in ring 2, with their edges."""
    depth = max(1, min(MAX_DEPTH, depth))
    seen = {latent}
    rings: list[list[int]] = []
    frontier = [latent]
    for _ in range(depth):
        ring: list[int] = []
        for node in frontier:
            for other, weight in zip(idx[node, :k], val[node, :k], strict=True):
                other = int(other)
                if other >= 0 and np.isfinite(weight) and other not in seen:
                    seen.add(other)
                    ring.append(other)
        rings.append(ring)
        frontier = ring
    nodes, xy = radial_layout(latent, rings)
    edges = [e for e in edge_list(idx, val, k, nodes)]
    return Subgraph(nodes, xy, edges, latent)


def cluster(latent: int, members: list[int], umap: np.ndarray, idx: np.ndarray, val: np.ndarray,
            k: int) -> Subgraph:
    nodes = np.asarray(sorted(set(members) | {latent}), dtype=np.int64)
    return Subgraph(nodes, np.asarray(umap)[nodes], edge_list(idx, val, k, nodes), latent)


def everything(umap: np.ndarray, idx: np.ndarray, val: np.ndarray, k: int, centre: int | None) -> Subgraph:
    nodes = np.arange(len(umap), dtype=np.int64)
    return Subgraph(nodes, np.asarray(umap), edge_list(idx, val, k), centre)
