"""Separation score and norm statistics on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from latent_atlas.analyses.geometry import stats
from latent_atlas.analyses.geometry.points import (
    Points,
    ReduceOptions,
    average,
    describe,
    norm_statistics,
)


def _gaussians(shift: float, n: int = 400, d: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d))
    b[:, 0] += shift
    return a, b


def test_separated_classes_score_one_and_identical_ones_chance():
    a, b = _gaussians(shift=20.0)
    assert stats.linear_separability(a, b) == 1.0
    a, b = _gaussians(shift=0.0, n=2000)
    assert stats.linear_separability(a, b) == pytest.approx(0.5, abs=0.04)


def test_separability_matches_the_bayes_rate_of_two_unit_gaussians():
    # Two isotropic Gaussians whose means differ by 2 along one axis: Bayes accuracy Phi(1) = 0.8413.
    a, b = _gaussians(shift=2.0, n=5000, d=5, seed=1)
    assert stats.linear_separability(a, b, seed=3) == pytest.approx(0.8413, abs=0.015)


def test_groups_never_straddle_the_split():
    groups = np.repeat(np.arange(40), 10)
    test = stats._split(len(groups), groups, 0.5, np.random.default_rng(0))
    for g in range(40):
        assert len(set(test[groups == g].tolist())) == 1  # a whole prompt on one side
    assert test.sum() == 200
    a, b = _gaussians(shift=20.0, n=400)
    assert stats.linear_separability(a, b, groups_a=groups, groups_b=groups) == 1.0
    assert np.isnan(stats.linear_separability(a[:1], b))


def test_silhouette_of_tight_far_clusters_is_near_one_and_sampled_reproducibly():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(size=(3000, 2)) * 0.01, rng.normal(size=(3000, 2)) * 0.01 + 10])
    labels = np.repeat([0, 1], 3000)
    assert stats.silhouette(points, labels) > 0.99
    assert stats.silhouette(points, labels, seed=5) == stats.silhouette(points, labels, seed=5)
    assert np.isnan(stats.silhouette(points, np.zeros(6000)))


def test_position0_ratio_and_means_per_layer_and_component():
    # 2 layers x 2 components x 2 prompts x 3 positions; position 0 has norm 10, the rest 2 (layer 0)
    # and 4 (layer 1): ratios 5 and 2.5.
    layer = np.repeat([0, 1], 12)
    component = np.tile(np.repeat([0, 3], 6), 2)
    position = np.tile([0, 1, 2], 8)
    norm = np.where(position == 0, 10.0, np.where(layer == 0, 2.0, 4.0))
    result = stats.position0_ratios(norm, layer, component, position, n_layers=2)
    np.testing.assert_allclose(result["ratio"][:, [0, 3]], [[5.0, 5.0], [2.5, 2.5]])
    assert np.isnan(result["ratio"][:, 1]).all()  # not captured: NaN, never 0
    assert result["overall"] == pytest.approx(10.0 / 3.0)
    means = stats.layer_component_means(norm, layer, component, 2)
    assert means[0, 0] == pytest.approx((10 + 2 + 2) / 3)


def test_growth_summary():
    grows = stats.growth_summary([1.0, 2.0, 4.0, 3.5, 8.0])
    assert grows["grows"] and grows["spearman"] == pytest.approx(0.9) and grows["last_over_first"] == 8.0
    assert grows["rising_steps"] == 0.75
    shrinks = stats.growth_summary([5.0, 4.0, 3.0])
    assert not shrinks["grows"] and shrinks["spearman"] == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3], [1, 1, 1]) != stats.spearman([1, 2, 3], [1, 1, 1])  # NaN
    assert stats.to_json_float(float("nan")) is None


def _points(n_layers=3, n_prompts=6, n_pos=5, d=8, seed=0, attn_mlp_shift=0.0):
    rng = np.random.default_rng(seed)
    per_block = n_prompts * n_pos
    n = n_layers * 4 * per_block
    layer = np.repeat(np.arange(n_layers), 4 * per_block).astype(np.int16)
    component = np.tile(np.repeat(np.arange(4), per_block), n_layers).astype(np.int8)
    position = np.tile(np.tile(np.arange(n_pos), n_prompts), n_layers * 4).astype(np.int32)
    prompt = np.tile(np.repeat(np.arange(n_prompts), n_pos), n_layers * 4).astype(np.int32)
    states = rng.normal(size=(n, d)).astype(np.float32)
    states[component == 2, 0] += attn_mlp_shift
    return Points(states=states, norm=np.linalg.norm(states, axis=1).astype(np.float32), layer=layer,
                  component=component, position=position, prompt_index=prompt,
                  token_id=np.zeros(n, dtype=np.int32))


def test_describe_separation_on_known_classes():
    arrays, summary = describe(_points(attn_mlp_shift=50.0), ReduceOptions(dims=2), n_layers=3)
    separation = summary["separation"]
    assert separation["lda_accuracy"] == [1.0, 1.0, 1.0] and separation["overall_lda_accuracy"] == 1.0
    assert all(s > 0.8 for s in separation["silhouette_2d"])
    assert arrays["coords"].shape == (3 * 4 * 30, 2)
    assert arrays["attn_mlp_coords"].shape == (3 * 2 * 30, 2)
    mixed = describe(_points(n_prompts=40), ReduceOptions(dims=2), n_layers=3)[1]["separation"]
    assert all(abs(v - 0.5) < 0.2 for v in mixed["lda_accuracy"])


def test_describe_refuses_umap_beyond_its_bound_and_empty_fits():
    points = _points(n_pos=1)
    with pytest.raises(ValueError, match="excluding position 0"):
        describe(points, ReduceOptions(exclude_position0=True), n_layers=3)


def test_average_matches_direct_means():
    points = _points()
    by_position = average(points, "samples")
    mask = (points.layer == 1) & (points.component == 2) & (points.position == 3)
    row = np.flatnonzero((by_position.layer == 1) & (by_position.component == 2)
                         & (by_position.position == 3))[0]
    np.testing.assert_allclose(by_position.states[row], points.states[mask].mean(axis=0), rtol=1e-5)
    assert by_position.prompt_index.max() == -1 and len(by_position) == 3 * 4 * 5
    by_prompt = average(points, "positions")
    assert len(by_prompt) == 3 * 4 * 6 and by_prompt.position.max() == -1
    with pytest.raises(ValueError, match="already averaged"):
        average(by_prompt, "samples")


def test_norm_statistics_are_json_ready():
    points = _points()
    result = norm_statistics(points.norm, points.layer, points.component, points.position, 4)
    assert result["position0_ratio"][3] == [None] * 4  # layer 3 was not captured
    assert set(result["growth"]) == {"attn_out", "resid_mid", "mlp_out", "resid_post"}
