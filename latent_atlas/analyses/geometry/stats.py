"""Statistics of a geometry run: attention/MLP separation and norm structure.

Pure numpy (scikit-learn for the silhouette), no model, no web: the worker
puts their results in a run's summary and the views recompute nothing heavy.
Invariants:

* ``linear_separability`` is a *held-out* accuracy: a Fisher linear
  discriminant (ridge-regularised pooled covariance) is fitted on one part of
  the points and scored on the rest; with ``groups`` (the prompt of each
  point) whole prompts go to one side, so a prompt's tokens never leak from
  training to test. Chance is 0.5 for balanced classes;
* ``silhouette`` is computed on at most ``max_points`` points (a seeded
  sample), in whatever space it is given (the views use the 2D projection);
* norm statistics take the per-point arrays of a run (``norm``, ``layer``,
  ``component``, ``position``) and never the states: they are exact means of
  the stored norms, and empty groups give NaN (JSON: ``None``), never 0;
* every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "growth_summary",
    "layer_component_means",
    "linear_separability",
    "position0_ratios",
    "silhouette",
    "spearman",
    "to_json_float",
]


def to_json_float(value: float) -> float | None:
    """A float for JSON: NaN and infinities become ``None``."""
    value = float(value)
    return value if math.isfinite(value) else None


def _split(n: int, groups: np.ndarray | None, test_fraction: float,
           rng: np.random.Generator) -> np.ndarray:
    """A boolean test mask over ``n`` points (whole groups when ``groups`` has >= 2 of them)."""
    if groups is not None:
        labels = np.unique(groups)
        if len(labels) >= 2:
            n_test = min(len(labels) - 1, max(1, int(round(test_fraction * len(labels)))))
            test_groups = rng.choice(labels, size=n_test, replace=False)
            return np.isin(groups, test_groups)
    test = np.zeros(n, dtype=bool)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    test[rng.choice(n, size=n_test, replace=False)] = True
    return test


def linear_separability(
    a: np.ndarray,
    b: np.ndarray,
    *,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    test_fraction: float = 0.5,
    ridge: float = 1e-3,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a Fisher linear discriminant separating rows of ``a`` from ``b``.

    ``a`` (n, d) and ``b`` (m, d) are the two classes; ``groups_*`` optional
    group labels (e.g. prompt indices) that keep a group on one side of the
    split. The within-class covariance gets ``ridge * trace / d`` added to its
    diagonal. Returns NaN when a class has fewer than 2 points or a side of the
    split lacks a class.
    """
    a = np.asarray(a, dtype=np.float32)  # float32 rows; the d x d solve is float64
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) arrays of equal width, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    X = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a), dtype=bool), np.ones(len(b), dtype=bool)])
    groups = None
    if groups_a is not None and groups_b is not None:
        groups = np.concatenate([np.asarray(groups_a), np.asarray(groups_b)])
    rng = np.random.default_rng(seed)
    test = _split(len(X), groups, test_fraction, rng)
    train = ~test
    if not (y[train].any() and (~y[train]).any() and y[test].any() and (~y[test]).any()):
        return float("nan")
    xa, xb = X[train & ~y], X[train & y]
    mu_a, mu_b = xa.mean(axis=0, dtype=np.float64), xb.mean(axis=0, dtype=np.float64)
    xa -= mu_a.astype(np.float32)
    xb -= mu_b.astype(np.float32)
    cov = (xa.T @ xa + xb.T @ xb).astype(np.float64) / max(1, len(xa) + len(xb) - 2)
    del xa, xb
    d = cov.shape[0]
    cov[np.diag_indices(d)] += ridge * max(float(np.trace(cov)) / d, 1e-12)
    w = np.linalg.solve(cov, mu_b - mu_a)
    threshold = float(w @ (mu_a + mu_b)) / 2.0
    predicted = X[test].astype(np.float64) @ w > threshold
    return float(np.mean(predicted == y[test]))


def silhouette(points: np.ndarray, labels: np.ndarray, *, max_points: int = 2000,
               seed: int = 0) -> float:
    """Mean silhouette of ``points`` (n, k) with two or more ``labels``; NaN if undefined."""
    from sklearn.metrics import silhouette_score

    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if len(points) != len(labels):
        raise ValueError("points and labels differ in length")
    if len(np.unique(labels)) < 2 or len(points) < 3:
        return float("nan")
    if len(points) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
        points, labels = points[index], labels[index]
        if len(np.unique(labels)) < 2:
            return float("nan")
    return float(silhouette_score(points, labels))


def layer_component_means(values: np.ndarray, layer: np.ndarray, component: np.ndarray,
                          n_layers: int, n_components: int = 4,
                          where: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` per (layer, component) as an (n_layers, n_components) array (NaN if empty)."""
    values = np.asarray(values, dtype=np.float64)
    flat = np.asarray(layer, dtype=np.int64) * n_components + np.asarray(component, dtype=np.int64)
    if where is not None:
        values, flat = values[where], flat[where]
    size = n_layers * n_components
    sums = np.bincount(flat, weights=values, minlength=size)[:size]
    counts = np.bincount(flat, minlength=size)[:size]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return means.reshape(n_layers, n_components)


def position0_ratios(norm: np.ndarray, layer: np.ndarray, component: np.ndarray,
                     position: np.ndarray, n_layers: int, n_components: int = 4) -> dict[str, Any]:
    """Mean norm at position 0 against positions >= 1, per (layer, component) and overall.

    Returns ``first`` and ``rest`` (n_layers, n_components) means, ``ratio``
    (first / rest) and ``overall``: the ratio of the means over every point.
    Points with position -1 (averaged over positions) count in neither group.
    """
    position = np.asarray(position)
    first = layer_component_means(norm, layer, component, n_layers, n_components, position == 0)
    rest = layer_component_means(norm, layer, component, n_layers, n_components, position > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = first / rest
    norm = np.asarray(norm, dtype=np.float64)
    at0, after = norm[position == 0], norm[position > 0]
    overall = float(at0.mean() / after.mean()) if len(at0) and len(after) and after.mean() > 0 \
        else float("nan")
    return {"first": first, "rest": rest, "ratio": ratio, "overall": overall}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for < 2 finite pairs."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average ranks of ties
            tied = v == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def growth_summary(means_by_layer: Sequence[float], layers: Sequence[int] | None = None) -> dict[str, Any]:
    """How a per-layer mean norm grows: Spearman rho against depth, last/first, rising steps.

    ``grows`` is true when rho >= 0.7 and the last layer's mean exceeds the
    first's; ``rising_steps`` is the fraction of consecutive layers where the
    mean goes up.
    """
    values = np.asarray(means_by_layer, dtype=np.float64)
    depth = np.arange(len(values)) if layers is None else np.asarray(layers)
    finite = values[np.isfinite(values)]
    rho = spearman(depth, values)
    steps = np.diff(finite)
    ratio = float(finite[-1] / finite[0]) if len(finite) >= 2 and finite[0] > 0 else float("nan")
    return {
        "spearman": rho,
        "last_over_first": ratio,
        "rising_steps": float(np.mean(steps > 0)) if len(steps) else float("nan"),
        "grows": bool(np.isfinite(rho) and rho >= 0.7 and np.isfinite(ratio) and ratio > 1.0),
    }
