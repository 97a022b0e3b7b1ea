"""The geometry New-run form: typed prompts, a corpus upload or a Hugging Face dataset.

The view module of kinds ``geometry`` and ``geometry_reproject`` (a re-projection
is drawn exactly like the run it came from). Figures are pure functions in
``webapp.views.geometry.figures``; the run page, its linked-selection callbacks,
the re-projection panel and the "Download HTML" bundle are in
``webapp.views.geometry.page``.

The form takes typed prompts or a corpus file (text: one sequence per line or
one stream split into windows; JSONL with a ``"text"`` field) from which N
sequences of M tokens are sampled with the seed, using the chosen model's own
tokenizer (the web process loads tokenizers, never models), so the run gets
exact ``token_ids``. A Hugging Face dataset cannot be named here: that needs
the ``datasets`` library, which the portal does not install.

Invariants: every form input uses ``field_id(KIND, name)`` and ``value``;
token strings and prompts are shown as text children or escaped hover text;
component IDs start with ``geometry-``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from latent_atlas.analyses.corpus import (
    CORPUS_FORMATS,
    MAX_CORPUS_BYTES,
    CorpusError,
    read_corpus,
    sample_sequences,
)
from latent_atlas.analyses.hub_corpus import MAX_HUB_DOCUMENTS, HubDataset, read_hub_dataset
from webapp.views import FormError, field_id
from webapp.views.geometry.figure_base import COMPONENT_LABELS, COMPONENTS
from webapp.views.geometry.page import AVERAGE_OPTIONS

KIND = "geometry"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
UPLOAD_ID = "geometry-corpus-upload"
UPLOAD_STATUS_ID = "geometry-corpus-status"

_tokenizer_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}


# --------------------------------------------------------------------------- form


def form_fields(settings: Any) -> list[Any]:
    """The geometry part of the New-run form (IDs from ``field_id``)."""
    limits = settings.limits
    return [
        dbc.Row([
            dbc.Col(dbc.Label("Prompts", class_name="mb-1"), width="auto"),
            dbc.Col(dbc.RadioItems(id=field_id(KIND, "source"), value="prompts", inline=True,
                                   options=[{"label": "typed", "value": "prompts"},
                                            {"label": "from a corpus file", "value": "corpus"},
                                            {"label": "from a Hugging Face dataset", "value": "hub"}]),
                    width="auto"),
        ], class_name="g-3 align-items-center"),
        html.Div([
            dbc.Textarea(id=field_id(KIND, "prompts"), rows=7,
                         placeholder="The capital of France is\nThe quick brown fox\nOnce upon a time",
                         class_name="font-monospace"),
            dbc.FormText(f"One prompt per line; empty lines are ignored. At most "
                         f"{limits.max_prompts} prompts of {limits.max_prompt_chars} characters."),
        ], id="geometry-prompts-part"),
        html.Div([
            html.Div([
                dcc.Upload(id=UPLOAD_ID, max_size=MAX_UPLOAD_BYTES, multiple=False,
                           children=html.Div(["Drop a .txt or .jsonl file here, or ", html.A("choose one")]),
                           className="atlas-upload border rounded p-3 text-center text-muted"),
                dcc.Input(id=field_id(KIND, "corpus_file"), type="hidden", value=None),
                html.Div(id=UPLOAD_STATUS_ID, className="small mt-1"),
            ], id="geometry-corpus-file-part"),
            dbc.Row([
                dbc.Col([dbc.Label("Dataset on the hub", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "hub_name"), size="sm", maxlength=200,
                                   placeholder="Salesforce/wikitext")], md=4),
                dbc.Col([dbc.Label("Config", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "hub_config"), size="sm", maxlength=64,
                                   placeholder="wikitext-2-raw-v1")], md=3),
                dbc.Col([dbc.Label("Split", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "hub_split"), size="sm", maxlength=64, value="train")], md=2),
                dbc.Col([dbc.Label("Text field", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "hub_field"), size="sm", maxlength=64, value="text")], md=3),
            ], id="geometry-corpus-hub-part", style={"display": "none"}),
            dbc.Row([
                dbc.Col([dbc.Label("Format", class_name="small mb-0"),
                         dbc.Select(id=field_id(KIND, "corpus_format"), value="auto", size="sm",
                                    options=[{"label": "by file name", "value": "auto"}]
                                    + [{"label": v, "value": k} for k, v in CORPUS_FORMATS.items()])], md=4,
                        id="geometry-corpus-format-part"),
                dbc.Col([dbc.Label("Sequences (N)", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "corpus_sequences"), type="number", min=1,
                                   max=limits.max_prompts, step=1, value=min(32, limits.max_prompts),
                                   size="sm")], md=3),
                dbc.Col([dbc.Label("Tokens each (M)", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "corpus_tokens"), type="number", min=2,
                                   max=limits.max_tokens_per_prompt, step=1,
                                   value=min(32, limits.max_tokens_per_prompt), size="sm")], md=3),
                dbc.Col([dbc.Label("Seed", class_name="small mb-0"),
                         dbc.Input(id=field_id(KIND, "seed"), type="number", min=0, step=1, value=0,
                                   size="sm")], md=2),
            ], class_name="mt-2"),
            dbc.FormText("N sequences of M tokens are sampled with the seed from the token stream of the "
                         "file, or of the first rows of the dataset's split (streamed, at most "
                         f"{MAX_HUB_DOCUMENTS:,} rows; needs the hub to be reachable from the portal), "
                         "tokenised by the model's own tokenizer."),
        ], id="geometry-corpus-part", style={"display": "none"}),
        dbc.Row([
            dbc.Col([
                dbc.Label("Max tokens per prompt", class_name="mt-3"),
                dbc.Input(id=field_id(KIND, "max_tokens"), type="number", min=1,
                          max=limits.max_tokens_per_prompt, step=1,
                          value=min(32, limits.max_tokens_per_prompt)),
                dbc.FormText(f"1 to {limits.max_tokens_per_prompt}; a prompt with more tokens is refused."),
            ], md=4),
            dbc.Col([
                dbc.Label("Averaging", class_name="mt-3"),
                dbc.RadioItems(id=field_id(KIND, "average"), value="none",
                               options=[{"label": label, "value": value}
                                        for value, label in AVERAGE_OPTIONS.items()]),
            ], md=4),
            dbc.Col([
                dbc.Label("Projection", class_name="mt-3"),
                dbc.RadioItems(id=field_id(KIND, "dims"), value=3, inline=True,
                               options=[{"label": "3D", "value": 3}, {"label": "2D", "value": 2}]),
                dbc.Switch(id=field_id(KIND, "unit_normalise"), value=True,
                           label="Unit-normalise states", class_name="mt-1"),
            ], md=4),
        ]),
        html.Details([
            html.Summary("More options: PCA or UMAP, fit without position 0, components, layers",
                         className="small text-muted"),
            dbc.Row([
                dbc.Col([
                    dbc.RadioItems(id=field_id(KIND, "reduction"), value="pca", inline=True,
                                   options=[{"label": "PCA", "value": "pca"},
                                            {"label": "UMAP", "value": "umap"}], class_name="mt-2"),
                    dbc.Switch(id=field_id(KIND, "exclude_position0"), value=True,
                               label="Fit without position 0"),
                    dbc.Checklist(id=field_id(KIND, "components"), value=list(COMPONENTS),
                                  options=[{"label": f"{c} ({COMPONENT_LABELS[c]})", "value": c}
                                           for c in COMPONENTS], class_name="mt-1"),
                ], md=8),
                dbc.Col([
                    dbc.Label("Layers (first, stop)", class_name="mt-2"),
                    dbc.InputGroup([
                        dbc.Input(id=field_id(KIND, "layer_start"), type="number", min=0, step=1, value=0),
                        dbc.Input(id=field_id(KIND, "layer_stop"), type="number", min=1, step=1,
                                  placeholder="last"),
                    ], size="sm"),
                    dbc.FormText("stop is exclusive; empty: through the last layer"),
                ], md=4),
            ]),
        ], className="mt-2", id="geometry-more-options"),
    ]


@callback(Output("geometry-prompts-part", "style"), Output("geometry-corpus-part", "style"),
          Output("geometry-corpus-file-part", "style"), Output("geometry-corpus-format-part", "style"),
          Output("geometry-corpus-hub-part", "style"),
          Input(field_id(KIND, "source"), "value"))
def _toggle_source(source):
    hidden, shown = {"display": "none"}, {}
    corpus, hub = source == "corpus", source == "hub"
    return (hidden if corpus or hub else shown, shown if corpus or hub else hidden,
            shown if corpus else hidden, shown if corpus else hidden, shown if hub else hidden)


@callback(Output(field_id(KIND, "corpus_file"), "value"), Output(UPLOAD_STATUS_ID, "children"),
          Input(UPLOAD_ID, "contents"), Input(UPLOAD_ID, "filename"), prevent_initial_call=True)
def _uploaded(contents, filename):
    if not contents:
        return None, html.Span("The file is empty or larger than "
                               f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB.", className="text-danger")
    value = json.dumps({"name": str(filename or "corpus"), "contents": contents})
    try:
        documents = read_corpus(str(filename or "corpus"), _decode_upload(contents))
    except CorpusError as exc:
        return None, html.Span(str(exc), className="text-danger")
    return value, html.Span(f"{filename}: {len(documents):,} documents", className="text-success",
                            id="geometry-corpus-ok")


def _decode_upload(contents: str) -> bytes:
    """The bytes of a ``data:...;base64,...`` URL from dcc.Upload."""
    _, _, payload = str(contents).partition(",")
    try:
        return base64.b64decode(payload, validate=False)
    except ValueError as exc:
        raise CorpusError(f"the upload could not be decoded ({exc})") from None


def _tokenizer(model: str) -> Any:
    """The catalogue model's tokenizer (cached; the web process never loads weights)."""
    from latent_atlas.lm import load_tokenizer
    from latent_atlas.settings import get_settings

    with _tokenizer_lock:
        if model not in _tokenizers:
            settings = get_settings()
            entry = settings.model_source(model)
            _tokenizers[model] = load_tokenizer(entry.source, gguf_file=entry.gguf_file,
                                                revision=entry.revision,
                                                cache_dir=settings.data_dir / "tokenizers")
        return _tokenizers[model]


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; surrounding whitespace stripped, empty lines ignored."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _whole(value: Any) -> int | None:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return None
    return int(as_float) if as_float.is_integer() else None


def _hub_dataset(values: Mapping[str, Any], errors: list[str]) -> HubDataset | None:
    name = str(values.get("hub_name") or "").strip()
    if not name:
        errors.append("dataset: name a dataset on the Hugging Face hub (e.g. Salesforce/wikitext)")
        return None
    try:
        return HubDataset(name, str(values.get("hub_config") or "").strip() or None,
                          str(values.get("hub_split") or "").strip() or "train",
                          str(values.get("hub_field") or "").strip() or "text")
    except CorpusError as exc:
        errors.append(str(exc))
        return None


def _corpus_params(model: str | None, values: Mapping[str, Any], limits: Any, errors: list[str],
                   source: str = "corpus") -> dict[str, Any] | None:
    """Sampled sequences (params) from the uploaded file or, for ``source="hub"``, a hub dataset."""
    raw = values.get("corpus_file")
    hub = _hub_dataset(values, errors) if source == "hub" else None
    if source == "corpus" and not raw:
        errors.append("corpus: attach a text or JSONL file")
        return None
    n = _whole(values.get("corpus_sequences"))
    m = _whole(values.get("corpus_tokens"))
    seed = _whole(values.get("seed") if values.get("seed") not in (None, "") else 0)
    if n is None or not 1 <= n <= limits.max_prompts:
        errors.append(f"corpus: the number of sequences must be a whole number from 1 to {limits.max_prompts}")
    if m is None or not 2 <= m <= limits.max_tokens_per_prompt:
        errors.append(f"corpus: tokens per sequence must be a whole number from 2 to "
                      f"{limits.max_tokens_per_prompt}")
    if seed is None or seed < 0:
        errors.append("seed: a whole number >= 0")
    if errors or not model:
        return None
    try:
        if hub is not None:
            name, fmt = hub.source, "hub"
            # Enough text for a choice of windows (~4 characters a token), within the hub bounds.
            documents = read_hub_dataset(hub, max_chars=min(MAX_CORPUS_BYTES, 64 * n * m))
        else:
            upload = json.loads(raw)
            name = str(upload["name"])
            fmt = values.get("corpus_format") or "auto"
            documents = read_corpus(name, _decode_upload(upload["contents"]), None if fmt == "auto" else fmt)
        tokenizer = _tokenizer(model)
        sample = sample_sequences(tokenizer, documents, n, m, seed)
    except CorpusError as exc:
        errors.append(f"corpus: {exc}")
        return None
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(f"corpus: the upload could not be read ({exc})")
        return None
    except Exception as exc:  # a tokenizer that cannot be loaded
        errors.append(f"corpus: could not load the tokenizer of {model!r}: {exc}")
        return None
    return {
        "prompts": sample.texts,
        "token_ids": sample.token_ids,
        "max_tokens": m,
        "seed": seed,
        "corpus": {"source": name[:300], "format": fmt if fmt != "auto" else "by file name",
                   "documents": sample.n_documents, "sequences": len(sample.token_ids),
                   "tokens_per_sequence": m, "seed": seed},
    }


def params_from_form(model: str | None, values: Mapping[str, Any], limits: Any) -> dict[str, Any]:
    """Raw geometry params from the form; ``FormError`` lists every problem found."""
    errors: list[str] = []
    if not model:
        errors.append("model: choose a model")
    source = values.get("source") or "prompts"
    prompts = parse_prompts(values.get("prompts"))
    max_tokens = _whole(values.get("max_tokens"))
    if source == "prompts":
        if not prompts:
            errors.append("prompts: enter at least one prompt (one per line)")
        elif len(prompts) > limits.max_prompts:
            errors.append(f"prompts: at most {limits.max_prompts} prompts (got {len(prompts)})")
        for i, prompt in enumerate(prompts):
            if len(prompt) > limits.max_prompt_chars:
                errors.append(f"prompts: prompt {i + 1} has {len(prompt)} characters "
                              f"(at most {limits.max_prompt_chars})")
        if max_tokens is None or not 1 <= max_tokens <= limits.max_tokens_per_prompt:
            errors.append(f"max_tokens: enter a whole number from 1 to {limits.max_tokens_per_prompt}")
    elif source not in ("corpus", "hub"):
        errors.append("source: typed prompts, a corpus file or a Hugging Face dataset")
    average = values.get("average") or "none"
    if average not in AVERAGE_OPTIONS:
        errors.append(f"average: must be one of {', '.join(AVERAGE_OPTIONS)}")
    dims = _whole(values.get("dims") or 3)
    if dims not in (2, 3):
        errors.append("dims: must be 2 or 3")
    reduction = values.get("reduction") or "pca"
    if reduction not in ("pca", "umap"):
        errors.append("reduction: PCA or UMAP")
    components = values.get("components")
    components = list(COMPONENTS) if components is None else [c for c in COMPONENTS if c in components]
    if not components:
        errors.append("components: choose at least one")
    layer_start = _whole(values.get("layer_start") if values.get("layer_start") not in (None, "") else 0)
    raw_stop = values.get("layer_stop")
    layer_stop = None if raw_stop in (None, "") else _whole(raw_stop)
    if layer_start is None or layer_start < 0:
        errors.append("layers: the first layer is a whole number >= 0")
    if raw_stop not in (None, "") and (layer_stop is None or layer_stop <= (layer_start or 0)):
        errors.append("layers: stop must be a whole number above the first layer (or empty)")
    corpus = _corpus_params(model, values, limits, errors, source) if source in ("corpus", "hub") else None
    if errors:
        raise FormError(errors)
    params: dict[str, Any] = {
        "model": model,
        "prompts": prompts,
        "max_tokens": max_tokens,
        "unit_normalise": bool(values.get("unit_normalise")),
        "exclude_position0": bool(values.get("exclude_position0")),
        "average": average,
        "dims": dims,
    }
    extra = {"reduction": reduction, "components": components, "layer_start": layer_start,
             "layer_stop": layer_stop}
    defaults = {"reduction": "pca", "components": list(COMPONENTS), "layer_start": 0, "layer_stop": None}
    params.update({k: v for k, v in extra.items() if v != defaults[k]})  # only what differs
    if corpus is not None:
        params.update(corpus)
    return params
