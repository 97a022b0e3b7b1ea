"""Corpus input from a Hugging Face dataset.

The streaming reader runs for real on a local JSONL file through the same
``datasets`` streaming machinery; the hub itself cannot be reached here, so the
one success-path test stands in for it (the hub's two calls are routed to the
local file), and the offline path runs the real client.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from latent_atlas.analyses.corpus import CorpusError, sample_sequences
from latent_atlas.analyses.hub_corpus import HubDataset, read_hub_dataset, take_documents
from tiny_models import build_tiny_tokenizer


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


_load_dataset = datasets.load_dataset  # the real one, also while a test routes the hub's call


def _stream(path: Path):
    return _load_dataset("json", data_files=str(path), split="train", streaming=True)


@pytest.mark.parametrize("name", ["", "a/b/c", "../etc", "-bad", "x" * 97, "owner/na me"])
def test_bad_dataset_ids_are_refused_before_any_fetch(name: str) -> None:
    with pytest.raises(CorpusError, match="hub id"):
        HubDataset(name)


@pytest.mark.parametrize("field", [{"config": "a b"}, {"split": "train;rm"}, {"text_field": "x" * 65}])
def test_bad_config_split_or_field_is_refused(field: dict) -> None:
    with pytest.raises(CorpusError, match="letters, digits"):
        HubDataset("wikitext", **field)


def test_source_names_everything() -> None:
    assert HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1").source == \
        "hf://datasets/Salesforce/wikitext (wikitext-2-raw-v1) train:text"


def test_take_documents_streams_with_both_bounds(tmp_path: Path) -> None:
    rows = [{"text": f"document number {i} " * 5, "id": i} for i in range(50)] + [{"text": "   ", "id": 99}]
    path = _jsonl(tmp_path / "c.jsonl", rows)
    assert len(take_documents(_stream(path), "text", max_documents=10, max_chars=10**6)) == 10
    capped = take_documents(_stream(path), "text", max_documents=1000, max_chars=250)
    assert sum(map(len, capped)) == 250 and capped[0] == rows[0]["text"]
    assert len(take_documents(_stream(path), "text", max_documents=1000, max_chars=10**6)) == 50  # blank skipped


def test_take_documents_errors_name_the_row_and_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"body": "x"}])
    with pytest.raises(CorpusError, match=r"row 1 has no field 'text' \(fields: body\)"):
        take_documents(_stream(path), "text", max_documents=5, max_chars=100)
    path = _jsonl(tmp_path / "d.jsonl", [{"text": 3}])
    with pytest.raises(CorpusError, match="row 1: field 'text' is int, not text"):
        take_documents(_stream(path), "text", max_documents=5, max_chars=100)
    path = _jsonl(tmp_path / "e.jsonl", [{"text": " "}, {"text": ""}])
    with pytest.raises(CorpusError, match="no text in field 'text'"):
        take_documents(_stream(path), "text", max_documents=5, max_chars=100)


def test_an_unreachable_hub_is_one_clear_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 would
    with pytest.raises(CorpusError) as info:
        read_hub_dataset(HubDataset("wikitext", "wikitext-2-raw-v1"))
    message = str(info.value)
    assert message.startswith("hf://datasets/wikitext (wikitext-2-raw-v1) train:text: ")
    assert "not reachable" in message and "upload the text as a file" in message


def test_documents_from_the_hub_are_sampled_like_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _jsonl(tmp_path / "hub.jsonl", [{"text": "abc abc abc " * 20} for _ in range(30)])
    asked: list[tuple] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                        lambda self, name, timeout=None: asked.append(("info", name, timeout)))

    def load_dataset(name, config, split, streaming):
        asked.append(("load", name, config, split, streaming))
        return _stream(path)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    documents = read_hub_dataset(HubDataset("owner/corpus", "en", "validation"), max_documents=20)
    assert asked == [("info", "owner/corpus", 10.0), ("load", "owner/corpus", "en", "validation", True)]
    assert len(documents) == 20
    sample = sample_sequences(build_tiny_tokenizer(), documents, 4, 8, seed=0)
    assert len(sample.token_ids) == 4 and all(len(row) == 8 for row in sample.token_ids)
