"""The CUDA paths, run for real where a GPU is present (skipped elsewhere).

Each test runs the same analysis on the CPU and on the GPU and compares, so
what a GPU worker stores is what a CPU worker would have stored; the batch
halving on out-of-memory is driven by a real CUDA allocation failure (a
per-process memory cap), not a simulated one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.analyses.grid import streaming as grid_streaming
from latent_atlas.lm import load_model, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["the cat sat on the mat", "a dog ran", "hello world, hello again"]


@pytest.fixture(scope="module", params=["tiny_gpt2_dir", "tiny_llama_dir"])
def pair(request: pytest.FixtureRequest):
    directory: Path = request.getfixturevalue(request.param)
    name = request.param.removesuffix("_dir")
    return (load_model(str(directory), name=name, device="cpu"),
            load_model(str(directory), name=name, device="cuda"))


def test_auto_device_is_the_gpu() -> None:
    assert resolve_device("auto").type == "cuda"


def test_geometry_on_the_gpu_matches_the_cpu(pair) -> None:
    cpu, gpu = pair
    params = GeometryParams(model=cpu.name, prompts=PROMPTS, batch_size=2)
    a, b = run_geometry(params, cpu), run_geometry(params, gpu)
    assert b.summary["hook_check_max_abs_error"] < 1e-3
    np.testing.assert_allclose(b.arrays["norm"], a.arrays["norm"], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(b.arrays["explained_variance_ratio"], a.arrays["explained_variance_ratio"],
                               atol=1e-3)
    # PCA axes are defined up to sign: compare the coordinates axis by axis up to a sign.
    for axis in range(a.arrays["coords"].shape[1]):
        x, y = a.arrays["coords"][:, axis], b.arrays["coords"][:, axis]
        sign = 1.0 if float(x @ y) >= 0 else -1.0
        np.testing.assert_allclose(sign * y, x, atol=2e-2 * float(np.abs(x).max()))
    agree = np.mean(a.arrays["lens_ids"][:, 0] == b.arrays["lens_ids"][:, 0])
    assert agree > 0.99, agree


def test_grid_on_the_gpu_matches_the_cpu(pair) -> None:
    cpu, gpu = pair
    for layer in (1, cpu.n_layers):  # direct computation, and the fast path at L
        params = GridParams(model=cpu.name, layer=layer, size=48, spacing=0.5, plane="replicated")
        a, b = run_grid(params, cpu), run_grid(params, gpu)
        top_a, top_b = a.arrays["top_ids"][..., 0], b.arrays["top_ids"][..., 0]  # (N, N)
        # Identical top-1 except at exact ties (the replicated plane's diagonal ties two tokens).
        differ = top_a != top_b
        gap = a.arrays["top_probs"][..., 0] - a.arrays["top_probs"][..., 1]
        assert np.all(gap[differ] < 1e-5), gap[differ].max()
        np.testing.assert_allclose(b.arrays["top_probs"][..., 0], a.arrays["top_probs"][..., 0], atol=1e-4)
        np.testing.assert_allclose(b.arrays["entropy"], a.arrays["entropy"], atol=1e-3)


def test_a_real_out_of_memory_halves_the_batch(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    _, gpu = pair
    params = GridParams(model=gpu.name, layer=1, size=512, spacing=0.05, plane="replicated")
    reference = run_grid(params, gpu)
    # Ask for the whole grid in one batch, under a cap of 64 MiB above what is in use now.
    monkeypatch.setitem(grid_streaming.MAX_CELLS, "cuda", 512 * 512)
    monkeypatch.setitem(grid_streaming.LOGITS_BUDGET, "cuda", 1 << 40)
    index = torch.cuda.current_device() if gpu.device.index is None else gpu.device.index
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(index).total_memory
    cap = (torch.cuda.memory_reserved(index) + (64 << 20)) / total
    torch.cuda.set_per_process_memory_fraction(cap, index)
    try:
        capped = run_grid(params, gpu)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    sizes = capped.summary["batch_sizes"]
    assert sizes[0] < 512 * 512, sizes  # halved at least once after a real CUDA out-of-memory
    np.testing.assert_array_equal(capped.arrays["top_ids"], reference.arrays["top_ids"])
