"""Bad scan input is refused by the params model with a clear message (before anything is queued)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from latent_atlas.analyses.scan import ScanParams
from latent_atlas.settings import Limits

BASIS_SUMMARY = {"basis": {"kind": "pca", "stored": True, "d_model": 64, "unit_normalise": False}}
RUNS = {
    "PCA1": {"kind": "scan", "status": "succeeded", "model": "tiny", "summary": BASIS_SUMMARY},
    "OTHER": {"kind": "scan", "status": "succeeded", "model": "tiny-llama", "summary": BASIS_SUMMARY},
    "UMAP1": {"kind": "scan", "status": "succeeded", "model": "tiny",
              "summary": {"basis": {"kind": "umap", "stored": False}}},
    "GEOM": {"kind": "geometry", "status": "succeeded", "model": "tiny", "summary": {}},
    "RUNNING": {"kind": "scan", "status": "running", "model": "tiny", "summary": {}},
}


def _context(**extra):
    return {"limits": Limits(), "models": {"tiny", "tiny-llama"}, "run_info": RUNS.get,
            "count_tokens": lambda prompts: [len(p) for p in prompts], **extra}


def _validate(**params):
    raw = {"model": "tiny", "prompt_a": "hello", **params}
    return ScanParams.model_validate(raw, context=_context())


def _message(**params) -> str:
    with pytest.raises(ValidationError) as info:
        _validate(**params)
    return str(info.value)


def test_defaults_and_a_good_diff():
    params = _validate(mode="diff", prompt_b="hullo", basis_run="PCA1")
    assert params.prompts == ["hello", "hullo"] and params.reduction == "pca" and params.max_tokens == 128


@pytest.mark.parametrize("params, expected", [
    ({"mode": "diff"}, "prompt B is empty; diff mode needs two prompts"),
    ({"mode": "diff", "prompt_b": "   "}, "prompt B is empty"),
    ({"prompt_b": "x"}, "prompt B is only used in diff mode"),
    ({"prompt_a": " \n"}, "prompt A is empty"),
    ({"prompt_a": "x" * 200}, "prompt 1 has 200 tokens; the limit is 128"),
    ({"mode": "diff", "prompt_b": "y" * 20, "max_tokens": 10}, "prompt 2 has 20 tokens; the limit is 10"),
    ({"max_tokens": 5000}, "less than or equal to 4096"),
    ({"max_tokens": 1000}, "this portal allows at most 128"),
    ({"reduction": "umap", "umap_neighbors": 1}, "greater than or equal to 2"),
    ({"reduction": "umap", "umap_neighbors": 500}, "less than or equal to 200"),
    ({"reduction": "umap", "umap_min_dist": 1.5}, "less than or equal to 1"),
    ({"reduction": "umap", "umap_min_dist": -0.1}, "greater than or equal to 0"),
    ({"reduction": "umap", "umap_fit_points": 10}, "greater than or equal to 100"),
    ({"threshold": 0}, "greater than 0"),
    ({"threshold_metric": "euclid"}, "threshold_metric"),
    ({"points": "some"}, "points"),
    ({"basis_run": "../etc"}, "basis_run"),
    ({"basis_run": "NOPE"}, "basis run NOPE does not exist"),
    ({"basis_run": "OTHER"}, "basis run OTHER used model tiny-llama, not tiny"),
    ({"basis_run": "UMAP1"}, "has no stored PCA basis (it used umap)"),
    ({"basis_run": "GEOM"}, "basis run GEOM is a geometry run, not a scan run"),
    ({"basis_run": "RUNNING"}, "basis run RUNNING is running"),
    ({"basis_run": "PCA1", "unit_normalise": True}, "fitted with unit_normalise=False"),
    ({"basis_run": "PCA1", "reduction": "umap"}, "set reduction to pca"),
    ({"model": "gpt-7"}, "not in this portal's catalogue"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
])
def test_bad_input_is_refused_with_a_clear_message(params, expected):
    assert expected in _message(**params)


def test_strict_types_in_json_mode():
    with pytest.raises(ValidationError, match="seed"):
        ScanParams.model_validate_json('{"model": "tiny", "prompt_a": "a", "seed": "5"}', strict=True)
    with pytest.raises(ValidationError, match="unit_normalise"):
        ScanParams.model_validate_json('{"model": "tiny", "prompt_a": "a", "unit_normalise": 1}', strict=True)
    ok = ScanParams.model_validate_json('{"model": "tiny", "prompt_a": "a", "threshold": 1}', strict=True)
    assert ok.threshold == 1.0
