"""UMAP in a geometry run: numba's compile cost once per worker process, then the fit.

Usage: ``python bench/umap_compile.py [--states DIR/states.npy] [--points 5000 20000]``

A worker compiles UMAP's numba code when the process starts
(``workers.signals``: ``warm_up_umap`` in a low-priority thread), so runs find
it compiled. This measures, for each size N: a *cold* run in a fresh Python
process (import + compile + fit, what every run would pay without the
warm-up), and in this process, after ``warm_up_umap``, the *warm* fit that a
run pays. Input: the 50-component PCA of N stored states (``--states`` from
``bench/geometry_scale.py --keep``) or N synthetic rows, fitted like a run
(``n_neighbors=15, min_dist=0.1, random_state=0``, 3 components); then
``transform`` of 20,000 more points (how points beyond ``umap_fit_points`` are
placed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from latent_atlas.reduce import pca_fit

FIT = """
import time, numpy as np
started = time.perf_counter()
import umap
data = np.load({path!r})
umap.UMAP(n_components=3, n_neighbors=15, min_dist=0.1, random_state=0).fit_transform(data)
print(time.perf_counter() - started)
"""


def inputs(states_path: str | None, n: int, extra: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if states_path is None:
        centres = rng.normal(size=(30, 50)) * 4
        return (centres[rng.integers(0, 30, n + extra)] + rng.normal(size=(n + extra, 50))).astype(np.float32)
    states = np.load(states_path, mmap_mode="r")
    rows = np.sort(rng.choice(len(states), size=n + extra, replace=False))
    data = np.asarray(states[rows], dtype=np.float32)
    return pca_fit(data, 50).transform(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states")
    parser.add_argument("--points", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--extra", type=int, default=20000)
    args = parser.parse_args()
    import tempfile

    from latent_atlas.analyses.geometry.points import warm_up_umap

    prepared = {n: inputs(args.states, n, args.extra) for n in args.points}
    cold = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, data in prepared.items():
            path = f"{tmp}/fit-{n}.npy"
            np.save(path, data[:n])
            out = subprocess.run([sys.executable, "-c", FIT.format(path=path)], capture_output=True,
                                 text=True, check=True)
            cold[n] = float(out.stdout.strip().splitlines()[-1])
    started = time.perf_counter()
    import umap

    imported = time.perf_counter() - started
    compile_s = warm_up_umap()
    print(f"worker start: import umap {imported:.1f} s + warm-up compile {compile_s:.1f} s (once per process)")
    for n, data in prepared.items():
        started = time.perf_counter()
        reducer = umap.UMAP(n_components=3, n_neighbors=15, min_dist=0.1, random_state=0)
        reducer.fit_transform(data[:n])
        warm = time.perf_counter() - started
        started = time.perf_counter()
        reducer.transform(data[n:])
        placed = time.perf_counter() - started
        print(f"N={n:>6,}: warm fit {warm:6.1f} s; cold (fresh process) {cold[n]:6.1f} s = "
              f"{cold[n] / warm:4.1f}x; transform of {len(data) - n:,} more points {placed:5.1f} s")


if __name__ == "__main__":
    main()
