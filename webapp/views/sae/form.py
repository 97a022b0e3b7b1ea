"""The New-run form of kind ``sae``: the model (the page's own field), an SAE, a corpus, the harvest's sizes.

The SAE is one of: an entry of the admin's catalogue (``ATLAS_SAES``), a
directory saved by sae-lens under ``{data_dir}/saes``, the SAE a ``sae_train``
run saved (its run id) or a pretrained sae-lens release + SAE id (needs the
hub). The corpus is the offline demo corpus, typed text (one sequence per
line), a text / JSONL file (sequences of ``context_len`` tokens sampled here
with the model's own tokenizer, as the geometry form does) or a Hugging Face
dataset. The raw params are exactly ``SaeParams``' fields
(``latent_atlas.analyses.sae.params``); bounds and the SAE/model fit are
checked by it before anything is queued. Invariants: every input uses
``field_id(KIND, name)`` and ``value``; component IDs start with ``sae-``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from latent_atlas.analyses.corpus import CorpusError, read_corpus, sample_sequences
from latent_atlas.analyses.sae.params import MAX_INLINE_TOKENS
from latent_atlas.analyses.sae.source import RUN_ID_PATTERN
from webapp.views import FormError, field_id
from webapp.views.geometry.form import MAX_UPLOAD_BYTES, _decode_upload, _tokenizer
from webapp.views.sae.data import KIND

CORPORA = {"demo": "the demo corpus (offline English)", "prompts": "typed text", "file": "a text / JSONL file",
           "hub": "a Hugging Face dataset"}
UPLOAD_ID = "sae-corpus-upload"
UPLOAD_STATUS_ID = "sae-corpus-status"

SOURCES = {"catalogue": "from the catalogue", "disk": "a directory saved by sae-lens",
           "run": "trained by a portal run", "pretrained": "a pretrained sae-lens release"}
# name -> (label, default, minimum, help)
NUMBERS: dict[str, tuple[str, int, int, str]] = {
    "n_tokens": ("Tokens to harvest", 100_000, 1, "the run uses what the corpus has if it has fewer"),
    "context_len": ("Context length", 128, 2, "tokens per sequence fed to the model"),
    "top_k": ("Top examples per latent", 20, 1, "at most 100"),
    "window": ("Context window", 8, 0, "tokens each side of an example"),
    "interval_bins": ("Interval bins", 10, 1, "activation ranges sampled"),
    "interval_per_bin": ("Examples per bin", 5, 1, ""),
    "hist_bins": ("Histogram bins", 48, 4, ""),
    "edges_k": ("Edges per latent", 10, 1, "top-k cosine / Jaccard / co-activation neighbours"),
    "seed": ("Seed", 0, 0, ""),
}


def _catalogue_options(settings: Any) -> list[dict[str, str]]:
    return [{"label": f"{name} (for {entry.model})", "value": name} for name, entry in sorted(settings.saes.items())]


def form_fields(settings: Any, prefill: Mapping[str, str] | None = None) -> list[Any]:
    """The sae part of the New-run form (IDs from ``field_id``).

    ``prefill["sae_run"]``, a run id (checked against ``SaeSource``'s pattern, else ignored),
    selects "trained by a portal run" with that id filled in.
    """
    catalogue = _catalogue_options(settings)
    run_id = (prefill or {}).get("sae_run")
    run_id = run_id if isinstance(run_id, str) and re.fullmatch(RUN_ID_PATTERN, run_id) else None
    sae_kind = "run" if run_id else ("catalogue" if catalogue else "run")
    number_cols = [
        dbc.Col([dbc.Label(label, class_name="small mb-0"),
                 dbc.Input(id=field_id(KIND, name), type="number", min=low, step=1, value=default, size="sm"),
                 dbc.FormText(hint) if hint else None], md=3, class_name="mb-2")
        for name, (label, default, low, hint) in NUMBERS.items()
    ]
    return [
        dbc.Label("Sparse autoencoder", class_name="mb-1"),
        dbc.RadioItems(id=field_id(KIND, "sae_kind"), value=sae_kind, inline=True,
                       options=[{"label": label, "value": key} for key, label in SOURCES.items()]),
        html.Div([
            dbc.Select(id=field_id(KIND, "sae_name"), options=catalogue, size="sm",
                       value=catalogue[0]["value"] if catalogue else None,
                       placeholder="the admin's SAE catalogue is empty" if not catalogue else None),
        ], id="sae-form-catalogue", className="mt-1"),
        html.Div([dbc.Input(id=field_id(KIND, "sae_path"), size="sm", maxlength=1000,
                            placeholder="my-sae (a directory under the data directory's saes/)")],
                 id="sae-form-disk", className="mt-1"),
        html.Div([dbc.Input(id=field_id(KIND, "sae_run_id"), size="sm", maxlength=64, value=run_id,
                            placeholder="ID of a succeeded sae_train run")], id="sae-form-run", className="mt-1"),
        dbc.Row([
            dbc.Col(dbc.Input(id=field_id(KIND, "sae_release"), size="sm", maxlength=200,
                              placeholder="release, e.g. gpt2-small-res-jb"), md=6),
            dbc.Col(dbc.Input(id=field_id(KIND, "sae_id"), size="sm", maxlength=200,
                              placeholder="SAE id, e.g. blocks.7.hook_resid_pre"), md=6),
        ], id="sae-form-pretrained", class_name="mt-1"),
        dbc.Label("Corpus", class_name="mt-3 mb-1"),
        dbc.RadioItems(id=field_id(KIND, "corpus_kind"), value="demo", inline=True,
                       options=[{"label": label, "value": key} for key, label in CORPORA.items()]),
        html.Div(dbc.Textarea(id=field_id(KIND, "prompts"), rows=6, class_name="font-monospace",
                              placeholder="One sequence per line (cut at the context length)."),
                 id="sae-form-prompts"),
        html.Div([
            dcc.Upload(id=UPLOAD_ID, max_size=MAX_UPLOAD_BYTES, multiple=False,
                       children=html.Div(["Drop a .txt or .jsonl file here, or ", html.A("choose one")]),
                       className="atlas-upload border rounded p-3 text-center text-muted"),
            dcc.Input(id=field_id(KIND, "corpus_file"), type="hidden", value=None),
            html.Div(id=UPLOAD_STATUS_ID, className="small mt-1"),
        ], id="sae-form-file"),
        dbc.Row([
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_dataset"), size="sm", maxlength=200,
                              placeholder="dataset, e.g. Salesforce/wikitext"), md=4),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_config"), size="sm", maxlength=64,
                              placeholder="config (optional)"), md=3),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_split"), size="sm", maxlength=64, value="train"), md=2),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_field"), size="sm", maxlength=64, value="text"), md=3),
        ], id="sae-form-hub"),
        dbc.Row(number_cols, class_name="mt-3"),
    ]


@callback(Output("sae-form-prompts", "style"), Output("sae-form-file", "style"), Output("sae-form-hub", "style"),
          Input(field_id(KIND, "corpus_kind"), "value"))
def _toggle_corpus(kind):
    return tuple({} if kind == name else {"display": "none"} for name in ("prompts", "file", "hub"))


@callback(Output(field_id(KIND, "corpus_file"), "value"), Output(UPLOAD_STATUS_ID, "children"),
          Input(UPLOAD_ID, "contents"), Input(UPLOAD_ID, "filename"), prevent_initial_call=True)
def _uploaded(contents, filename):
    if not contents:
        return None, html.Span("The file is empty or larger than "
                               f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB.", className="text-danger")
    try:
        documents = read_corpus(str(filename or "corpus"), _decode_upload(contents))
    except CorpusError as exc:
        return None, html.Span(str(exc), className="text-danger")
    value = json.dumps({"name": str(filename or "corpus"), "contents": contents})
    return value, html.Span(f"{filename}: {len(documents):,} documents", className="text-success",
                            id="sae-corpus-ok")


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


def corpus_param(model: str | None, values: Mapping[str, Any], numbers: Mapping[str, int],
                 errors: list[str]) -> dict[str, Any] | None:
    """The ``corpus`` param: ``demo``, ``prompts``, ``tokens`` (a file sampled here) or ``hub``."""
    kind = values.get("corpus_kind") or "demo"
    if kind == "demo":
        return {"kind": "demo"}
    if kind == "prompts":
        prompts = [line.strip() for line in str(values.get("prompts") or "").splitlines() if line.strip()]
        if not prompts:
            errors.append("corpus: enter at least one line of text")
        return {"kind": "prompts", "prompts": prompts}
    if kind == "hub":
        dataset = str(values.get("hub_dataset") or "").strip()
        if not dataset:
            errors.append("corpus: name a dataset on the Hugging Face hub")
        config = str(values.get("hub_config") or "").strip() or None
        return {"kind": "hub", "dataset": dataset, "config": config,
                "split": str(values.get("hub_split") or "").strip() or "train",
                "text_field": str(values.get("hub_field") or "").strip() or "text"}
    if kind != "file":
        errors.append(f"corpus: one of {', '.join(CORPORA)}")
        return None
    raw = values.get("corpus_file")
    if not raw:
        errors.append("corpus: attach a text or JSONL file")
        return None
    if errors or not model or "n_tokens" not in numbers or "context_len" not in numbers:
        return None
    m = numbers["context_len"]
    n = max(1, min(math.ceil(numbers["n_tokens"] / m), MAX_INLINE_TOKENS // m))
    try:
        upload = json.loads(raw)
        name = str(upload["name"])
        documents = read_corpus(name, _decode_upload(upload["contents"]))
        sample = sample_sequences(_tokenizer(model), documents, n, m, numbers.get("seed", 0))
    except CorpusError as exc:
        errors.append(f"corpus: {exc}")
        return None
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(f"corpus: the upload could not be read ({exc})")
        return None
    except Exception as exc:  # a tokenizer that cannot be loaded
        errors.append(f"corpus: could not load the tokenizer of {model!r}: {exc}")
        return None
    return {"kind": "tokens", "token_ids": sample.token_ids,
            "info": {"source": name[:300], "format": "by file name", "documents": sample.n_documents,
                     "sequences": len(sample.token_ids), "tokens_per_sequence": m,
                     "seed": numbers.get("seed", 0)}}


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw ``sae`` params (``SaeParams``' fields); ``FormError`` lists what the form itself can tell is wrong."""
    del limits  # bounds are the params model's
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    sae = sae_source(values, errors)
    numbers: dict[str, int] = {}
    for name, (label, default, low, _) in NUMBERS.items():
        raw = values.get(name)
        value = default if raw in (None, "") else _whole(raw)
        if value is None or value < low:
            errors.append(f"{name}: {label.lower()} must be a whole number >= {low}")
        else:
            numbers[name] = value
    corpus = corpus_param(model, values, numbers, errors)
    if errors:
        raise FormError(errors)
    return {"model": model, "sae": sae, "corpus": corpus, **numbers}
