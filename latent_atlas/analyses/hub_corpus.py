"""Corpus input from a Hugging Face dataset: stream the first documents of a split.

``HubDataset`` names a dataset on the hub (id, optional config, split, text
field), each part checked against the hub's own naming rules before anything is
fetched. ``read_hub_dataset`` streams the split (``datasets.load_dataset(...,
streaming=True)``: nothing is downloaded beyond the rows read) and returns the
text field of its first rows as documents for
``geometry_corpus.sample_sequences``, which samples N sequences of M tokens
exactly as for an uploaded file.

Invariants: at most ``max_documents`` rows and ``max_chars`` characters are
read; every failure (hub unreachable, unknown dataset, config or split, a
missing or non-text field, no text at all) is a ``CorpusError`` whose message
names the dataset and never echoes more than a few characters of its content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from latent_atlas.analyses.corpus import MAX_CORPUS_BYTES, CorpusError

__all__ = ["MAX_HUB_DOCUMENTS", "HubDataset", "read_hub_dataset", "take_documents"]

MAX_HUB_DOCUMENTS = 100_000
PROBE_TIMEOUT_S = 10.0
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub: ``name`` (``owner/name`` or ``name``), config, split, field."""

    name: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    def __post_init__(self) -> None:
        if not _REPO_ID.match(self.name or "") or ".." in self.name:
            raise CorpusError("dataset: give a hub id like 'owner/name' or 'name' "
                              "(letters, digits, '-', '_', '.'; at most 96 characters each part)")
        for label, value in (("config", self.config), ("split", self.split), ("text field", self.text_field)):
            if value is not None and not _PART.match(value):
                raise CorpusError(f"dataset {label}: letters, digits, '-', '_', '.' only "
                                  "(at most 64 characters)")

    @property
    def source(self) -> str:
        """Provenance as shown on the run page, e.g. ``hf://datasets/wikitext (wikitext-2-raw-v1) train:text``."""
        config = f" ({self.config})" if self.config else ""
        return f"hf://datasets/{self.name}{config} {self.split}:{self.text_field}"


def take_documents(rows: Iterable[Mapping[str, Any]], text_field: str, *, max_documents: int,
                   max_chars: int) -> list[str]:
    """The non-blank ``text_field`` strings of the first rows, stopping at either bound."""
    documents: list[str] = []
    chars = 0
    for index, row in enumerate(rows, start=1):
        if index > max_documents or chars >= max_chars:
            break
        if text_field not in row:
            fields = ", ".join(sorted(map(str, row))[:12])
            raise CorpusError(f"row {index} has no field '{text_field}' (fields: {fields})")
        value = row[text_field]
        if not isinstance(value, str):
            raise CorpusError(f"row {index}: field '{text_field}' is {type(value).__name__}, not text")
        if value.strip():
            documents.append(value[: max_chars - chars])
            chars += len(documents[-1])
    if not documents:
        raise CorpusError(f"no text in field '{text_field}' of the first rows")
    return documents


def read_hub_dataset(dataset: HubDataset, *, max_documents: int = MAX_HUB_DOCUMENTS,
                     max_chars: int = MAX_CORPUS_BYTES) -> list[str]:
    """The first documents of ``dataset`` streamed from the hub (see the module invariants)."""
    try:
        # One quick call first: an unreachable hub or an unknown dataset fails here at once, rather
        # than after the streaming client's retries (tens of seconds) or the datasets import (seconds).
        from huggingface_hub import HfApi

        HfApi().dataset_info(dataset.name, timeout=PROBE_TIMEOUT_S)
        try:
            from datasets import load_dataset
        except ImportError:
            raise CorpusError("reading a Hugging Face dataset needs the 'datasets' package on the web "
                              "process; upload the text as a file instead") from None
        stream = load_dataset(dataset.name, dataset.config, split=dataset.split, streaming=True)
        return take_documents(stream, dataset.text_field, max_documents=max_documents, max_chars=max_chars)
    except CorpusError as exc:
        raise CorpusError(f"{dataset.source}: {exc}") from None
    except Exception as exc:  # the hub client raises many types; each becomes one clear message
        raise CorpusError(f"{dataset.source}: {_explain(exc)}") from None


def _explain(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    unreachable = ("offline", "connect", "resolve", "name or service", "timed out", "timeout", "unreachable",
                   "network")
    names = " ".join(cls.__name__ for cls in type(exc).__mro__).lower()
    if isinstance(exc, (ConnectionError, TimeoutError)) or any(w in names or w in text.lower() for w in unreachable):
        return ("the Hugging Face hub is not reachable from this portal; upload the text as a file "
                f"instead ({kind})")
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError", "GatedRepoError"):
        return "no such dataset on the hub (or it is private or gated)"
    return f"could not be read: {kind}: {text[:200]}"
