"""Planes of the grid run kind: maps from grid coordinates (x, y) to residual states.

Every plane is affine, ``point(x, y) = center + x * u + y * v``, which is what
makes the exact fast path at the last layer possible. Invariants:

* ``center``, ``u``, ``v`` are float64 tensors of width ``d`` on the CPU;
  ``points`` evaluates the map in float64 and rounds once to float32, so a
  plane through real float32 states reproduces them exactly at their
  coordinates (``s0 + 1 * (s1 - s0) == s1`` holds in float64 for float32
  inputs of similar magnitude);
* grid axes: ``grid_axis(n, c, s)[i] = c + (i - n // 2) * s``, so the centre
  coordinate is always grid point ``n // 2`` and coordinates increase with
  the index; a coordinate lies on the grid when ``(value - c) / s`` is an
  integer in ``-(n // 2) .. n - 1 - n // 2`` (``cell_index``);
* ``direct``: ``center = 0``, ``u = e_0``, ``v = e_1``;
* ``replicated``: ``u = (1, 0, 1, 0, ...)``, ``v = (0, 1, 0, 1, ...)``: the
  pair (x, y) in every dimension pair (0, 1), (2, 3), ...; with an odd width
  the last dimension stays 0;
* ``random_projection``: ``u``, ``v`` are the rows of a 2 x d matrix of
  standard normal entries from ``numpy.random.default_rng(seed)`` (the same
  seed gives the same plane on every machine);
* ``pca``: ``center`` is the mean of the given states, ``u`` and ``v`` their
  first two principal components scaled by their standard deviations, so one
  unit of x or y is one standard deviation along that component;
* ``through_states``: ``center = s0``, ``u = s1 - s0``, ``v = s2 - s0``: the
  three states sit at (0, 0), (1, 0) and (0, 1) of an affine (generally not
  orthogonal) frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_atlas.reduce import pca_fit

__all__ = [
    "PLANE_KINDS",
    "Plane",
    "cell_index",
    "direct_plane",
    "grid_axis",
    "pca_plane",
    "random_projection_plane",
    "replicated_plane",
    "through_states_plane",
]

PLANE_KINDS: tuple[str, ...] = ("direct", "replicated", "random_projection", "pca", "through_states")

# A coordinate is on the grid when its index is within this of an integer.
_ON_GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Plane:
    """``point(x, y) = center + x * u + y * v`` in a residual space of width ``d``."""

    kind: str
    center: Tensor  # (d,) float64
    u: Tensor  # (d,) float64
    v: Tensor  # (d,) float64
    info: dict[str, Any] = field(default_factory=dict)  # JSON-safe extras for the summary

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.center, self.u, self.v)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"plane vectors must be 1-d of one width, got shapes {sorted(shapes)}")
        for name, t in (("center", self.center), ("u", self.u), ("v", self.v)):
            if t.dtype != torch.float64:
                raise TypeError(f"plane vector {name} must be float64")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"plane vector {name} has non-finite entries")

    @property
    def d_model(self) -> int:
        return int(self.center.shape[0])

    def points(self, x: Tensor, y: Tensor, device: torch.device | str | None = None) -> Tensor:
        """States (B, d) float32 for coordinates ``x``, ``y`` (B,), evaluated in float64."""
        target = torch.device(device) if device is not None else self.center.device
        c, u, v = (t.to(target) for t in (self.center, self.u, self.v))
        xs = x.to(device=target, dtype=torch.float64).unsqueeze(1)
        ys = y.to(device=target, dtype=torch.float64).unsqueeze(1)
        return (c + xs * u + ys * v).to(torch.float32)

    def vectors_float32(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(center, u, v)`` as float32 numpy arrays (for the result)."""
        return tuple(t.to(torch.float32).numpy() for t in (self.center, self.u, self.v))  # type: ignore[return-value]


def grid_axis(n: int, center: float, spacing: float) -> np.ndarray:
    """``n`` coordinates ``center + (i - n // 2) * spacing`` (float64, increasing)."""
    if n < 1:
        raise ValueError("a grid axis needs at least one point")
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError("spacing must be a positive finite number")
    return center + (np.arange(n, dtype=np.float64) - n // 2) * spacing


def cell_index(value: float, n: int, center: float, spacing: float) -> int:
    """The index of the grid point at ``value`` on ``grid_axis(n, center, spacing)``, or -1."""
    position = (value - center) / spacing + n // 2
    nearest = round(position)
    if abs(position - nearest) > _ON_GRID_TOLERANCE or not 0 <= nearest < n:
        return -1
    return int(nearest)


def _zeros(d: int) -> Tensor:
    return torch.zeros(d, dtype=torch.float64)


def direct_plane(d: int) -> Plane:
    """x in dimension 0, y in dimension 1, zeros elsewhere."""
    if d < 2:
        raise ValueError("the direct plane needs at least 2 dimensions")
    u, v = _zeros(d), _zeros(d)
    u[0] = 1.0
    v[1] = 1.0
    return Plane("direct", _zeros(d), u, v)


def replicated_plane(d: int) -> Plane:
    """(x, y) repeated across the dimension pairs (0, 1), (2, 3), ..."""
    if d < 2:
        raise ValueError("the replicated plane needs at least 2 dimensions")
    u, v = _zeros(d), _zeros(d)
    pairs = d // 2
    u[0 : 2 * pairs : 2] = 1.0
    v[1 : 2 * pairs : 2] = 1.0
    return Plane("replicated", _zeros(d), u, v, {"pairs": pairs})


def random_projection_plane(d: int, seed: int) -> Plane:
    """Rows of a seeded standard normal 2 x d matrix as ``u`` and ``v``."""
    matrix = np.random.default_rng(seed).standard_normal((2, d))
    u, v = (torch.from_numpy(row.copy()) for row in matrix)
    return Plane("random_projection", _zeros(d), u, v, {"seed": int(seed)})


def pca_plane(states: Tensor | np.ndarray) -> Plane:
    """Mean and first two principal components (scaled by their std) of states (n, d)."""
    data = torch.as_tensor(states).detach().to(device="cpu", dtype=torch.float64)
    if data.ndim != 2 or data.shape[0] < 3:
        raise ValueError(f"the pca plane needs at least 3 states, got {data.shape[0] if data.ndim else 0}")
    fit = pca_fit(data, 2)
    std = np.sqrt(fit.explained_variance)
    if not std[1] > 0:
        raise ValueError("the states do not span two dimensions (second principal component has no variance)")
    u = torch.from_numpy(fit.components[0] * std[0])
    v = torch.from_numpy(fit.components[1] * std[1])
    info = {
        "n_states": int(fit.n_samples),
        "explained_variance_ratio": [float(r) for r in fit.explained_variance_ratio],
        "std": [float(s) for s in std],
    }
    return Plane("pca", torch.from_numpy(fit.mean.copy()), u, v, info)


def through_states_plane(s0: Tensor, s1: Tensor, s2: Tensor) -> Plane:
    """The plane with ``s0`` at (0, 0), ``s1`` at (1, 0) and ``s2`` at (0, 1)."""
    c, a, b = (torch.as_tensor(s).detach().to(device="cpu", dtype=torch.float64).reshape(-1) for s in (s0, s1, s2))
    u, v = a - c, b - c
    nu, nv = float(u.norm()), float(v.norm())
    if nu == 0 or nv == 0:
        raise ValueError("the three states must be distinct")
    cosine = float(u @ v) / (nu * nv)
    if abs(cosine) > 1 - 1e-9:
        raise ValueError("the three states are collinear: they do not span a plane")
    info = {"norm_u": nu, "norm_v": nv, "cos_uv": cosine}
    return Plane("through_states", c, u, v, info)
