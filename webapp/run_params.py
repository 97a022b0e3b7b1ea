"""Checking a submission before anything is written: params, title and tags.

Invariants:

* Every parameter is validated (pydantic in strict JSON mode, with the
  portal's limits, catalogue and the model's own tokenizer counting tokens)
  before a row is written; a rejected submission raises ``SubmissionError``
  with human-readable messages, one line each.
* The web process never loads a model: it loads tokenizers only (cached), and
  the model's block count and vocabulary size from its config alone
  (``webapp.model_shape``: config.json or the GGUF header, never weights), so
  layers and token ids are checked before queueing (context keys ``n_layers``
  and ``vocab_size``); a catalogue model whose local files are absent (never
  fetched) is refused before queueing with the path and the fetch command
  (``latent_atlas.lm.fetch.missing_files``).
* No text accepted here holds a NUL character (PostgreSQL text cannot).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from pydantic import ValidationError

from latent_atlas.analyses import get_kind
from latent_atlas.lm.fetch import missing_files
from latent_atlas.settings import get_settings
from webapp.model_shape import model_shape
from webapp.reuse import key_params
from webapp.sae_runs import sae_run_dir
from workers.inputs import StoredRuns


class SubmissionError(ValueError):
    """A submission was rejected; ``messages`` say why, one line each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


_tokenizer_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}


def _token_counter(model_name: str):
    """A callable counting tokens per prompt with the model's own tokenizer."""
    from latent_atlas.lm import load_tokenizer

    settings = get_settings()
    with _tokenizer_lock:
        tokenizer = _tokenizers.get(model_name)
        if tokenizer is None:
            entry = settings.model_source(model_name)
            try:
                tokenizer = load_tokenizer(
                    entry.source,
                    gguf_file=entry.gguf_file,
                    revision=entry.revision,
                    cache_dir=settings.data_dir / "tokenizers",
                )
            except Exception as exc:
                raise SubmissionError(
                    [f"could not load the tokenizer of model {model_name!r} to check prompt lengths: {exc}"]
                ) from exc
            _tokenizers[model_name] = tokenizer

    def count(prompts: list[str]) -> list[int]:
        encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    return count


# Pydantic names Python types; a JSON client sent JSON types.
_JSON_TYPE_MESSAGES = {"dict_type": "must be a JSON object", "model_type": "must be a JSON object",
                       "list_type": "must be a JSON array"}


def format_validation_error(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        text = _JSON_TYPE_MESSAGES.get(error.get("type", ""), error.get("msg", "invalid value"))
        if text.startswith("Value error, "):
            text = text[len("Value error, "):]
        messages.append(f"{where}: {text}" if where else text)
    return messages


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (key or value) of a JSON-like value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def run_info(run_id: str) -> dict[str, Any] | None:
    """``{kind, status, model, summary}`` of a run, ``None`` when there is none.

    In the validation context as ``ctx["run_info"]``: params that name another
    run (a scan's basis run) are checked against it before anything is queued.
    """
    return StoredRuns().info(run_id)


def validate_params(kind_name: str, raw: Any) -> Any:
    """Validated params for ``kind_name``; raises ``SubmissionError``."""
    settings = get_settings()
    try:
        kind = get_kind(kind_name)
    except KeyError as exc:
        raise SubmissionError([str(exc.args[0])]) from None
    if not isinstance(raw, dict):
        raise SubmissionError(["params must be a JSON object"])
    context: dict[str, Any] = {"limits": settings.limits, "models": set(settings.models),
                               "run_info": run_info, "sae_run_dir": sae_run_dir}
    model_name = raw.get("model")
    if isinstance(model_name, str) and model_name in settings.models:
        missing = missing_files(model_name, settings.model_source(model_name))
        if missing is not None:  # a catalogue model whose files were never fetched
            raise SubmissionError([missing])
        context["count_tokens"] = _token_counter(model_name)
        shape = model_shape(model_name)  # bounds of layers and token ids, from the config alone
        if shape.n_layers is not None:
            context["n_layers"] = shape.n_layers
        if shape.vocab_size is not None:
            context["vocab_size"] = shape.vocab_size
    try:
        # Strict JSON-mode validation: no coercion between JSON types (``true`` is not 1,
        # ``"5"`` is not 5), for every field of every kind; JSON arrays still fill tuples.
        document = json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SubmissionError([f"params must be plain JSON values ({exc})"]) from None
    try:
        params = kind.params.model_validate_json(document, strict=True, context=context)
    except ValidationError as exc:
        raise SubmissionError(format_validation_error(exc)) from None
    if _has_nul(raw):  # PostgreSQL text cannot hold NUL
        raise SubmissionError(["params: text may not contain NUL characters"])
    return params


def params_hash(kind: str, params: dict[str, Any]) -> str:
    """The run key of validated, dumped params (``webapp.reuse.key_params``)."""
    return key_params(kind, params).params_hash


def clean_title(title: str | None) -> str:
    title = (title or "").strip()
    if "\x00" in title:
        raise SubmissionError(["title: may not contain NUL characters"])
    limit = get_settings().limits.max_title_chars
    if len(title) > limit:
        raise SubmissionError([f"title: at most {limit} characters"])
    return title


def clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SubmissionError(["tags: must be a list of strings"])
    if any("\x00" in t for t in tags):
        raise SubmissionError(["tags: may not contain NUL characters"])
    cleaned = [t.strip() for t in tags if t.strip()]
    if len(cleaned) > 20 or any(len(t) > 50 for t in cleaned):
        raise SubmissionError(["tags: at most 20 tags of at most 50 characters"])
    return cleaned

