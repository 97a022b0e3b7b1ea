"""The geometry run: shapes, padding never counted, averaging and normalisation exact,
subsets of layers and components, the fit without position 0, the logit lens per point,
the positional structure (a known helix), sampled corpus sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_atlas.analyses import Cancelled, get_kind
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.lm import COMPONENTS, LanguageModel, capture_points, load_model, logit_lens
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
    "states": np.float16,
    "attn_mlp_coords": np.float32,
    "attn_mlp_explained": np.float32,
    "lens_ids": np.int32,
    "lens_probs": np.float16,
    "positional_coords": np.float32,
    "positional_position": np.int32,
    "positional_count": np.int32,
    "positional_explained": np.float32,
}


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _params(**overrides: object) -> GeometryParams:
    # The raw path (no normalising, position 0 in the fit) unless a test says otherwise.
    values: dict[str, object] = {"model": "tiny", "prompts": PROMPTS, "batch_size": 3,
                                 "states_dtype": "float32", "unit_normalise": False,
                                 "exclude_position0": False}
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
    result16 = run_geometry(_params(average=average, dims=dims, states_dtype="float16"), lm)
    assert set(result16.arrays) == set(ARRAYS)
    for name, dtype in ARRAYS.items():
        assert result16.arrays[name].dtype == dtype, name
    assert result.arrays["states"].dtype == np.float32
    assert result16.summary["states"] == {"stored": True, "dtype": "float16", "float16_overflow": False,
                                          "bytes": n_points * lm.d_model * 2}
    # float16 storage changes the projection by far less than its spread.
    scale = np.abs(result.arrays["coords"]).max()
    np.testing.assert_allclose(result16.arrays["coords"], result.arrays["coords"], atol=2e-3 * scale)
    assert result.arrays["coords"].shape == (n_points, dims)
    for name in ("layer", "component", "position", "prompt_index", "token_id", "norm"):
        assert result.arrays[name].shape == (n_points,), name
    assert result.arrays["explained_variance_ratio"].shape == (dims,)
    assert result.arrays["layer_norm_mean"].shape == (L, 4)
    assert result.arrays["states"].shape == (n_points, lm.d_model)
    assert result.arrays["lens_ids"].shape == result.arrays["lens_probs"].shape == (n_points, 5)
    assert result.arrays["attn_mlp_coords"].shape == (n_points // 2, 2)
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


def test_layers_and_components_subset(tiny_llama: LanguageModel) -> None:
    full = run_geometry(_params(), tiny_llama)
    part = run_geometry(_params(layer_start=1, layer_stop=3, components=["resid_post", "attn_out"]), tiny_llama)
    keep = (full.arrays["layer"] >= 1) & np.isin(full.arrays["component"], [0, 3])
    for name in ("layer", "component", "position", "prompt_index", "token_id"):
        np.testing.assert_array_equal(part.arrays[name], full.arrays[name][keep], err_msg=name)
    np.testing.assert_allclose(part.arrays["states"], full.arrays["states"][keep], rtol=1e-6)
    assert part.summary["included_components"] == ["attn_out", "resid_post"]  # canonical order
    assert part.summary["layers"] == [1, 3]
    lnm = part.arrays["layer_norm_mean"]
    assert lnm.shape == (3, 4) and np.isnan(lnm[0]).all() and np.isnan(lnm[1:, [1, 2]]).all()
    assert np.isfinite(lnm[1:, [0, 3]]).all()
    assert "attn_mlp_coords" not in part.arrays and "separation" not in part.summary


@pytest.mark.parametrize("bad", [{"layer_start": 3}, {"layer_stop": 4}, {"positional_layer": 3}])
def test_layer_range_beyond_the_model_fails_clearly(tiny_llama: LanguageModel, bad: dict) -> None:
    with pytest.raises(ValueError, match="model has layers|does not fit a model of 3 layers"):
        run_geometry(_params(**bad), tiny_llama)


def test_params_refuse_bad_ranges_and_components() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="empty"):
        _params(layer_start=2, layer_stop=2)
    with pytest.raises(ValidationError, match="at most once"):
        _params(components=["attn_out", "attn_out"])
    with pytest.raises(ValidationError):
        _params(components=[])
    with pytest.raises(ValidationError, match="does not fit a model of 3 layers"):
        GeometryParams.model_validate({"model": "m", "prompts": ["a"], "layer_stop": 5},
                                      context={"n_layers": 3})


def test_exclude_position0_from_the_fit(tiny_gpt2: LanguageModel) -> None:
    result = run_geometry(_params(exclude_position0=True), tiny_gpt2)
    arrays = result.arrays
    states = arrays["states"].astype(np.float64)
    fit = pca_fit(states[arrays["position"] != 0], 3)
    np.testing.assert_allclose(arrays["explained_variance_ratio"], fit.explained_variance_ratio, rtol=1e-4)
    scale = np.abs(arrays["coords"]).max()
    np.testing.assert_allclose(arrays["coords"], fit.transform(states), atol=1e-3 * scale)
    assert result.summary["n_fit_points"] == int((arrays["position"] != 0).sum())
    assert result.summary["n_points"] == len(states)  # position 0 is still projected and shown


@pytest.mark.parametrize("average", ["none", "samples"])
def test_logit_lens_of_every_point(tiny_llama: LanguageModel, average: str) -> None:
    result = run_geometry(_params(average=average), tiny_llama)
    ids, probs = logit_lens(tiny_llama, torch.from_numpy(result.arrays["states"]), k=5)
    np.testing.assert_array_equal(result.arrays["lens_ids"], ids.numpy())
    np.testing.assert_allclose(result.arrays["lens_probs"].astype(np.float32), probs.numpy(), atol=2e-3)
    lens = result.summary["lens"]
    assert lens["computed"] == lens["points"] == len(result.arrays["coords"]) and not lens["sampled"]
    assert set(lens["tokens"]) == {str(i) for i in np.unique(ids.numpy())}
    assert lens["tokens"][str(int(ids[0, 0]))] == tiny_llama.tokenizer.decode([int(ids[0, 0])])


def test_logit_lens_cap_samples_points_reproducibly(tiny_gpt2: LanguageModel) -> None:
    first = run_geometry(_params(lens_max_points=50), tiny_gpt2)
    again = run_geometry(_params(lens_max_points=50), tiny_gpt2)
    done = first.arrays["lens_ids"][:, 0] >= 0
    assert done.sum() == 50 and first.summary["lens"]["sampled"]
    np.testing.assert_array_equal(first.arrays["lens_ids"], again.arrays["lens_ids"])
    assert np.all(first.arrays["lens_probs"][~done] == 0)
    off = run_geometry(_params(logit_lens=False), tiny_gpt2)
    assert "lens_ids" not in off.arrays and off.summary["lens"]["computed"] == 0


def test_token_ids_are_used_exactly(tiny_llama: LanguageModel) -> None:
    ids = [[5, 6, 7, 8], [9, 10]]
    result = run_geometry(GeometryParams(model="t", prompts=["x", "y"], token_ids=ids, max_tokens=4),
                          tiny_llama)
    first = (result.arrays["layer"] == 0) & (result.arrays["component"] == 0)
    assert result.arrays["token_id"][first].tolist() == [5, 6, 7, 8, 9, 10]
    assert result.summary["n_tokens"] == [4, 2]
    with pytest.raises(ValueError, match="vocabulary"):
        run_geometry(GeometryParams(model="t", prompts=["x"], token_ids=[[10**6]]), tiny_llama)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="3 tokens; allowed 1 to 2"):
        GeometryParams(model="t", prompts=["x"], token_ids=[[1, 2, 3]], max_tokens=2)
    with pytest.raises(ValidationError, match="1 sequences for 2 prompts"):
        GeometryParams(model="t", prompts=["x", "y"], token_ids=[[1]])


def _helix(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows on a helix (radius 1, 3 turns, rising 2 over ``n`` positions) in a random 3D subspace."""
    t = np.arange(n)
    angle = 2 * np.pi * 3 * t / n
    local = np.stack([np.cos(angle), np.sin(angle), 2.0 * t / n], axis=1)
    basis = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, 3)))[0]  # (d, 3) orthonormal
    return local @ basis.T, local


def test_learned_positions_form_the_helix_they_were_set_to(tiny_gpt2_dir) -> None:
    lm = load_model(str(tiny_gpt2_dir), name="helix-gpt2")
    weights, local = _helix(1024, lm.d_model)
    with torch.no_grad():
        lm.model.transformer.wpe.weight.copy_(torch.from_numpy(weights))
    result = run_geometry(_params(prompts=["ab"], logit_lens=False), lm)
    coords = result.arrays["positional_coords"].astype(np.float64)
    assert coords.shape == (1024, 3) and result.summary["positional"]["kind"] == "learned"
    np.testing.assert_array_equal(result.arrays["positional_position"], np.arange(1024))
    assert result.arrays["positional_explained"].sum() == pytest.approx(1.0, abs=1e-6)
    # PCA recovers the helix up to a rotation: pairwise distances are preserved exactly.
    centred = local - local.mean(axis=0)
    sample = np.arange(0, 1024, 37)
    ours = np.linalg.norm(coords[sample, None] - coords[None, sample], axis=-1)
    truth = np.linalg.norm(centred[sample, None] - centred[None, sample], axis=-1)
    np.testing.assert_allclose(ours, truth, atol=1e-4)
    assert "helix" in result.summary["positional"]["reason"]


def test_rotary_models_show_the_mean_state_per_position(tiny_llama: LanguageModel) -> None:
    result = run_geometry(_params(positional_layer=2), tiny_llama)
    positional = result.summary["positional"]
    assert positional["kind"] == "mean_state" and positional["layer"] == 2
    assert "rotary" in positional["reason"] and "position 0" in positional["reason"]
    positions = result.arrays["positional_position"]
    longest = max(len(ids) for ids in tiny_llama.tokenizer(PROMPTS)["input_ids"])
    np.testing.assert_array_equal(positions, np.arange(1, longest))
    # The mean per position, by hand, projected the same way.
    per_prompt = [_alone(tiny_llama, p)[2, 3] for p in PROMPTS]  # (n, D) resid_post at layer 2
    means = np.stack([np.mean([s[p] for s in per_prompt if len(s) > p], axis=0) for p in positions])
    fit = pca_fit(means, 3)
    scale = np.abs(fit.transform(means)).max()
    np.testing.assert_allclose(result.arrays["positional_coords"], fit.transform(means), atol=1e-4 * scale)
    counts = [sum(len(s) > p for s in per_prompt) for p in positions]
    assert result.arrays["positional_count"].tolist() == counts


def test_summary_carries_separation_and_norm_statistics(tiny_gpt2: LanguageModel) -> None:
    result = run_geometry(_params(), tiny_gpt2)
    separation = result.summary["separation"]
    assert separation["layers"] == [0, 1, 2]
    assert len(separation["lda_accuracy"]) == len(separation["silhouette_2d"]) == 3
    assert all(0.0 <= v <= 1.0 for v in separation["lda_accuracy"] if v is not None)
    stats = result.summary["norm_stats"]
    assert len(stats["position0_ratio"]) == 3 and len(stats["position0_ratio"][0]) == 4
    first = (result.arrays["layer"] == 1) & (result.arrays["component"] == 3)
    norms, positions = result.arrays["norm"][first], result.arrays["position"][first]
    expected = norms[positions == 0].mean() / norms[positions > 0].mean()
    assert stats["position0_ratio"][1][3] == pytest.approx(expected, rel=1e-5)
    assert set(stats["growth"]) == set(COMPONENTS)
    assert json.loads(json.dumps(result.summary)) == result.summary


def _hub_reachable() -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _hub_reachable(), reason="needs the Hugging Face hub (real GPT-2 weights)")
def test_real_gpt2_position_embeddings_form_a_helix() -> None:
    lm = load_model("openai-community/gpt2", name="gpt2")
    result = run_geometry(_params(prompts=["Hello world"], logit_lens=False, layer_start=11), lm)
    coords = result.arrays["positional_coords"].astype(np.float64)
    assert coords.shape == (1024, 3)
    steps = np.linalg.norm(np.diff(coords, axis=0), axis=1)
    spread = np.linalg.norm(coords - coords.mean(axis=0), axis=1).mean()
    assert np.median(steps) < 0.1 * spread  # a smooth curve through the positions
    # ... that winds: around some axis, the angle of the other two coordinates turns > pi.
    turns = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        angle = np.unwrap(np.arctan2(coords[:, b], coords[:, a]))
        turns.append(abs(angle[-1] - angle[0]))
    assert max(turns) > np.pi


def test_the_defaults_normalise_and_fit_without_position0() -> None:
    """Raw states of real models are one direction (position 0): the defaults avoid that."""
    options = GeometryParams(model="m", prompts=["a"]).reduce_options()
    assert options.unit_normalise is True and options.exclude_position0 is True
