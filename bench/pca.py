"""PCA of ~2M stored states of width 576: ours (exact, from the covariance, chunked) vs scikit-learn.

Usage: ``python bench/pca.py --states DIR/states.npy`` (from ``bench/geometry_scale.py --keep DIR``:
256 prompts x 64 tokens x 30 layers x 4 points = 1,966,080 float16 rows of width 576),
or ``--synthetic N`` (N random rows with a decaying spectrum, float16, same width).

Ours is what a geometry run does on a CPU worker: ``PCAAccumulator(products="float32")``
over chunks of ``geometry_points.CHUNK`` rows converted from float16 (float64 accumulation), then
``eigh`` of the 576 x 576 covariance; memory beyond the float16 states is one
chunk. scikit-learn gets the whole float32 array in memory (the conversion is
timed separately, not charged to it) and fits ``PCA(n_components=3)`` with
``svd_solver="covariance_eigh"`` (the same method), ``"randomized"`` and, with
``--full``, ``"full"`` (LAPACK SVD; slow and memory-hungry at this size).
Reported: seconds, the ratio to ours, and accuracy against ours in float64
products: the largest difference in explained-variance ratio and the largest
principal angle between the 3-dimensional subspaces.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.decomposition import PCA

from latent_atlas.analyses.geometry.points import CHUNK, META, Points, rows
from latent_atlas.reduce import PCAAccumulator


def ours(states: np.ndarray, products: str, k: int = 3):
    """The geometry run's own fit: ``geometry_points.rows`` chunks into ``PCAAccumulator``."""
    points = Points(states=states, norm=np.ones(len(states), dtype=np.float32),
                    **{name: np.zeros(len(states), dtype=np.int32) for name in META})
    started = time.perf_counter()
    accumulator = PCAAccumulator(products=products)
    for start in range(0, len(states), CHUNK):
        accumulator.update(torch.from_numpy(rows(points, slice(start, start + CHUNK), unit=False)))
    fit = accumulator.finalize(k)
    return time.perf_counter() - started, fit.explained_variance_ratio, fit.components


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle (degrees) between the row spaces of a and b."""
    qa, _ = np.linalg.qr(np.asarray(a, dtype=np.float64).T)
    qb, _ = np.linalg.qr(np.asarray(b, dtype=np.float64).T)
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines.min())))


def synthetic(n: int, d: int = 576, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    scales = (np.linspace(1.0, 0.01, d) ** 3).astype(np.float32) * 10
    out = np.empty((n, d), dtype=np.float16)
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        out[start : start + rows] = (rng.normal(size=(rows, d)).astype(np.float32) * scales) @ basis + 3.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", help="a (P, d) .npy file of states (float16)")
    parser.add_argument("--synthetic", type=int, help="use N synthetic rows instead")
    parser.add_argument("--full", action="store_true", help="also scikit-learn's full SVD")
    args = parser.parse_args()
    states = synthetic(args.synthetic) if args.synthetic else np.load(args.states, mmap_mode="r")
    n, d = states.shape
    print(f"{n:,} rows of width {d} ({states.dtype}, {states.nbytes / 2**20:,.0f} MB); "
          f"{torch.get_num_threads()} threads")

    seconds32, ratio32, comps32 = ours(states, "float32")
    seconds64, ratio64, comps64 = ours(states, "float64")
    print(f"ours, float32 products (the CPU worker's): {seconds32:7.1f} s  "
          f"explained {np.round(ratio32, 5).tolist()}")
    print(f"ours, float64 products (reference):        {seconds64:7.1f} s  "
          f"|d ratio| {np.abs(ratio32 - ratio64).max():.1e}, angle {angle(comps32, comps64):.1e} deg")

    solvers = ["covariance_eigh", "randomized"] + (["full"] if args.full else [])
    for solver in solvers:
        started = time.perf_counter()
        X = np.empty((n, d), dtype=np.float32)
        points = Points(states=states, norm=np.ones(n, dtype=np.float32),
                        **{name: np.zeros(n, dtype=np.int32) for name in META})
        for start in range(0, n, CHUNK):  # the run's own float16 -> float32 conversion
            X[start : start + CHUNK] = rows(points, slice(start, start + CHUNK), unit=False)
        convert = time.perf_counter() - started
        started = time.perf_counter()
        pca = PCA(n_components=3, svd_solver=solver, copy=False, random_state=0).fit(X)
        seconds = time.perf_counter() - started
        print(f"scikit-learn {solver:16s}: {seconds:7.1f} s = {seconds / seconds32:5.2f}x ours "
              f"(+{convert:.1f} s to build its float32 array); |d explained ratio| vs ours "
              f"{np.abs(pca.explained_variance_ratio_ - ratio64).max():.1e}, "
              f"angle {angle(pca.components_, comps64):.1e} deg")
        del X, pca


if __name__ == "__main__":
    main()
