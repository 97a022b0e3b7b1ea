"""The New-run form of kind ``sae_train``: layer, SAE shape, token budget, corpus.

Defaults train a browsable SAE on the demo model within minutes on a 2-core
CPU (README, "Training a demo SAE"): layer 12 of 30, 1,024 TopK latents with
k = 32, 150k training tokens from the offline demo corpus. The corpus is the
demo corpus, an uploaded text / JSONL file (saved by the web process under
``{data_dir}/corpora/upload-<sha256[:16]>.<ext>``, content-addressed, at most
``MAX_UPLOAD_BYTES``) or a Hugging Face dataset. The raw params are exactly
``SaeTrainParams``' fields; bounds are checked by it before anything is
queued. Invariants: every input uses ``field_id(KIND, name)`` and ``value``;
component IDs start with ``sae-train-``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from latent_atlas.analyses.corpus import CorpusError, guess_format, read_corpus
from webapp.views import FormError, field_id
from webapp.views.geometry.form import MAX_UPLOAD_BYTES, _decode_upload

KIND = "sae_train"
UPLOAD_ID = "sae-train-corpus-upload"
UPLOAD_STATUS_ID = "sae-train-corpus-status"
CORPORA = {"demo": "the demo corpus (offline English)", "file": "a text / JSONL file",
           "hub": "a Hugging Face dataset"}
# name -> (label, default, minimum, maximum, help); bounds mirror SaeTrainParams
NUMBERS: dict[str, tuple[str, int, int, int, str]] = {
    "layer": ("Layer", 12, 0, 1000, "the residual stream after this block (0-based)"),
    "d_sae": ("Latents (d_sae)", 1024, 16, 131_072, "width of the SAE"),
    "k": ("k", 32, 1, 512, "latents firing per token (TopK) or on average (BatchTopK)"),
    "training_tokens": ("Training tokens", 150_000, 1_000, 50_000_000, "150k: a few minutes on 2 CPU cores"),
    "eval_tokens": ("Held-out tokens", 20_000, 500, 2_000_000, "variance explained and L0 are measured here"),
    "context_len": ("Context length", 128, 8, 2048, "tokens per sequence"),
    "batch_size": ("Batch size", 1024, 32, 16_384, "activation rows per training step"),
    "seed": ("Seed", 0, 0, 2**31 - 1, ""),
}


def corpora_dir() -> Path:
    from latent_atlas.settings import get_settings

    return get_settings().data_dir / "corpora"


def _number_col(name: str) -> dbc.Col:
    label, default, low, high, hint = NUMBERS[name]
    return dbc.Col([dbc.Label(label, class_name="small mb-0"),
                    dbc.Input(id=field_id(KIND, name), type="number", min=low, max=high, step=1, value=default,
                              size="sm"),
                    dbc.FormText(hint) if hint else None], md=3, class_name="mb-2")


def form_fields(settings: Any) -> list[Any]:
    """The sae_train part of the New-run form (IDs from ``field_id``)."""
    return [
        dbc.Row([
            _number_col("layer"),
            dbc.Col([dbc.Label("Point", class_name="small mb-0"),
                     dbc.Select(id=field_id(KIND, "point"), value="resid_post", size="sm",
                                options=[{"label": "residual after the block (resid_post)", "value": "resid_post"},
                                         {"label": "residual entering the block (resid_pre)",
                                          "value": "resid_pre"}])], md=5, class_name="mb-2"),
            dbc.Col([dbc.Label("Architecture", class_name="small mb-0"),
                     dbc.Select(id=field_id(KIND, "architecture"), value="topk", size="sm",
                                options=[{"label": "TopK", "value": "topk"},
                                         {"label": "BatchTopK (saved as JumpReLU)", "value": "batchtopk"}])],
                    md=4, class_name="mb-2"),
        ]),
        dbc.Row([_number_col(name) for name in ("d_sae", "k", "training_tokens", "eval_tokens")]),
        dbc.Row([
            _number_col("context_len"), _number_col("batch_size"),
            dbc.Col([dbc.Label("Learning rate", class_name="small mb-0"),
                     dbc.Input(id=field_id(KIND, "lr"), type="number", min=1e-6, max=0.1, step="any",
                               value=0.001, size="sm")], md=3, class_name="mb-2"),
            _number_col("seed"),
        ]),
        dbc.Label("Corpus", class_name="mt-2 mb-1"),
        dbc.RadioItems(id=field_id(KIND, "corpus_kind"), value="demo", inline=True,
                       options=[{"label": label, "value": key} for key, label in CORPORA.items()]),
        html.Div([
            dcc.Upload(id=UPLOAD_ID, max_size=MAX_UPLOAD_BYTES, multiple=False,
                       children=html.Div(["Drop a .txt or .jsonl file here, or ", html.A("choose one")]),
                       className="atlas-upload border rounded p-3 text-center text-muted"),
            dcc.Input(id=field_id(KIND, "corpus_file"), type="hidden", value=None),
            html.Div(id=UPLOAD_STATUS_ID, className="small mt-1"),
        ], id="sae-train-form-file", style={"display": "none"}),
        dbc.Row([
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_dataset"), size="sm", maxlength=200,
                              placeholder="dataset, e.g. Salesforce/wikitext"), md=4),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_config"), size="sm", maxlength=64,
                              placeholder="config (optional)"), md=3),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_split"), size="sm", maxlength=64, value="train"), md=2),
            dbc.Col(dbc.Input(id=field_id(KIND, "hub_field"), size="sm", maxlength=64, value="text"), md=3),
        ], id="sae-train-form-hub", style={"display": "none"}),
        dbc.FormText("The demo corpus: Debian's fortune cookies and the prose of Python's documentation "
                     "(BSD and PSF licences), about 1.4M tokens; `make up` fetches it."),
    ]


@callback(Output("sae-train-form-file", "style"), Output("sae-train-form-hub", "style"),
          Input(field_id(KIND, "corpus_kind"), "value"))
def _toggle_corpus(kind):
    return tuple({} if kind == name else {"display": "none"} for name in ("file", "hub"))


def save_upload(filename: str, data: bytes) -> tuple[str, int]:
    """Check an uploaded corpus and keep it under ``corpora/`` by content; (stored name, documents)."""
    fmt = guess_format(filename)
    documents = read_corpus(filename, data, fmt)  # CorpusError if empty, binary, too large, bad JSON
    suffix = "jsonl" if fmt == "jsonl" else "txt"
    name = f"upload-{hashlib.sha256(data).hexdigest()[:16]}.{suffix}"
    directory = corpora_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    return name, len(documents)


@callback(Output(field_id(KIND, "corpus_file"), "value"), Output(UPLOAD_STATUS_ID, "children"),
          Input(UPLOAD_ID, "contents"), Input(UPLOAD_ID, "filename"), prevent_initial_call=True)
def _uploaded(contents, filename):
    if not contents:
        return None, html.Span(f"The file is empty or larger than {MAX_UPLOAD_BYTES:,} bytes.",
                               className="text-danger")
    try:
        name, documents = save_upload(str(filename or "corpus.txt"), _decode_upload(contents))
    except CorpusError as exc:
        return None, html.Span(str(exc), className="text-danger")
    return name, html.Span(f"{filename}: {documents:,} documents, ready.", className="text-success")


def _whole(values: Mapping[str, Any], name: str, errors: list[str]) -> int | None:
    label, _default, low, high, _hint = NUMBERS[name]
    try:
        number = float(values.get(name))
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not number.is_integer() or not low <= number <= high:
        errors.append(f"{name}: {label.lower()} must be a whole number from {low:,} to {high:,}")
        return None
    return int(number)


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw sae_train params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    params: dict[str, Any] = {"model": model}
    for name in NUMBERS:
        params[name] = _whole(values, name, errors)
    try:
        lr = float(values.get("lr"))
    except (TypeError, ValueError):
        lr = math.nan
    if not math.isfinite(lr) or not 1e-6 <= lr <= 0.1:
        errors.append("lr: the learning rate must be a number from 1e-6 to 0.1")
    params["lr"] = lr
    params["point"] = values.get("point") or "resid_post"
    params["architecture"] = values.get("architecture") or "topk"
    kind = values.get("corpus_kind") or "demo"
    if kind == "file":
        if not values.get("corpus_file"):
            errors.append("corpus: upload a text or JSONL file first")
        params["corpus"] = {"kind": "file", "file": values.get("corpus_file")}
    elif kind == "hub":
        dataset = (values.get("hub_dataset") or "").strip()
        if not dataset:
            errors.append("corpus: name a Hugging Face dataset")
        corpus = {"kind": "hub", "dataset": dataset, "split": (values.get("hub_split") or "train").strip(),
                  "text_field": (values.get("hub_field") or "text").strip()}
        if (values.get("hub_config") or "").strip():
            corpus["config"] = values["hub_config"].strip()
        params["corpus"] = corpus
    else:
        params["corpus"] = {"kind": "demo"}
    if errors:
        raise FormError(errors)
    return params
