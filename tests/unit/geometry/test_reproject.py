"""Re-projection of stored states: no model, same contract as a geometry run."""

from __future__ import annotations

import numpy as np
import pytest

from latent_atlas.analyses import get_kind
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.geometry.reproject import ReprojectParams, run_reproject
from latent_atlas.lm import LanguageModel

PROMPTS = ["The quick brown fox", "hi", "a longer prompt, punctuation!", "zz"]


class FakeRuns:
    """``StoredRuns`` backed by results in memory."""

    def __init__(self, results):
        self.results = results

    def load(self, run_id, names):
        result = self.results[run_id]
        return dict(result.summary), {k: v for k, v in result.arrays.items() if k in names}


@pytest.fixture(scope="module")
def source(tiny_gpt2: LanguageModel):
    params = GeometryParams(model="tiny", prompts=PROMPTS, states_dtype="float32")
    return FakeRuns({"SRC": run_geometry(params, tiny_gpt2)})


def _params(**overrides) -> ReprojectParams:
    return ReprojectParams(**{"source_run": "SRC", "model": "tiny", **overrides})


def test_registered_on_the_cpu_queue_without_a_model():
    kind = get_kind("geometry_reproject")
    assert kind.queue == "cpu" and kind.needs_model is False and kind.run is run_reproject


def test_same_options_reproduce_the_source(source):
    original = source.results["SRC"]
    again = run_reproject(_params(), source)
    np.testing.assert_allclose(again.arrays["coords"], original.arrays["coords"], atol=1e-4)
    for name in ("layer", "component", "position", "prompt_index", "token_id", "norm", "lens_ids",
                 "positional_coords", "attn_mlp_coords"):
        np.testing.assert_allclose(again.arrays[name], original.arrays[name], atol=1e-4, err_msg=name)
    assert "states" not in again.arrays
    assert again.summary["source_run"] == "SRC" and again.summary["tokens"] == original.summary["tokens"]
    for key in ("lda_accuracy", "silhouette_2d"):
        assert again.summary["separation"][key] == pytest.approx(original.summary["separation"][key])


def test_subset_2d_unit_and_exclusion(source):
    original = source.results["SRC"]
    result = run_reproject(_params(dims=2, unit_normalise=True, exclude_position0=True,
                                   components=["resid_post", "resid_mid"], layer_start=1), source)
    keep = (original.arrays["layer"] >= 1) & np.isin(original.arrays["component"], [1, 3])
    assert result.arrays["coords"].shape == (int(keep.sum()), 2)
    np.testing.assert_array_equal(result.arrays["position"], original.arrays["position"][keep])
    np.testing.assert_array_equal(result.arrays["lens_ids"], original.arrays["lens_ids"][keep])
    assert np.abs(result.arrays["coords"]).max() <= 2.0 + 1e-5  # unit vectors
    summary = result.summary
    assert summary["dims"] == 2 and summary["unit_normalise"] and summary["exclude_position0"]
    assert summary["included_components"] == ["resid_mid", "resid_post"] and summary["layers"] == [1, 3]
    assert "separation" not in summary  # neither attn_out nor mlp_out kept
    assert summary["lens"]["points"] == int(keep.sum())


def test_averaging_here_and_umap(source):
    result = run_reproject(_params(average="samples", reduction="umap", dims=2), source)
    assert result.summary["average"] == "samples" and result.summary["reduction"] == "umap"
    assert np.all(result.arrays["prompt_index"] == -1)
    assert "lens_ids" not in result.arrays and result.summary["lens"]["computed"] == 0
    assert np.isnan(result.arrays["explained_variance_ratio"]).all()


def test_clear_errors(source):
    with pytest.raises(ValueError, match="does not fit the source's 3 layers"):
        run_reproject(_params(layer_stop=7), source)
    without = FakeRuns({"X": type("R", (), {"summary": {}, "arrays": {}})()})
    with pytest.raises(ValueError, match="stored no states"):
        run_reproject(_params(source_run="X"), without)
    averaged = FakeRuns({"A": run_reproject(_params(average="positions"), source)})
    averaged.results["A"].arrays["states"] = source.results["SRC"].arrays["states"][:48]
    with pytest.raises(ValueError, match="already averaged"):
        run_reproject(_params(source_run="A", average="samples"), averaged)
    with pytest.raises(ValueError):
        ReprojectParams(source_run="../etc", model="m")

