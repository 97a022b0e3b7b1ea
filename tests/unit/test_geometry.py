"""The geometry run: shapes, padding never counted, averaging and normalisation exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_atlas.analyses import Cancelled, get_kind
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.lm import COMPONENTS, LanguageModel, capture_points
from latent_atlas.reduce import pca_fit

PROMPTS = ["The quick brown fox", "hi", "a longer prompt, punctuation!", "zz"]
ARRAYS = {
    "coords": np.float32,
    "layer": np.int16,
    "component": np.int8,
    "position": np.int32,
    "prompt_index": np.int32,
    "token_id": np.int32,
    "norm": np.float32,
    "explained_variance_ratio": np.float32,
    "layer_norm_mean": np.float32,
}


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _params(**overrides: object) -> GeometryParams:
    values: dict[str, object] = {"model": "tiny", "prompts": PROMPTS, "batch_size": 3}
    values.update(overrides)
    return GeometryParams(**values)


def _alone(lm: LanguageModel, prompt: str, max_tokens: int = 32) -> np.ndarray:
    """(L, 4, n, D) float64 states of one prompt run alone (no padding at all)."""
    ids = lm.tokenizer([prompt])["input_ids"][0][:max_tokens]
    capture = capture_points(lm, torch.tensor([ids]))
    return capture.stacked()[:, :, 0].double().numpy()


def test_registered() -> None:
    kind = get_kind("geometry")
    assert kind.params is GeometryParams and kind.run is run_geometry


@pytest.mark.parametrize("average", ["none", "samples", "positions"])
@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_and_dtypes(lm: LanguageModel, average: str, dims: int) -> None:
    result = run_geometry(_params(average=average, dims=dims), lm)
    n_tokens = [len(ids) for ids in lm.tokenizer(PROMPTS)["input_ids"]]
    L = lm.n_layers
    per_layer = {"none": sum(n_tokens), "samples": max(n_tokens), "positions": len(PROMPTS)}[average]
    n_points = L * 4 * per_layer
    assert set(result.arrays) == set(ARRAYS)
    for name, dtype in ARRAYS.items():
        assert result.arrays[name].dtype == dtype, name
    assert result.arrays["coords"].shape == (n_points, dims)
    for name in ("layer", "component", "position", "prompt_index", "token_id", "norm"):
        assert result.arrays[name].shape == (n_points,), name
    assert result.arrays["explained_variance_ratio"].shape == (dims,)
    assert result.arrays["layer_norm_mean"].shape == (L, 4)
    assert np.all(np.isfinite(result.arrays["coords"]))
    assert sorted(set(result.arrays["layer"].tolist())) == list(range(L))
    assert sorted(set(result.arrays["component"].tolist())) == [0, 1, 2, 3]
    if average == "samples":
        assert np.all(result.arrays["prompt_index"] == -1) and np.all(result.arrays["token_id"] == -1)
    if average == "positions":
        assert np.all(result.arrays["position"] == -1) and np.all(result.arrays["token_id"] == -1)
    summary = result.summary
    assert json.loads(json.dumps(summary)) == summary
    assert summary["components"] == list(COMPONENTS)
    assert summary["n_layers"] == L and summary["d_model"] == lm.d_model
    assert summary["n_points"] == n_points and summary["dims"] == dims
    assert summary["reduction"] == "pca" and summary["average"] == average
    assert summary["n_tokens"] == n_tokens
    assert [len(t) for t in summary["tokens"]] == n_tokens
    assert "".join(summary["tokens"][0]) == PROMPTS[0]
    assert 0.0 <= summary["hook_check_max_abs_error"] < 1e-4
    assert summary["unit_normalise"] is False


def test_padding_is_never_counted(lm: LanguageModel) -> None:
    result = run_geometry(_params(batch_size=4), lm)
    ids = lm.tokenizer(PROMPTS)["input_ids"]
    n_tokens = [len(row) for row in ids]
    assert result.arrays["coords"].shape[0] == sum(n_tokens) * lm.n_layers * 4
    pad_id = lm.tokenizer.pad_token_id
    assert pad_id not in {t for row in ids for t in row}
    assert not np.any(result.arrays["token_id"] == pad_id)
    # Metadata of layer 0, component 0 lists every real token once, in order.
    first = (result.arrays["layer"] == 0) & (result.arrays["component"] == 0)
    assert result.arrays["token_id"][first].tolist() == [t for row in ids for t in row]
    assert result.arrays["prompt_index"][first].tolist() == [i for i, n in enumerate(n_tokens) for _ in range(n)]
    assert result.arrays["position"][first].tolist() == [p for n in n_tokens for p in range(n)]
    # The norms of every point equal those of each prompt run alone, so the batch mates do not leak in.
    norms = result.arrays["norm"].reshape(lm.n_layers, 4, -1)
    start = 0
    for prompt, n in zip(PROMPTS, n_tokens, strict=True):
        alone = np.linalg.norm(_alone(lm, prompt), axis=-1)
        np.testing.assert_allclose(norms[:, :, start : start + n], alone, rtol=1e-4, atol=1e-6)
        start += n


def test_states_do_not_depend_on_batch_mates(lm: LanguageModel) -> None:
    short, long = "hi", "a much longer prompt that forces padding"
    encoded = lm.tokenizer([short, long], padding=True, return_tensors="pt")
    batched = capture_points(lm, encoded["input_ids"], encoded["attention_mask"])
    mask = encoded["attention_mask"].bool()
    short_states = batched.gather(mask)[:, :, : int(mask[0].sum())].double().numpy()
    np.testing.assert_allclose(short_states, _alone(lm, short), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unit", [False, True])
@pytest.mark.parametrize("average", ["none", "samples", "positions"])
def test_against_direct_numpy(lm: LanguageModel, average: str, unit: bool) -> None:
    result = run_geometry(_params(average=average, unit_normalise=unit, dims=3), lm)
    per_prompt = [_alone(lm, prompt) for prompt in PROMPTS]  # each (L, 4, n, D)
    L, D = lm.n_layers, lm.d_model
    if average == "none":
        states = np.concatenate(per_prompt, axis=2)
    elif average == "positions":
        states = np.stack([s.mean(axis=2) for s in per_prompt], axis=2)
    else:
        longest = max(s.shape[2] for s in per_prompt)
        states = np.stack(
            [np.mean([s[:, :, p] for s in per_prompt if s.shape[2] > p], axis=0) for p in range(longest)],
            axis=2,
        )
    states = states.reshape(-1, D)
    norms = np.linalg.norm(states, axis=1)
    np.testing.assert_allclose(result.arrays["norm"], norms, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        result.arrays["layer_norm_mean"], norms.reshape(L, 4, -1).mean(axis=2), rtol=1e-4, atol=1e-6
    )
    points = states / norms[:, None] if unit else states
    fit = pca_fit(points, 3)
    np.testing.assert_allclose(result.arrays["explained_variance_ratio"], fit.explained_variance_ratio, rtol=1e-3)
    scale = np.abs(fit.transform(points)).max()
    np.testing.assert_allclose(result.arrays["coords"], fit.transform(points), atol=1e-3 * scale)
    assert result.summary["unit_normalise"] is unit


def test_unit_normalise_puts_points_on_the_sphere(tiny_gpt2: LanguageModel) -> None:
    result = run_geometry(_params(unit_normalise=True, dims=3), tiny_gpt2)
    raw = run_geometry(_params(unit_normalise=False, dims=3), tiny_gpt2)
    np.testing.assert_allclose(result.arrays["norm"], raw.arrays["norm"], rtol=1e-6)
    # The PCA of unit vectors explains variance of points on the unit sphere: coords are bounded by 2.
    assert np.abs(result.arrays["coords"]).max() <= 2.0 + 1e-5


def test_max_tokens_truncates(tiny_llama: LanguageModel) -> None:
    result = run_geometry(_params(max_tokens=5), tiny_llama)
    n_tokens = [min(5, len(ids)) for ids in tiny_llama.tokenizer(PROMPTS)["input_ids"]]
    assert result.summary["n_tokens"] == n_tokens
    assert result.summary["truncated"] == [True, False, True, False]
    assert result.arrays["coords"].shape[0] == sum(n_tokens) * tiny_llama.n_layers * 4


def test_progress_once_per_batch_and_cancel(tiny_gpt2: LanguageModel) -> None:
    reports: list[tuple[float, str]] = []
    run_geometry(_params(batch_size=1), tiny_gpt2, lambda f, s: reports.append((f, s)))
    stages = [s for _, s in reports if s.startswith("capturing")]
    assert stages == [f"capturing batch {i}/4" for i in range(1, 5)]
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)

    def cancel(fraction: float, stage: str) -> None:
        if stage == "capturing batch 2/4":
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_geometry(_params(batch_size=1), tiny_gpt2, cancel)
