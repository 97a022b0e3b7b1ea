"""The incremental cluster cloud equals a full recomputation, and a planted circle comes out round."""

from __future__ import annotations

import numpy as np
import pytest
from sae_fake import fake_harvest

from latent_atlas.analyses.sae.cloud import ClusterCloud, full_reconstruction, latent_slice


def _sources(arrays):
    def activations(j):
        return latent_slice(arrays["lat_ptr"], arrays["lat_token"], arrays["lat_value"], j)

    def rows(j):
        return arrays["decoder"][j]

    return activations, rows


def _pca_reference(X: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    centred = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    keep = min(dims, len(s))
    coords = np.zeros((len(X), dims))
    coords[:, :keep] = centred @ vt[:keep].T
    ratio = np.zeros(dims)
    if total > 0:
        ratio[:keep] = var[:keep] / total
    return coords, ratio


def _check_equal(cloud: ClusterCloud, arrays, activations, rows) -> None:
    tokens, recon = cloud.reconstruction()
    ref_tokens, ref = full_reconstruction(cloud.picked, activations, rows)
    np.testing.assert_array_equal(tokens, ref_tokens)
    if ref.size:
        np.testing.assert_allclose(recon, ref, rtol=1e-9, atol=1e-9)
    n, s1, s2 = cloud.covariance_sums()
    assert n == len(ref_tokens)
    for dims in (2, 3):
        projection = cloud.project(dims)
        np.testing.assert_array_equal(projection.tokens, ref_tokens)
        if len(ref_tokens) < 2:
            continue
        coords, ratio = _pca_reference(ref, dims)
        np.testing.assert_allclose(projection.explained, ratio, atol=1e-7)
        for axis in range(dims):
            if ratio[axis] < 1e-6 or (axis + 1 < dims and abs(ratio[axis] - ratio[axis + 1]) < 1e-6):
                continue  # an axis without variance, or a degenerate pair: not unique
            ours, theirs = projection.coords[:, axis].astype(np.float64), coords[:, axis]
            sign = 1.0 if ours @ theirs >= 0 else -1.0
            np.testing.assert_allclose(ours, sign * theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize("seed", range(6))
def test_incremental_equals_full_after_random_adds_and_removes(seed):
    rng = np.random.default_rng(seed)
    arrays, summary = fake_harvest(d_sae=20, d_in=7, n_tokens=300, density=0.15, seed=seed)
    activations, rows = _sources(arrays)
    cloud = ClusterCloud(summary["n_tokens"], summary["d_in"], activations, rows)
    for _ in range(40):
        latent = int(rng.integers(0, 20))
        if latent in cloud and rng.random() < 0.6:
            assert cloud.remove(latent) == arrays["fire_count"][latent]
        else:
            cloud.add(latent)
        _check_equal(cloud, arrays, activations, rows)
    # Removing everything leaves an empty cloud with no tokens.
    for latent in cloud.picked:
        cloud.remove(latent)
    assert cloud.n == 0 and cloud.project(2).tokens.size == 0
    cloud.set_picked([3, 5, 3])
    assert cloud.picked == [3, 5]
    _check_equal(cloud, arrays, activations, rows)


def test_set_picked_reports_the_delta_and_touches_only_those_latents():
    arrays, summary = fake_harvest(seed=3)
    calls: list[int] = []
    base_activations, rows = _sources(arrays)

    def activations(j):
        calls.append(j)
        return base_activations(j)

    cloud = ClusterCloud(summary["n_tokens"], summary["d_in"], activations, rows)
    assert cloud.set_picked([1, 2, 3]) == ([1, 2, 3], [])
    calls.clear()
    assert cloud.set_picked([2, 3, 4]) == ([4], [1])
    assert sorted(calls) == [1, 4]  # only the removed and the added latent's activations are read
    _check_equal(cloud, arrays, base_activations, rows)


def test_bad_rows_and_tokens_are_refused():
    arrays, summary = fake_harvest(seed=1)
    activations, rows = _sources(arrays)
    cloud = ClusterCloud(summary["n_tokens"], summary["d_in"] + 1, activations, rows)
    with pytest.raises(ValueError, match="decoder row has"):
        cloud.add(0)
    small = ClusterCloud(5, summary["d_in"], activations, rows)
    with pytest.raises(IndexError, match="out of range"):
        small.add(int(np.argmax(arrays["fire_count"])))
    with pytest.raises(ValueError):
        small.project(4)


def test_planted_circle_is_recovered():
    """Latents tiling a circle in a 2-D plane of a 16-D space: the cloud of their tokens is a circle."""
    rng = np.random.default_rng(7)
    d_in, n_circle, n_other, n_tokens = 16, 12, 8, 3000
    plane = np.linalg.qr(rng.standard_normal((d_in, 2)))[0]  # orthonormal basis of a random plane
    angles = 2 * np.pi * np.arange(n_circle) / n_circle
    circle_rows = np.cos(angles)[:, None] * plane[:, 0] + np.sin(angles)[:, None] * plane[:, 1]
    other_rows = rng.standard_normal((n_other, d_in))
    decoder = np.vstack([circle_rows, other_rows]).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi, n_tokens)
    acts = np.zeros((n_tokens, n_circle + n_other), dtype=np.float32)
    # Each token activates the two circle latents around its angle (weights that put it on the
    # circle's chord between them, scaled back to radius 3), plus random other latents.
    step = 2 * np.pi / n_circle
    low = np.floor(phi / step).astype(int) % n_circle
    frac = (phi - low * step) / step
    weight_low = np.sin((1 - frac) * step) / np.sin(step)
    weight_high = np.sin(frac * step) / np.sin(step)
    acts[np.arange(n_tokens), low] = 3 * weight_low
    acts[np.arange(n_tokens), (low + 1) % n_circle] += 3 * weight_high
    noise = rng.random((n_tokens, n_other)) < 0.2
    acts[:, n_circle:] = np.where(noise, rng.gamma(2.0, 1.0, (n_tokens, n_other)), 0)
    arrays, summary = fake_harvest(decoder=decoder, acts=acts, seed=7)
    activations, rows = _sources(arrays)
    cloud = ClusterCloud(summary["n_tokens"], summary["d_in"], activations, rows)
    for j in [*range(n_circle), n_circle, n_circle + 1]:  # the circle plus two distractors...
        cloud.add(j)
    cloud.remove(n_circle)
    cloud.remove(n_circle + 1)  # ...taken out again: the incremental state must be the circle alone
    projection = cloud.project(3)
    assert projection.explained[:2].sum() > 0.999 and projection.explained[2] < 1e-6
    xy = projection.coords[:, :2].astype(np.float64)
    radius = np.linalg.norm(xy, axis=1)
    assert radius.std() / radius.mean() < 0.02 and abs(radius.mean() - 3) < 0.05
    # The angle around the circle follows the planted angle (up to rotation and reflection).
    theta = np.arctan2(xy[:, 1], xy[:, 0])
    phase = np.exp(1j * (theta - phi[projection.tokens]))
    mirrored = np.exp(1j * (theta + phi[projection.tokens]))
    assert max(abs(phase.mean()), abs(mirrored.mean())) > 0.999
