"""The scan kind's part of the New-run form and its params (``params_from_form``).

The form only turns inputs into typed values and says what it can see is
wrong (a missing prompt B in diff mode, a number out of range); the service
validates again with ``ScanParams`` (token budget, catalogue, basis run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, html

from latent_atlas.analyses.scan.params import DIVERGENCE_METRICS
from webapp.components import normalise_run_id
from webapp.views import FormError, field_id

KIND = "scan"


def _col(label: str, control: Any, help_text: str, md: int = 4) -> dbc.Col:
    return dbc.Col([dbc.Label(label, class_name="mt-2"), control, dbc.FormText(help_text)], md=md)


def _select(name: str, value: str, options: Mapping[str, str]) -> dbc.Select:
    return dbc.Select(id=field_id(KIND, name), value=value,
                      options=[{"label": label, "value": key} for key, label in options.items()])


def _number(name: str, value: Any, **bounds: Any) -> dbc.Input:
    return dbc.Input(id=field_id(KIND, name), type="number", value=value, **bounds)


def form_fields(settings: Any) -> list[Any]:
    """The scan part of the New-run form (IDs from ``field_id``)."""
    limits = settings.limits
    return [
        dbc.Row([
            _col("Mode", _select("mode", "single", {"single": "one prompt", "diff": "diff two prompts (A vs B)"}),
                 "Diff: A and B in the same projection, with a per-layer divergence curve."),
            _col("Points", _select("points", "residual", {
                "residual": "embeddings + residual after each block",
                "all": "the four points of every block"}), "What one frame of the animation is."),
            _col("Max tokens per prompt", _number("max_tokens", min(128, limits.max_tokens_per_prompt), step=1,
                                                  min=1, max=limits.max_tokens_per_prompt),
                 f"1 to {limits.max_tokens_per_prompt}; a longer prompt is refused."),
        ]),
        dbc.Label("Prompt A", class_name="mt-2"),
        dbc.Textarea(id=field_id(KIND, "prompt_a"), rows=3, placeholder="The capital of France is"),
        html.Div([
            dbc.Label("Prompt B", class_name="mt-2"),
            dbc.Textarea(id=field_id(KIND, "prompt_b"), rows=3, placeholder="The capital of Spain is"),
            dbc.FormText("Change one crucial part of A to see where in the layers the two part ways."),
            dbc.Row([
                _col("Divergence marked on", _select("threshold_metric", "js", DIVERGENCE_METRICS),
                     "The first layer where this metric crosses the threshold is marked.", md=8),
                _col("Threshold", _number("threshold", 0.1, min=0, max=100, step="any"),
                     "Above 0 (JS and KL are in bits; JS is at most 1)."),
            ]),
        ], id="scan-form-b", style={"display": "none"}),
        dbc.Row([
            _col("Projection", _select("reduction", "pca", {"pca": "PCA (reusable basis)", "umap": "UMAP"}),
                 "Fitted once over every layer (and both prompts)."),
            _col("Project into the space of run", dbc.Input(id=field_id(KIND, "basis_run"), type="text",
                                                          placeholder="run ID (optional)"),
                 "Reuse a scan run's PCA basis (same model), so runs are comparable."),
            _col("Seed", _number("seed", 0, step=1, min=0, max=2**31 - 1), "UMAP's random state."),
        ]),
        html.Div(dbc.Row([
            _col("UMAP neighbours", _number("umap_neighbors", 15, step=1, min=2, max=200), "2 to 200."),
            _col("UMAP min distance", _number("umap_min_dist", 0.1, step="any", min=0, max=1), "0 to 1."),
            _col("UMAP fit points", _number("umap_fit_points", 20_000, step=1, min=100, max=100_000),
                 "A seeded sample this large is fitted; the rest is placed."),
        ]), id="scan-form-umap", style={"display": "none"}),
        dbc.Switch(id=field_id(KIND, "unit_normalise"), value=False, label="Unit-normalise states before the fit",
                   class_name="mt-2"),
        dbc.Switch(id=field_id(KIND, "exclude_position0"), value=False,
                   label="Leave position 0 out of the fit (it is still shown)"),
        dbc.Switch(id=field_id(KIND, "lens"), value=True, label="Logit lens of every point (hover)"),
    ]


@callback(Output("scan-form-b", "style"), Output("scan-form-umap", "style"),
          Input(field_id(KIND, "mode"), "value"), Input(field_id(KIND, "reduction"), "value"))
def _dependent_fields(mode, reduction):
    show, hide = {"display": "block"}, {"display": "none"}
    return (show if mode == "diff" else hide), (show if reduction == "umap" else hide)


def _as_number(value: Any, whole: bool) -> float | int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or (whole and not number.is_integer()):
        return None
    return int(number) if whole else number


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw scan params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")

    def number(name: str, low: float, high: float, whole: bool, what: str) -> Any:
        value = _as_number(values.get(name), whole)
        if value is None or not low <= value <= high:
            errors.append(f"{name}: {what} must be a {'whole ' if whole else ''}number from {low:g} to {high:g}")
        return value

    mode = values.get("mode") or "single"
    if mode not in ("single", "diff"):
        errors.append("mode: single or diff")
    prompt_a = (values.get("prompt_a") or "").strip()
    if not prompt_a:
        errors.append("prompt A: type a prompt")
    params: dict[str, Any] = {
        "model": model, "mode": mode, "prompt_a": prompt_a,
        "max_tokens": number("max_tokens", 1, limits.max_tokens_per_prompt, True, "max tokens"),
        "points": values.get("points") or "residual", "reduction": values.get("reduction") or "pca",
        "unit_normalise": bool(values.get("unit_normalise")),
        "exclude_position0": bool(values.get("exclude_position0")),
        "lens": bool(values.get("lens", True)),
        "seed": number("seed", 0, 2**31 - 1, True, "the seed"),
    }
    for name, text in ((prompt_a, "A"), ((values.get("prompt_b") or "").strip(), "B")):
        if len(name) > limits.max_prompt_chars:
            errors.append(f"prompt {text}: {len(name)} characters (at most {limits.max_prompt_chars})")
    if mode == "diff":
        prompt_b = (values.get("prompt_b") or "").strip()
        if not prompt_b:
            errors.append("prompt B: diff mode needs a second prompt")
        params["prompt_b"] = prompt_b
        params["threshold_metric"] = values.get("threshold_metric") or "js"
        params["threshold"] = number("threshold", 1e-9, 100, False, "the threshold")
    if params["reduction"] == "umap":
        params["umap_neighbors"] = number("umap_neighbors", 2, 200, True, "UMAP neighbours")
        params["umap_min_dist"] = number("umap_min_dist", 0, 1, False, "UMAP min distance")
        params["umap_fit_points"] = number("umap_fit_points", 100, 100_000, True, "UMAP fit points")
        if isinstance(params["umap_min_dist"], int):
            params["umap_min_dist"] = float(params["umap_min_dist"])
    basis = (values.get("basis_run") or "").strip()
    if basis:
        run_id = normalise_run_id(basis)
        if not run_id:
            errors.append("basis run: not a run ID or run URL")
        params["basis_run"] = run_id
    if errors:
        raise FormError(errors)
    return params
