"""The New-run form of kind ``sae``: the model (the page's own field), an SAE, a corpus, the harvest's sizes.

The SAE is one of: an entry of the admin's catalogue (``ATLAS_SAES``), a
directory saved by sae-lens under ``{data_dir}/saes``, the SAE a ``sae_train``
run saved (its run id) or a pretrained sae-lens release + SAE id (needs the
hub). The corpus is typed text (one document per line). Numbers go to the
params as whole numbers; bounds and the SAE/model fit are checked by the
kind's params model before anything is queued (the service answers with its
messages). Invariants: every input uses ``field_id(KIND, name)`` and
``value``; component IDs start with ``sae-``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, html

from webapp.views import FormError, field_id
from webapp.views.sae.data import KIND

SOURCES = {"catalogue": "from the catalogue", "disk": "a directory saved by sae-lens",
           "run": "trained by a portal run", "pretrained": "a pretrained sae-lens release"}
# name -> (label, default, minimum, help)
NUMBERS: dict[str, tuple[str, int, int, str]] = {
    "n_tokens": ("Tokens to harvest", 100_000, 1, "the run uses what the corpus has if it has fewer"),
    "context_len": ("Context length", 128, 2, "tokens per sequence fed to the model"),
    "top_k": ("Top examples per latent", 20, 1, "at most 100"),
    "window": ("Context window", 8, 0, "tokens each side of an example"),
    "interval_bins": ("Interval bins", 5, 1, "activation ranges sampled"),
    "interval_per_bin": ("Examples per bin", 4, 1, ""),
    "hist_bins": ("Histogram bins", 40, 2, ""),
    "edges_k": ("Edges per latent", 10, 1, "top-k cosine / Jaccard / co-activation neighbours"),
    "seed": ("Seed", 0, 0, ""),
}


def _catalogue_options(settings: Any) -> list[dict[str, str]]:
    return [{"label": f"{name} (for {entry.model})", "value": name} for name, entry in sorted(settings.saes.items())]


def form_fields(settings: Any) -> list[Any]:
    """The sae part of the New-run form (IDs from ``field_id``)."""
    catalogue = _catalogue_options(settings)
    number_cols = [
        dbc.Col([dbc.Label(label, class_name="small mb-0"),
                 dbc.Input(id=field_id(KIND, name), type="number", min=low, step=1, value=default, size="sm"),
                 dbc.FormText(hint) if hint else None], md=3, class_name="mb-2")
        for name, (label, default, low, hint) in NUMBERS.items()
    ]
    return [
        dbc.Label("Sparse autoencoder", class_name="mb-1"),
        dbc.RadioItems(id=field_id(KIND, "sae_kind"), value="catalogue" if catalogue else "run", inline=True,
                       options=[{"label": label, "value": key} for key, label in SOURCES.items()]),
        html.Div([
            dbc.Select(id=field_id(KIND, "sae_name"), options=catalogue, size="sm",
                       value=catalogue[0]["value"] if catalogue else None,
                       placeholder="the admin's SAE catalogue is empty" if not catalogue else None),
        ], id="sae-form-catalogue", className="mt-1"),
        html.Div([dbc.Input(id=field_id(KIND, "sae_path"), size="sm", maxlength=1000,
                            placeholder="my-sae (a directory under the data directory's saes/)")],
                 id="sae-form-disk", className="mt-1"),
        html.Div([dbc.Input(id=field_id(KIND, "sae_run_id"), size="sm", maxlength=64,
                            placeholder="ID of a succeeded sae_train run")], id="sae-form-run", className="mt-1"),
        dbc.Row([
            dbc.Col(dbc.Input(id=field_id(KIND, "sae_release"), size="sm", maxlength=200,
                              placeholder="release, e.g. gpt2-small-res-jb"), md=6),
            dbc.Col(dbc.Input(id=field_id(KIND, "sae_id"), size="sm", maxlength=200,
                              placeholder="SAE id, e.g. blocks.7.hook_resid_pre"), md=6),
        ], id="sae-form-pretrained", class_name="mt-1"),
        dbc.Label("Corpus", class_name="mt-3 mb-1"),
        dbc.Textarea(id=field_id(KIND, "prompts"), rows=6, class_name="font-monospace",
                     placeholder="One document per line; the tokens of all documents are harvested."),
        dbc.Row(number_cols, class_name="mt-3"),
    ]


@callback(Output("sae-form-catalogue", "style"), Output("sae-form-disk", "style"), Output("sae-form-run", "style"),
          Output("sae-form-pretrained", "style"), Input(field_id(KIND, "sae_kind"), "value"))
def _toggle_sae(kind):
    return tuple({} if kind == name else {"display": "none"} for name in ("catalogue", "disk", "run", "pretrained"))


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return None
    return int(as_float) if as_float.is_integer() else None


def sae_source(values: Mapping[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """The ``sae`` param (a ``SaeSource`` dict) from the form."""
    kind = values.get("sae_kind") or "catalogue"
    fields = {"catalogue": {"name": "sae_name"}, "disk": {"path": "sae_path"}, "run": {"run_id": "sae_run_id"},
              "pretrained": {"release": "sae_release", "sae_id": "sae_id"}}.get(kind)
    if fields is None:
        errors.append(f"sae: the source must be one of {', '.join(SOURCES)}")
        return None
    source: dict[str, Any] = {"kind": kind}
    for key, name in fields.items():
        text = str(values.get(name) or "").strip()
        if not text:
            errors.append(f"sae: {SOURCES[kind]} needs {key.replace('_', ' ')}")
        source[key] = text
    return source


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw ``sae`` params; ``FormError`` lists what the form itself can tell is wrong."""
    del limits  # bounds are the params model's
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    sae = sae_source(values, errors)
    prompts = [line.strip() for line in str(values.get("prompts") or "").splitlines() if line.strip()]
    if not prompts:
        errors.append("corpus: enter at least one line of text")
    numbers: dict[str, int] = {}
    for name, (label, default, low, _) in NUMBERS.items():
        raw = values.get(name)
        value = default if raw in (None, "") else _whole(raw)
        if value is None or value < low:
            errors.append(f"{name}: {label.lower()} must be a whole number >= {low}")
        else:
            numbers[name] = value
    if errors:
        raise FormError(errors)
    return {"model": model, "sae": sae, "prompts": prompts, **numbers}
