"""Exact PCA via the covariance matrix: matches scikit-learn, batches equal one shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from latent_atlas.reduce import PCAAccumulator, pca_fit, umap_embed


def _data(n: int = 500, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(5.0, 0.1, d)
    return rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 100.0


def test_matches_sklearn() -> None:
    X = _data()
    fit = pca_fit(X, 4)
    reference = PCA(n_components=4, svd_solver="full").fit(X)
    np.testing.assert_allclose(fit.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(fit.explained_variance, reference.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(fit.mean, reference.mean_, rtol=1e-12)
    cosines = np.abs(np.sum(fit.components * reference.components_, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)
    projected = fit.transform(X)
    assert projected.dtype == np.float32 and projected.shape == (500, 4)
    signs = np.sign(np.sum(fit.components * reference.components_, axis=1))
    np.testing.assert_allclose(projected, reference.transform(X) * signs, atol=1e-3)


def test_transform_float64_is_exact() -> None:
    X = _data()
    fit = pca_fit(X, 3)
    np.testing.assert_allclose(fit.transform(X), ((X - fit.mean) @ fit.components.T), rtol=1e-5, atol=1e-4)


def test_accumulator_equals_one_shot() -> None:
    X = _data(n=1000, seed=1)
    accumulator = PCAAccumulator()
    for part in np.array_split(X, [1, 7, 300, 301, 650]):
        accumulator.update(part)
    batched = accumulator.finalize(5)
    one_shot = pca_fit(X, 5)
    assert batched.n_samples == one_shot.n_samples == 1000
    np.testing.assert_allclose(batched.explained_variance, one_shot.explained_variance, rtol=1e-10)
    np.testing.assert_allclose(batched.components, one_shot.components, atol=1e-9)
    np.testing.assert_allclose(batched.mean, one_shot.mean, rtol=1e-12)


def test_torch_batches_and_sign_convention() -> None:
    X = _data(seed=2)
    accumulator = PCAAccumulator()
    for part in torch.from_numpy(X.astype(np.float32)).split(64):
        accumulator.update(part)
    fit = accumulator.finalize(3)
    reference = pca_fit(X.astype(np.float32), 3)
    np.testing.assert_allclose(fit.components, reference.components, atol=1e-8)
    rows = np.arange(3)
    pivots = np.argmax(np.abs(fit.components), axis=1)
    assert np.all(fit.components[rows, pivots] > 0)
    np.testing.assert_allclose(fit.components @ fit.components.T, np.eye(3), atol=1e-12)


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        PCAAccumulator().finalize(2)
    with pytest.raises(ValueError, match="n_components"):
        pca_fit(_data(d=4), 5)
    accumulator = PCAAccumulator()
    accumulator.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="width"):
        accumulator.update(np.zeros((3, 5)))


def test_umap_embed_is_seeded() -> None:
    X = _data(n=80, d=6, seed=3)
    first = umap_embed(X, 2, seed=7, n_neighbors=10)
    second = umap_embed(X, 2, seed=7, n_neighbors=10)
    assert first.shape == (80, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)


def test_float32_products_are_close() -> None:
    X = _data(n=2000, d=16, seed=4).astype(np.float32)
    exact = pca_fit(X, 3)
    fast = PCAAccumulator(products="float32")
    for part in np.array_split(X, 5):
        fast.update(part)
    fit = fast.finalize(3)
    np.testing.assert_allclose(fit.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-5)
    np.testing.assert_allclose(fit.components, exact.components, atol=1e-4)
    with pytest.raises(ValueError, match="products"):
        PCAAccumulator(products="float16")  # type: ignore[arg-type]


def test_merged_accumulators_equal_one_pass() -> None:
    """Sums of separate parts (sharded runs), carried as arrays and merged, give the one-pass fit."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 100.0  # far from the origin
    whole = PCAAccumulator()
    whole.update(X)
    parts = []
    for rows in (slice(0, 40), slice(40, 41), slice(41, 300)):
        part = PCAAccumulator()
        part.update(X[rows])
        parts.append(PCAAccumulator.from_arrays(part.to_arrays()))
    merged = PCAAccumulator.from_arrays(PCAAccumulator().to_arrays())  # an empty part merges too
    for part in parts:
        merged.merge(part)
    assert merged.n == whole.n == 300
    a, b = merged.finalize(4), whole.finalize(4)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.components, b.components, atol=1e-9)
    np.testing.assert_allclose(a.explained_variance, b.explained_variance, rtol=1e-9)
    # merging in another grouping: (p0 + p1) + p2 == p0 + (p1 + p2) to float64 rounding
    left = PCAAccumulator.from_arrays(parts[0].to_arrays())
    left.merge(parts[1])
    left.merge(parts[2])
    right = PCAAccumulator.from_arrays(parts[1].to_arrays())
    right.merge(parts[2])
    grouped = PCAAccumulator.from_arrays(parts[0].to_arrays())
    grouped.merge(right)
    for key, value in left.to_arrays().items():
        np.testing.assert_allclose(grouped.to_arrays()[key], value, rtol=1e-10, atol=1e-8, err_msg=key)
    with pytest.raises(ValueError, match="width"):
        other = PCAAccumulator()
        other.update(rng.normal(size=(5, 3)))
        merged.merge(other)
