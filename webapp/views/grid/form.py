"""The grid kind's part of the New-run form and its params (``params_from_form``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, html

from webapp.components import normalise_run_id
from webapp.views import FormError, field_id
from webapp.views.grid.data import DEFAULT_SIZE, KIND, PLANES, STATE_COUNT

# --------------------------------------------------------------------------- form


def _number(name: str, label: str, value: Any, *, help_text: str, step: Any = "any",
            **bounds: Any) -> dbc.Col:
    return dbc.Col([
        dbc.Label(label, class_name="mt-2"),
        dbc.Input(id=field_id(KIND, name), type="number", value=value, step=step, **bounds),
        dbc.FormText(help_text),
    ], md=4)


def form_fields(settings: Any) -> list[Any]:
    """The grid part of the New-run form (IDs from ``field_id``)."""
    limits = settings.limits
    default_size = min(DEFAULT_SIZE, limits.max_grid_size)
    state_rows = []
    for number in range(STATE_COUNT):
        state_rows.append(dbc.Row([
            dbc.Col(html.Span(f"state s{number}", className="small text-muted"), width=2,
                    class_name="pt-2"),
            dbc.Col(dbc.Input(id=field_id(KIND, f"state{number}_prompt"), type="number", min=0, step=1,
                              value=number, size="sm"), width=4),
            dbc.Col(dbc.Input(id=field_id(KIND, f"state{number}_position"), type="number", step=1,
                              value=-1, size="sm"), width=4),
        ], class_name="g-2 mb-1"))
    return [
        dbc.Row([
            _number("layer", "Layer", 0, step=1, min=0,
                    help_text="The residual entering this block is replaced by the grid point; "
                              "the last layer L (the model's block count) means after the last block."),
            _number("size", "Grid size N", default_size, step=1, min=2, max=limits.max_grid_size,
                    help_text=f"N × N cells; 2 to {limits.max_grid_size}."),
            dbc.Col([
                dbc.Label("Plane", class_name="mt-2"),
                dbc.Select(id=field_id(KIND, "plane"), value="direct",
                           options=[{"label": label, "value": value} for value, label in PLANES.items()]),
                dbc.FormText("How grid points (x, y) map into the hidden space."),
            ], md=4),
        ]),
        dbc.Row([
            _number("spacing", "Spacing", 1.0, min=0, help_text="Distance between neighbouring grid points."),
            _number("center_x", "Centre x", 0.0, help_text="x of the middle grid point."),
            _number("center_y", "Centre y", 0.0, help_text="y of the middle grid point."),
        ]),
        html.Div(dbc.Row([
            _number("seed", "Seed", 0, step=1, min=0, max=2**31 - 1,
                    help_text="Seed of the random directions u and v."),
        ]), id="grid-form-seed", style={"display": "none"}),
        html.Div([
            dbc.Label("Prompts", class_name="mt-2"),
            dbc.Textarea(id=field_id(KIND, "prompts"), rows=5, class_name="font-monospace",
                         placeholder="One prompt per line (PCA: leave empty for a built-in set)"),
            dbc.FormText(f"The real states come from these prompts at the chosen layer; at most "
                         f"{limits.max_prompts} prompts of {limits.max_prompt_chars} characters."),
            html.Div([
                dbc.Switch(id=field_id(KIND, "exclude_first_token"), value=True,
                           label="Leave the first token of each prompt out of the PCA", class_name="mt-2"),
            ], id="grid-form-pca"),
            html.Div([
                dbc.Label("The three states (prompt number from 0, token position; -1 = last token)",
                          class_name="mt-2"),
                *state_rows,
                dbc.FormText("s0 sits at (0, 0), s1 at (1, 0) and s2 at (0, 1)."),
            ], id="grid-form-states"),
        ], id="grid-form-prompts", style={"display": "none"}),
        dbc.Row([
            _number("max_tokens", "Max tokens per prompt", min(64, limits.max_tokens_per_prompt),
                    step=1, min=1, max=limits.max_tokens_per_prompt,
                    help_text=f"1 to {limits.max_tokens_per_prompt}; for the prompts and the context."),
            _number("top_k", "Top-k", 5, step=1, min=1, max=10, help_text="Tokens kept per cell (1 to 10)."),
            dbc.Col([
                dbc.Label("Compute dtype", class_name="mt-2"),
                dbc.Select(id=field_id(KIND, "dtype"), value="float32",
                           options=[{"label": "float32", "value": "float32"},
                                    {"label": "bfloat16", "value": "bfloat16"}]),
                dbc.FormText("bfloat16 is faster on a GPU, less exact."),
            ], md=4),
        ]),
        dbc.Label("Context (optional)", class_name="mt-2"),
        dbc.Textarea(id=field_id(KIND, "context"), rows=2,
                     placeholder="Without a context each grid point is a lone token at position 0"),
        dbc.FormText("The grid point replaces the state of this text's last token."),
    ]


@callback(
    Output("grid-form-seed", "style"),
    Output("grid-form-prompts", "style"),
    Output("grid-form-pca", "style"),
    Output("grid-form-states", "style"),
    Input(field_id(KIND, "plane"), "value"),
)
def _plane_fields(plane):
    show, hide = {"display": "block"}, {"display": "none"}
    return (show if plane == "random_projection" else hide,
            show if plane in ("pca", "through_states") else hide,
            show if plane == "pca" else hide,
            show if plane == "through_states" else hide)


def split_run_ids(text: str | None, limit: int = 2) -> tuple[list[str], list[str], list[str]]:
    """(the first ``limit`` distinct valid run IDs, the valid ones past them, parts that are no run ID).

    ``ID1,ID2`` with commas or spaces; a pasted ``.../runs/<id>`` URL counts as its ID;
    repeats are dropped.
    """
    ids: list[str] = []
    invalid: list[str] = []
    for part in re.split(r"[,\s]+", text or ""):
        if not part:
            continue
        run_id = normalise_run_id(part)
        if run_id is None:
            invalid.append(part)
        elif run_id not in ids:
            ids.append(run_id)
    return ids[:limit], ids[limit:], invalid


def parse_run_ids(text: str | None, limit: int = 2) -> list[str]:
    """Up to ``limit`` distinct valid run IDs from ``ID1,ID2`` (commas or spaces; URLs accepted)."""
    return split_run_ids(text, limit)[0]


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; surrounding whitespace stripped, empty lines ignored."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _as_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw grid params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")

    def whole(name: str, low: int, high: int | None, what: str) -> int | None:
        value = _as_int(values.get(name))
        if value is None or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            errors.append(f"{name}: {what} must be a whole number {span}")
            return None
        return value

    layer = whole("layer", 0, None, "the layer")
    size = whole("size", 2, limits.max_grid_size, "the grid size N")
    top_k = whole("top_k", 1, 10, "top-k")
    max_tokens = whole("max_tokens", 1, limits.max_tokens_per_prompt, "max tokens")
    spacing = _as_float(values.get("spacing"))
    if spacing is None or spacing <= 0 or spacing > 1e6:
        errors.append("spacing: must be a number above 0 and at most 1e6")
    center = [_as_float(values.get(f"center_{axis}")) for axis in "xy"]
    for axis, value in zip("xy", center, strict=True):
        if value is None or abs(value) > 1e9:
            errors.append(f"center_{axis}: must be a number within ±1e9")
    plane = values.get("plane") or "direct"
    if plane not in PLANES:
        errors.append(f"plane: unknown plane {str(plane)[:40]!r} (use one of {', '.join(PLANES)})")
    dtype = values.get("dtype") or "float32"
    if dtype not in ("float32", "bfloat16"):
        errors.append("dtype: must be float32 or bfloat16")

    params: dict[str, Any] = {"model": model, "layer": layer, "size": size, "spacing": spacing,
                              "center": center, "plane": plane, "top_k": top_k,
                              "max_tokens": max_tokens, "dtype": dtype}
    if plane == "random_projection":
        params["seed"] = whole("seed", 0, 2**31 - 1, "the seed")
    if plane in ("pca", "through_states"):
        prompts = parse_prompts(values.get("prompts"))
        if len(prompts) > limits.max_prompts:
            errors.append(f"prompts: at most {limits.max_prompts} prompts (got {len(prompts)})")
        for index, prompt in enumerate(prompts, start=1):
            if len(prompt) > limits.max_prompt_chars:
                errors.append(f"prompts: prompt {index} has {len(prompt)} characters "
                              f"(at most {limits.max_prompt_chars})")
        if plane == "through_states" and not prompts:
            errors.append("prompts: the through_states plane needs prompts to take its three states from")
        if prompts:
            params["prompts"] = prompts
        if plane == "pca":
            params["exclude_first_token"] = bool(values.get("exclude_first_token", True))
    if plane == "through_states":
        states = []
        for number in range(STATE_COUNT):
            prompt = _as_int(values.get(f"state{number}_prompt"))
            position = _as_int(values.get(f"state{number}_position"))
            if prompt is None or prompt < 0:
                errors.append(f"states: state s{number} needs a prompt number of 0 or more")
            if position is None:
                errors.append(f"states: state s{number} needs a whole token position (-1 = last)")
            states.append({"prompt": prompt, "position": position})
        params["states"] = states
    context = (values.get("context") or "").strip()
    if context:
        if len(context) > limits.max_prompt_chars:
            errors.append(f"context: {len(context)} characters (at most {limits.max_prompt_chars})")
        params["context"] = context
    if errors:
        raise FormError(errors)
    return params
