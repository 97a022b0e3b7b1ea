"""What holds on the real demo model (SmolLM2-135M) over 36 prompts: the README's "Findings".

Measured once (CPU, float32 de-quantised GGUF, ``FINDINGS_PROMPTS``, unit-normalised states,
position 0 left out of the fit, as in the README's figures), with the thresholds set below the
measurement with a margin for other devices and dtypes:

* attention vs MLP outputs: held-out linear accuracy per layer 0.940-1.000 (median 0.985;
  0.931-1.000 without unit-normalisation) -> asserted >= 0.85 per layer and median >= 0.95;
* position 0: the ``resid_post`` norm ratio (position 0 / rest) is about 1 at layer 0
  (measured 1.1), jumps at layer 11 when layer 11's MLP writes a ~22,600-norm state at
  position 0 (measured 157x), and stays >= 36x through layer 27 (6.9x at the last layer);
  47x over all points -> asserted: layer 0 in [0.5, 2], max >= 50, >= 20 on layers 11-27,
  overall >= 10;
* norms grow through the layers: ``resid_post`` without position 0 from 49 to 740
  (Spearman 0.994, 15x) -> asserted rho >= 0.95 and last/first >= 5; with position 0 the
  means jump at layer 11 and fall at the end (rho 0.83) -> asserted only rho > 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.geometry.findings import FINDINGS_OPTIONS, FINDINGS_PROMPTS, findings
from latent_atlas.lm import LanguageModel

pytestmark = pytest.mark.demo_model


@pytest.fixture(scope="module")
def measured(demo_lm: LanguageModel) -> dict:
    params = GeometryParams(model="smollm2-135m", prompts=FINDINGS_PROMPTS, logit_lens=False,
                            store_states=False, batch_size=8, **FINDINGS_OPTIONS)
    return findings(run_geometry(params, demo_lm))


def test_enough_prompts(measured: dict) -> None:
    assert measured["n_prompts"] >= 32 and len(measured["separation_accuracy"]) == 30


def test_attention_and_mlp_outputs_are_linearly_separable_at_every_layer(measured: dict) -> None:
    assert measured["separation_accuracy_min"] >= 0.85, measured["separation_accuracy"]
    assert measured["separation_accuracy_median"] >= 0.95
    assert measured["separation_overall"] >= 0.85


def test_position0_has_an_outlier_norm_from_layer_11(measured: dict) -> None:
    ratio = np.array(measured["position0_ratio_resid_post"])
    assert 0.5 <= ratio[0] <= 2.0, ratio
    assert ratio.max() >= 50.0
    assert int(np.argmax(ratio)) == 11
    assert np.all(ratio[11:28] >= 20.0), ratio
    assert measured["position0_ratio_overall"] >= 10.0


def test_residual_norms_grow_through_the_layers(measured: dict) -> None:
    without0 = measured["growth_resid_post_excluding_position0"]
    assert without0["grows"] and without0["spearman"] >= 0.95 and without0["last_over_first"] >= 5.0
    assert measured["growth_resid_post"]["spearman"] > 0.5
    rest = np.array(measured["resid_post_mean_rest"])
    assert rest[-1] > rest[0] * 5


# The New-run page's example prompts: the "default run" a new user starts with.
DEFAULT_RUN_PROMPTS = ["The capital of France is", "The quick brown fox", "Once upon a time"]


def test_the_default_run_shows_structure(demo_lm: LanguageModel) -> None:
    """Measured: raw states give PC1 99.6 % (position 0 is one direction, and the other points
    span under 1 % of the picture along PC1); the defaults (unit-normalised, position 0 out of
    the fit) give PC1 21 % and the other points fill >= 94 % of every axis."""
    default = GeometryParams(model="smollm2-135m", prompts=DEFAULT_RUN_PROMPTS, logit_lens=False)
    raw = default.model_copy(update={"unit_normalise": False, "exclude_position0": False})
    for params, structured in ((default, True), (raw, False)):
        arrays = run_geometry(params, demo_lm).arrays
        coords, rest = arrays["coords"], arrays["position"] != 0
        pc1 = float(arrays["explained_variance_ratio"][0])
        spread = np.ptp(coords[rest], axis=0) / np.ptp(coords, axis=0)
        if structured:
            assert pc1 < 0.5 and spread.min() > 0.5, (pc1, spread)
        else:
            assert pc1 > 0.9 and spread[0] < 0.1, (pc1, spread)
