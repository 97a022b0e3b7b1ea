"""The exact fast path at layer L equals final norm + unembedding of every grid point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.grid import GridParams, reduce_logits, run_grid, topk_rows
from latent_atlas.lm import LanguageModel
from latent_atlas.lm.inject import affine_readout, readout

PLANES = ["direct", "replicated", "random_projection", "pca"]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _direct_reference(lm: LanguageModel, arrays: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, ...]:
    """Top-k ids, probabilities and entropy of every cell, the straightforward way."""
    xs, ys = (torch.from_numpy(arrays[a]).double() for a in ("xs", "ys"))
    c, u, v = (torch.from_numpy(arrays[a]).double() for a in ("plane_center", "plane_u", "plane_v"))
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    states = (c + xx.reshape(-1, 1) * u + yy.reshape(-1, 1) * v).float()
    logits = readout(lm, states).float()
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = probs.topk(k, dim=-1)
    entropy = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)
    n = xs.shape[0]
    return (top_i.reshape(n, n, k).numpy(), top_p.reshape(n, n, k).numpy(), entropy.reshape(n, n).numpy())


def _assert_matches(lm: LanguageModel, params: GridParams, min_defined: float = 0.9) -> None:
    result = run_grid(params, lm)
    assert result.summary["fast_path"] is True, result.summary["fast_path_note"]
    ids, probs, entropy = _direct_reference(lm, result.arrays, params.top_k)
    # Top-1 must be identical wherever it is defined (an exact tie, e.g. h = 0, has no top-1).
    defined = probs[..., 0] - probs[..., 1] > 1e-6
    assert defined.mean() >= min_defined
    assert np.array_equal(result.arrays["top_ids"][..., 0][defined], ids[..., 0][defined])
    np.testing.assert_allclose(result.arrays["top_probs"], probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result.arrays["entropy"], entropy, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("plane", PLANES)
def test_fast_path_equals_direct_computation(lm: LanguageModel, plane: str) -> None:
    params = GridParams(
        model=lm.name, layer=lm.n_layers, size=24, spacing=0.7, center=(0.3, -0.2), plane=plane,
        seed=3, top_k=5,
    )
    _assert_matches(lm, params)


def test_fast_path_with_huge_and_tiny_coordinates(lm: LanguageModel) -> None:
    """Far from the origin the norm dominates; at the origin of the direct plane h = 0."""
    _assert_matches(lm, GridParams(model=lm.name, layer=lm.n_layers, size=6, spacing=2000.0, plane="direct"))
    # Near h = 0 the distribution is almost uniform: probabilities must still match.
    _assert_matches(
        lm, GridParams(model=lm.name, layer=lm.n_layers, size=5, spacing=1e-4, plane="direct"), min_defined=0.0
    )


def test_fast_path_basis(lm: LanguageModel) -> None:
    gen = torch.Generator().manual_seed(5)
    c, u, v = (torch.randn(lm.d_model, generator=gen, dtype=torch.float64) for _ in range(3))
    fast = affine_readout(lm, c, u, v)
    assert fast is not None
    assert fast.kind == ("layer" if lm.adapter.family == "gpt2" else "rms")
    x = torch.tensor([0.0, 1.0, -2.5, 10.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.5, 3.0, -7.0], dtype=torch.float64)
    states = (c + x[:, None] * u + y[:, None] * v).float()
    torch.testing.assert_close(fast.logits(x, y), readout(lm, states).float(), rtol=1e-4, atol=1e-5)


def test_reduce_logits_matches_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1000, generator=gen) * 4
    logits[3] = 0.0  # uniform row: entropy log V
    logits[4, 17] = 80.0  # one-hot row: entropy 0
    probs = torch.softmax(logits, -1)
    expected_p, expected_i = probs.topk(7, -1)
    expected_h = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    for chunk in (None, 1, 8, 64):
        ids, top_p, entropy = reduce_logits(logits.clone(), 7, chunk_rows=chunk)
        assert torch.equal(ids[:, 0], expected_i[:, 0])
        torch.testing.assert_close(top_p, expected_p, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(entropy, expected_h, rtol=1e-5, atol=1e-5)
    assert abs(float(entropy[3]) - np.log(1000)) < 1e-5
    assert float(entropy[4]) < 1e-5


@pytest.mark.parametrize("width", [1000, 49152, 5000 + 77])
def test_two_level_topk_equals_topk(width: int) -> None:
    gen = torch.Generator().manual_seed(width)
    z = torch.randn(40, width, generator=gen)
    z[1, 10:20] = 50.0 + torch.arange(10.0)  # the whole top-10 in one block
    z[2, -3:] = 99.0 + torch.arange(3.0)  # the top in the ragged tail
    z[3] = 0.0  # all equal
    for k in (1, 5, 10):
        values, index = topk_rows(z, k)
        expected = torch.topk(z, k, dim=1)
        assert torch.equal(values, expected.values)
        assert torch.equal(z.gather(1, index), values)
        assert torch.equal(index[4:], expected.indices[4:]) and torch.equal(index[:3], expected.indices[:3])
        assert all(len(set(row.tolist())) == k for row in index)  # no duplicates, also in the tie row


@pytest.mark.demo_model
@pytest.mark.parametrize("plane", PLANES)
def test_demo_model_fast_path_equals_direct_computation(demo_lm: LanguageModel, plane: str) -> None:
    spacing = {"direct": 4.0, "replicated": 0.5, "random_projection": 0.2, "pca": 0.25}[plane]
    params = GridParams(
        model=demo_lm.name, layer=demo_lm.n_layers, size=20, spacing=spacing, plane=plane, seed=1, top_k=10
    )
    _assert_matches(demo_lm, params)
