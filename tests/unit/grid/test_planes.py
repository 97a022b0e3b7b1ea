"""Plane construction and grid axes of the grid run kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.grid.planes import (
    cell_index,
    direct_plane,
    grid_axis,
    pca_plane,
    random_projection_plane,
    replicated_plane,
    through_states_plane,
)


def test_grid_axis_keeps_the_centre_on_grid_point_n_over_2() -> None:
    for n in (2, 7, 8, 200):
        axis = grid_axis(n, 1.5, 0.25)
        assert axis.shape == (n,)
        assert axis[n // 2] == 1.5
        np.testing.assert_allclose(np.diff(axis), 0.25)
    with pytest.raises(ValueError, match="spacing"):
        grid_axis(4, 0.0, 0.0)


def test_cell_index() -> None:
    assert cell_index(0.0, 9, 0.0, 0.25) == 4
    assert cell_index(1.0, 9, 0.0, 0.25) == 8
    assert cell_index(1.0, 8, 0.0, 0.25) == -1  # beyond the last point (0.75)
    assert cell_index(1.0, 9, 0.0, 0.3) == -1  # between grid points
    assert cell_index(-1.0, 9, 0.0, 0.25) == 0
    assert cell_index(1.0, 200, 0.0, 0.02) == 150


def test_direct_and_replicated_planes() -> None:
    x, y = torch.tensor([2.0, -1.0]), torch.tensor([3.0, 0.5])
    points = direct_plane(5).points(x, y)
    expected = torch.tensor([[2.0, 3.0, 0, 0, 0], [-1.0, 0.5, 0, 0, 0]])
    assert torch.equal(points, expected)
    points = replicated_plane(5).points(x, y)
    assert torch.equal(points[0], torch.tensor([2.0, 3.0, 2.0, 3.0, 0.0]))
    assert points.dtype == torch.float32


def test_random_projection_is_seeded() -> None:
    a, b, c = random_projection_plane(64, 7), random_projection_plane(64, 7), random_projection_plane(64, 8)
    assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v)
    assert not torch.equal(a.u, c.u)
    assert a.info["seed"] == 7
    assert torch.equal(a.center, torch.zeros(64, dtype=torch.float64))
    # Standard normal entries.
    assert abs(float(a.u.std()) - 1.0) < 0.3


def test_pca_plane_units_are_standard_deviations() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0][:, :3]
    coords = rng.normal(size=(500, 3)) * np.array([5.0, 2.0, 0.1])
    states = coords @ basis.T + 3.0
    plane = pca_plane(states)
    np.testing.assert_allclose(plane.center.numpy(), states.mean(axis=0), atol=1e-10)
    stds = np.sqrt(np.linalg.eigvalsh(np.cov(states.T))[::-1][:2])
    assert abs(stds[0] - 5.0) < 0.5 and abs(stds[1] - 2.0) < 0.2
    np.testing.assert_allclose([float(plane.u.norm()), float(plane.v.norm())], stds, rtol=1e-8)
    # Projecting the states on u / |u|^2 gives coordinates with unit standard deviation.
    x = (torch.as_tensor(states) - plane.center) @ plane.u / float(plane.u @ plane.u)
    assert abs(float(x.std()) - 1.0) < 1e-8
    assert abs(float(plane.u @ plane.v)) < 1e-8
    assert plane.info["n_states"] == 500
    with pytest.raises(ValueError, match="at least 3"):
        pca_plane(states[:2])


def test_through_states_puts_states_at_unit_coordinates_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    s0, s1, s2 = (torch.randn(32, generator=gen) * 4 for _ in range(3))
    plane = through_states_plane(s0, s1, s2)
    points = plane.points(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(points[0], s0) and torch.equal(points[1], s1) and torch.equal(points[2], s2)
    with pytest.raises(ValueError, match="collinear"):
        through_states_plane(s0, s1, s0 + 2 * (s1 - s0))
    with pytest.raises(ValueError, match="distinct"):
        through_states_plane(s0, s0, s2)
