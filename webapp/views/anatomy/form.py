"""The anatomy kind's part of the New-run form and its params (``params_from_form``).

Every input uses ``field_id(KIND, name)`` and ``value``; ``params_from_form``
reports each problem it can see without the tokenizer (the service then
validates again with ``AnatomyParams``, token counts included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import html

from latent_atlas.analyses.anatomy.params import (
    DEFAULT_PROMPT,
    LENS_POSITIONS,
    MAX_IG_BATCH,
    MAX_IG_STEPS,
    MAX_NEIGHBOURS,
    MAX_TARGET_CHARS,
    MAX_TOKENS,
    MAX_TOP_NEURONS,
    MAX_VOCAB_SAMPLE,
)
from webapp.views import FormError, field_id
from webapp.views.anatomy.data import KIND

_NUMBERS: dict[str, tuple[str, int, int, int, str]] = {
    # name: (label, default, low, high, help)
    "max_tokens": ("Max tokens", MAX_TOKENS, 1, MAX_TOKENS, f"The prompt's budget (at most {MAX_TOKENS})."),
    "ig_steps": ("Integrated-gradients steps", 32, 0, MAX_IG_STEPS, f"0 to {MAX_IG_STEPS}; 0 skips them."),
    "ig_batch": ("IG batch", 8, 1, MAX_IG_BATCH, f"Interpolation points per forward (1 to {MAX_IG_BATCH})."),
    "top_neurons": ("Top MLP neurons", 8, 1, MAX_TOP_NEURONS, f"Kept per (layer, token); 1 to {MAX_TOP_NEURONS}."),
    "vocab_sample": ("Vocabulary sample", 2000, 0, MAX_VOCAB_SAMPLE,
                     f"Embedding rows projected with the prompt's (0 to {MAX_VOCAB_SAMPLE:,})."),
    "neighbours": ("Neighbours", 8, 1, MAX_NEIGHBOURS, f"Nearest tokens by cosine (1 to {MAX_NEIGHBOURS})."),
    "lens_positions": ("Logit-lens positions", LENS_POSITIONS, 1, MAX_TOKENS,
                       "The lens decodes every point at this many last positions; each costs a vocabulary-wide "
                       "product."),
}


def _number(name: str) -> dbc.Col:
    label, default, low, high, help_text = _NUMBERS[name]
    return dbc.Col([
        dbc.Label(label, class_name="mt-2"),
        dbc.Input(id=field_id(KIND, name), type="number", value=default, min=low, max=high, step=1),
        dbc.FormText(help_text),
    ], md=4)


def form_fields(settings: Any) -> list[Any]:
    """The anatomy part of the New-run form."""
    limits = settings.limits
    return [
        dbc.Label("Prompt", class_name="mt-2"),
        dbc.Textarea(id=field_id(KIND, "prompt"), rows=3, value=DEFAULT_PROMPT),
        dbc.FormText(f"One text, at most {limits.max_prompt_chars:,} characters and {MAX_TOKENS} tokens; "
                     "every view is computed for it."),
        dbc.Row([
            dbc.Col([dbc.Label("Saliency target (optional)", class_name="mt-2"),
                     dbc.Input(id=field_id(KIND, "target"), type="text", maxLength=MAX_TARGET_CHARS,
                               placeholder="the predicted next token"),
                     dbc.FormText("Exactly one token, e.g. ' Paris' with its leading space.")], md=4),
            dbc.Col([dbc.Label("Foil (optional)", class_name="mt-2"),
                     dbc.Input(id=field_id(KIND, "foil"), type="text", maxLength=MAX_TARGET_CHARS),
                     dbc.FormText("Contrastive score: logit(target) − logit(foil).")], md=4),
            dbc.Col([dbc.Label("IG baseline", class_name="mt-2"),
                     dbc.Select(id=field_id(KIND, "ig_baseline"), value="mean",
                                options=[{"label": "mean embedding", "value": "mean"},
                                         {"label": "pad token", "value": "pad"},
                                         {"label": "zero", "value": "zero"}]),
                     dbc.FormText("Where the integrated-gradients path starts.")], md=4),
        ]),
        dbc.Row([_number("max_tokens"), _number("ig_steps"), _number("ig_batch")]),
        dbc.Row([_number("top_neurons"), _number("vocab_sample"), _number("neighbours")]),
        dbc.Row([_number("lens_positions"),
                 dbc.Col(dbc.Switch(id=field_id(KIND, "ig_keep_first"), value=True, class_name="mt-5",
                                    label="IG: hold the first token (an attention sink) at its own embedding"),
                         md=8)]),
        dbc.Row([
            dbc.Col([dbc.Label("Embedding projection", class_name="mt-2"),
                     dbc.Select(id=field_id(KIND, "projection"), value="pca",
                                options=[{"label": "PCA", "value": "pca"}, {"label": "UMAP", "value": "umap"}])],
                    md=4),
            dbc.Col(dbc.Switch(id=field_id(KIND, "sublayer_lens"), value=True, class_name="mt-5",
                               label="Logit lens also after each attention add"), md=8),
        ]),
        html.Small("The run stores every attention pattern (float16), so the page can show any head.",
                   className="text-muted d-block mt-2"),
    ]


def _as_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw anatomy params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    prompt = values.get("prompt") or ""
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append("prompt: give a prompt")
    elif len(prompt) > limits.max_prompt_chars:
        errors.append(f"prompt: {len(prompt)} characters (at most {limits.max_prompt_chars})")
    params: dict[str, Any] = {"model": model, "prompt": prompt}
    for name, (label, _, low, high, _) in _NUMBERS.items():
        number = _as_int(values.get(name))
        if number is None or not low <= number <= high:
            errors.append(f"{name}: {label.lower()} must be a whole number from {low} to {high}")
        params[name] = number
    for name in ("target", "foil"):
        text = values.get(name) or ""
        if text:
            if len(text) > MAX_TARGET_CHARS:
                errors.append(f"{name}: at most {MAX_TARGET_CHARS} characters")
            params[name] = text
    baseline = values.get("ig_baseline") or "mean"
    if baseline not in ("mean", "pad", "zero"):
        errors.append("ig_baseline: must be mean, pad or zero")
    projection = values.get("projection") or "pca"
    if projection not in ("pca", "umap"):
        errors.append("projection: must be pca or umap")
    params.update({"ig_baseline": baseline, "projection": projection,
                   "ig_keep_first": bool(values.get("ig_keep_first", True)),
                   "sublayer_lens": bool(values.get("sublayer_lens", True))})
    if errors:
        raise FormError(errors)
    return params
