"""The scan run on tiny random models: one basis for every frame, the causal-prefix invariant, the
self-diff, KL/JS against scipy, and "project into the space of run X"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from latent_atlas.analyses import get_kind
from latent_atlas.analyses.scan import ScanParams, run_scan
from latent_atlas.analyses.scan.diff import cka_distance, cosine_distance, js_bits, kl_bits
from latent_atlas.lm import LanguageModel
from latent_atlas.lm.hooks import COMPONENTS

A = "The capital of France is"
B = "The capital of Spain is, maybe"  # shares "The capital of " (15 bytes) with A, and is longer


class FakeRuns:
    """``StoredRuns`` backed by results in memory: run id -> (model, Result)."""

    def __init__(self, runs):
        self.runs = runs

    def info(self, run_id):
        if run_id not in self.runs:
            return None
        model, result = self.runs[run_id]
        return {"kind": "scan", "status": "succeeded", "model": model, "summary": dict(result.summary)}

    def load(self, run_id, names):
        result = self.runs[run_id][1]
        return dict(result.summary), {k: v for k, v in result.arrays.items() if k in names}


def _params(**overrides) -> ScanParams:
    return ScanParams(**{"model": "tiny", "mode": "diff", "prompt_a": A, "prompt_b": B, **overrides})


def _states(lm: LanguageModel, prompt: str) -> np.ndarray:
    """Reference states (F, T, d): the embeddings and output_hidden_states, the last before the final norm."""
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        blocks = lm.adapter.blocks_of(lm.model)
        last = {}
        handle = blocks[-1].register_forward_hook(lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
        try:
            lm.model(input_ids=ids)
        finally:
            handle.remove()
    frames = [h[0] for h in hidden[:-1]] + [last["x"][0]]
    return torch.stack(frames).float().numpy()


@pytest.fixture(scope="module")
def diff_run(tiny_gpt2: LanguageModel):
    return run_scan(_params(), tiny_gpt2)


def test_registered_reading_runs():
    kind = get_kind("scan")
    assert kind.params is ScanParams and kind.run is run_scan and kind.reads_runs and kind.needs_model


def test_frames_tokens_and_contract(diff_run, tiny_gpt2):
    arrays, summary = diff_run.arrays, diff_run.summary
    n_a, n_b = len(A), len(B)  # byte-level tokenizer: one token per character
    assert summary["n_tokens"] == [n_a, n_b]
    assert summary["frame_labels"] == ["embeddings", "block 0", "block 1", "block 2"]
    assert arrays["coords"].shape == (tiny_gpt2.n_layers + 1, n_a + n_b, 3)
    assert arrays["frame_layer"].tolist() == [-1, 0, 1, 2]
    assert arrays["token_prompt"].tolist() == [0] * n_a + [1] * n_b
    assert arrays["token_position"].tolist() == list(range(n_a)) + list(range(n_b))
    assert "".join(summary["tokens"][0]) == A and "".join(summary["tokens"][1]) == B
    assert summary["hook_check_max_abs_error"] < 1e-4
    assert arrays["lens_ids"].min() >= 0 and summary["lens"]["positions"] == "all"
    assert all(str(int(t)) in summary["lens"]["tokens"] for t in np.unique(arrays["lens_ids"]))


def test_every_frame_uses_the_one_stored_basis(diff_run, tiny_gpt2):
    """A state projects identically wherever it appears: coords == (state - mean) @ components.T."""
    arrays = diff_run.arrays
    mean, components = arrays["basis_mean"], arrays["basis_components"]
    for prompt, text in enumerate([A, B]):
        states = _states(tiny_gpt2, text)
        expected = (states.astype(np.float64) - mean) @ components.T
        got = arrays["coords"][:, arrays["token_prompt"] == prompt]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # The same state in two frames: the shared prefix of A and B projects to the same point.
    prefix = len("The capital of ")
    a = arrays["coords"][:, arrays["token_prompt"] == 0][:, :prefix]
    b = arrays["coords"][:, arrays["token_prompt"] == 1][:, :prefix]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_prefix_is_exactly_zero_at_every_layer(family, tiny_gpt2, tiny_llama):
    lm = tiny_gpt2 if family == "gpt2" else tiny_llama
    result = run_scan(_params(points="all"), lm)
    heat = result.arrays["div_heatmap"]
    prefix = len("The capital of ")
    assert result.summary["diff"]["shared_prefix"] == prefix
    assert result.summary["diff"]["aligned"] == len(A)
    assert heat.shape == (4 * lm.n_layers + 1, len(A))
    assert np.all(heat[:, :prefix] == 0.0)  # exactly, in every frame (all four points of every block)
    assert np.all(heat[1:, prefix] > 0)  # the first differing token differs in every block


def test_a_prompt_diffed_with_itself_is_a_zero_curve(tiny_gpt2):
    result = run_scan(_params(prompt_b=A), tiny_gpt2)
    for name in ("cosine_last", "cosine_mean", "kl", "js", "cka"):
        assert np.all(result.arrays[f"div_{name}"] == 0.0), name
    assert np.all(result.arrays["div_heatmap"] == 0.0)
    assert result.summary["diff"]["first_crossing"] is None


def test_kl_and_js_against_a_direct_computation(diff_run, tiny_gpt2):
    logits = []
    for text in (A, B):
        states = torch.from_numpy(_states(tiny_gpt2, text)[:, -1])
        with torch.inference_mode():
            norm = tiny_gpt2.adapter.final_norm_of(tiny_gpt2.model)
            logits.append(tiny_gpt2.adapter.unembedding_of(tiny_gpt2.model)(norm(states)).double())
    p, q = (torch.softmax(x, dim=-1).numpy() for x in logits)
    kl = rel_entr(p, q).sum(axis=-1) / np.log(2)
    js = jensenshannon(p, q, base=2, axis=-1) ** 2
    np.testing.assert_allclose(diff_run.arrays["div_kl"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(diff_run.arrays["div_js"], js, rtol=1e-4, atol=1e-6)
    # The curve's first crossing is the first frame above the threshold of its metric.
    run = run_scan(_params(threshold_metric="kl", threshold=float(kl.min()) * 0.999), tiny_gpt2)
    assert run.summary["diff"]["first_crossing"] == int(np.flatnonzero(kl > kl.min() * 0.999)[0])


def test_metric_helpers():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cosine_distance(a, b), 1 - cos, atol=1e-12)
    assert cosine_distance(np.zeros(3), np.ones(3)) == 1.0 and cosine_distance(np.zeros(3), np.zeros(3)) == 0.0
    # CKA is invariant to rotation and scale: 1 - CKA == 0 for (X, c X R).
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert cka_distance(a, 3.0 * a @ rot) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < cka_distance(a, b) <= 1.0 and np.isnan(cka_distance(a[:1], b[:1]))
    lp = np.log(np.array([[0.5, 0.5, 0.0 + 1e-300]]))
    assert js_bits(lp, lp[:, ::-1]).item() == pytest.approx(jensenshannon([0.5, 0.5, 0], [0, 0.5, 0.5], base=2) ** 2)
    assert kl_bits(lp, lp).item() == 0.0


def test_single_mode_has_no_diff(tiny_gpt2):
    result = run_scan(ScanParams(model="tiny", prompt_a=A, unit_normalise=True), tiny_gpt2)
    assert "diff" not in result.summary and "div_js" not in result.arrays
    assert result.arrays["coords"].shape == (tiny_gpt2.n_layers + 1, len(A), 3)
    assert result.summary["basis"]["unit_normalise"] is True


def test_points_all_frames(tiny_gpt2):
    result = run_scan(ScanParams(model="tiny", prompt_a=A, points="all", lens=False), tiny_gpt2)
    labels = result.summary["frame_labels"]
    assert len(labels) == 4 * tiny_gpt2.n_layers + 1 and labels[1] == f"block 0 {COMPONENTS[0]}"
    assert result.arrays["frame_component"].tolist()[:5] == [-1, 0, 1, 2, 3]
    assert "lens_ids" not in result.arrays and result.summary["lens"]["enabled"] is False


def test_lens_cap_keeps_the_last_positions(tiny_gpt2):
    result = run_scan(_params(lens_max_points=2 * 4 * 3), tiny_gpt2)  # 3 positions per prompt, 4 frames
    ids, prompt = result.arrays["lens_ids"], result.arrays["token_prompt"]
    for p, n in enumerate([len(A), len(B)]):
        computed = (ids[:, prompt == p] >= 0).all(axis=0)
        assert computed.tolist() == [False] * (n - 3) + [True] * 3
    assert result.summary["lens"]["positions"] == "the last 3 positions of each prompt"


def test_project_into_the_space_of_run_x(diff_run, tiny_gpt2, tiny_llama):
    runs = FakeRuns({"X": ("tiny", diff_run), "L": ("tiny-llama", diff_run)})
    result = run_scan(_params(prompt_a="Hello there", prompt_b="Hello where", basis_run="X"), tiny_gpt2,
                      runs=runs)
    assert np.array_equal(result.arrays["basis_components"], diff_run.arrays["basis_components"])
    assert result.summary["basis"]["source_run"] == "X" and result.summary["basis"]["fit_states"] == 0
    # Identical states in both runs (the shared "The capital of " of A) land on identical points.
    again = run_scan(_params(basis_run="X"), tiny_gpt2, runs=runs)
    np.testing.assert_array_equal(again.arrays["coords"], diff_run.arrays["coords"])
    # A basis of another model is refused in the run as well (before queueing: see test_params).
    with pytest.raises(ValueError, match="used model tiny-llama, not tiny"):
        run_scan(_params(basis_run="L"), tiny_gpt2, runs=runs)
    with pytest.raises(ValueError, match="hidden size 64; the model has 32"):
        llama_run = FakeRuns({"X": ("tiny-llama", diff_run)})
        run_scan(_params(model="tiny-llama", basis_run="X"), _Narrow(tiny_llama), runs=llama_run)


class _Narrow:
    """A model stand-in that reports a width of 32 (the basis check runs before any forward)."""

    def __init__(self, lm):
        self._lm = lm

    def __getattr__(self, name):
        return 32 if name == "d_model" else getattr(self._lm, name)


def test_umap_projection(tiny_gpt2):
    result = run_scan(ScanParams(model="tiny", prompt_a=A, reduction="umap", umap_neighbors=5, lens=False),
                      tiny_gpt2)
    assert result.arrays["coords"].shape == (tiny_gpt2.n_layers + 1, len(A), 3)
    assert np.isfinite(result.arrays["coords"]).all()
    assert result.summary["basis"]["kind"] == "umap" and result.summary["basis"]["stored"] is False
    assert "basis_mean" not in result.arrays
