"""Corpus input for geometry runs: read a text or JSONL file, sample N sequences of M tokens.

``read_corpus(name, data, fmt)`` turns an uploaded file into documents:

* ``"lines"``  — text, one document per non-empty line;
* ``"text"``   — text, the whole file is one document (split by tokens later);
* ``"jsonl"``  — one JSON object per non-empty line with a string ``"text"`` field.

``sample_sequences(tokenizer, documents, n, m, seed)`` tokenises the documents
(no special tokens), joins them into one stream separated by the eos token (when
the tokenizer has one), cuts the stream into consecutive windows of ``m`` tokens
and picks ``n`` of them with the seed (all of them, in order, when there are no
more than ``n``). When the tokenizer adds special tokens in front of a typed
prompt (a BOS), each window starts with them too and holds ``m`` tokens in all,
so sampled sequences look to the model like typed prompts.

Invariants: the same (file, tokenizer, n, m, seed) always gives the same
sequences; errors are ``CorpusError`` with a message that names the file and
the line, never echoing more than a few characters of its content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CORPUS_FORMATS", "CorpusError", "CorpusSample", "read_corpus", "sample_sequences"]

CorpusFormat = Literal["lines", "text", "jsonl"]
CORPUS_FORMATS: dict[str, str] = {
    "lines": "text, one sequence per line",
    "text": "text, split into token windows",
    "jsonl": "JSONL with a \"text\" field",
}
MAX_CORPUS_BYTES = 20 * 1024 * 1024


class CorpusError(ValueError):
    """The corpus cannot be used; the message says why."""


@dataclass(frozen=True)
class CorpusSample:
    token_ids: list[list[int]]  # the sampled sequences
    texts: list[str]  # each sequence decoded (for display)
    n_documents: int
    n_windows: int  # windows available in the stream
    stream_tokens: int


def guess_format(name: str) -> CorpusFormat:
    """``jsonl`` for ``.jsonl``/``.json`` files, ``lines`` otherwise."""
    return "jsonl" if name.lower().endswith((".jsonl", ".json", ".ndjson")) else "lines"


def read_corpus(name: str, data: bytes, fmt: CorpusFormat | None = None) -> list[str]:
    """The documents of an uploaded corpus file; ``CorpusError`` if empty or unreadable."""
    fmt = fmt or guess_format(name)
    if fmt not in CORPUS_FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r} (known: {', '.join(CORPUS_FORMATS)})")
    if not data:
        raise CorpusError(f"the file {name!r} is empty")
    if len(data) > MAX_CORPUS_BYTES:
        raise CorpusError(f"the file {name!r} has {len(data):,} bytes; the limit is {MAX_CORPUS_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"the file {name!r} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if "\x00" in text:
        raise CorpusError(f"the file {name!r} looks binary (it contains NUL bytes)")
    if fmt == "text":
        documents = [text] if text.strip() else []
    elif fmt == "lines":
        documents = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        documents = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{name!r} line {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f"{name!r} line {number} has no string \"text\" field")
            if record["text"].strip():
                documents.append(record["text"])
    if not documents:
        raise CorpusError(f"the file {name!r} has no text to sample from")
    return documents


def _prefix(tokenizer: Any) -> list[int]:
    """Special tokens the tokenizer puts before a typed prompt (e.g. a BOS), if any."""
    with_special = list(tokenizer("a")["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    if without and with_special[-len(without):] == without:
        return with_special[: len(with_special) - len(without)]
    return []


def sample_sequences(tokenizer: Any, documents: Sequence[str], n: int, m: int,
                     seed: int = 0) -> CorpusSample:
    """Sample ``n`` windows of ``m`` tokens from ``documents``; see the module docstring."""
    if n < 1 or m < 1:
        raise CorpusError("the number of sequences and tokens per sequence must be at least 1")
    prefix = _prefix(tokenizer)
    body = m - len(prefix)
    if body < 1:
        raise CorpusError(f"{m} tokens per sequence leave no room after the {len(prefix)} special tokens")
    separator = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for index, ids in enumerate(encoded):
        if index and separator:
            stream.extend(separator)
        stream.extend(int(t) for t in ids)
    n_windows = len(stream) // body
    if n_windows == 0:
        raise CorpusError(f"the corpus has {len(stream)} tokens, fewer than one sequence of {body}")
    if n_windows <= n:
        starts = np.arange(n_windows) * body
    else:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(n_windows, size=n, replace=False)) * body
    token_ids = [prefix + stream[int(s) : int(s) + body] for s in starts]
    texts = []
    for ids in token_ids:
        text = tokenizer.decode(ids[len(prefix):])
        texts.append(text if text.strip() else repr(text))  # a prompt must not look empty
    return CorpusSample(token_ids, texts, len(documents), n_windows, len(stream))
