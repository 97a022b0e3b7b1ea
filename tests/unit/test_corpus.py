"""Corpus files: reading text and JSONL, clear errors, seeded sampling of N sequences of M tokens."""

from __future__ import annotations

import json

import pytest

from latent_atlas.analyses.corpus import CorpusError, read_corpus, sample_sequences
from tiny_models import build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()  # byte-level: one token per byte, no special tokens added


def test_lines_text_and_jsonl():
    assert read_corpus("a.txt", b"one\n\n two \nthree\n") == ["one", "two", "three"]
    assert read_corpus("a.txt", b"one\ntwo", "text") == ["one\ntwo"]
    data = "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["x y", "", "z"])).encode()
    assert read_corpus("a.jsonl", data) == ["x y", "z"]
    assert read_corpus("a.txt", "\ufeffbom".encode()) == ["bom"]


@pytest.mark.parametrize(
    ("name", "data", "fmt", "message"),
    [
        ("e.txt", b"", None, "is empty"),
        ("e.txt", b"\n  \n", None, "no text"),
        ("b.txt", b"\xff\xfe\x00", None, "not UTF-8"),
        ("n.txt", b"a\x00b", None, "binary"),
        ("j.jsonl", b'{"text": "ok"}\nnot json\n', None, "line 2 is not valid JSON"),
        ("j.jsonl", b'{"body": "x"}\n', None, 'line 1 has no string "text" field'),
        ("j.jsonl", b"[1, 2]\n", None, "no string"),
        ("x.txt", b"a", "csv", "unknown corpus format"),
    ],
)
def test_unreadable_files_get_clear_errors(name, data, fmt, message):
    with pytest.raises(CorpusError, match=message):
        read_corpus(name, data, fmt)


def test_sampling_is_seeded_and_exact():
    documents = ["abcdefghij", "klmnopqrst"]  # 10 + 1 (eos) + 10 = 21 tokens: 5 windows of 4
    sample = sample_sequences(TOKENIZER, documents, n=3, m=4, seed=7)
    assert sample.n_windows == 5 and sample.stream_tokens == 21 and sample.n_documents == 2
    assert len(sample.token_ids) == 3 and all(len(ids) == 4 for ids in sample.token_ids)
    again = sample_sequences(TOKENIZER, documents, n=3, m=4, seed=7)
    assert again.token_ids == sample.token_ids
    stream = TOKENIZER("abcdefghij")["input_ids"] + [TOKENIZER.eos_token_id] + TOKENIZER("klmnopqrst")["input_ids"]
    windows = [stream[i : i + 4] for i in range(0, 20, 4)]
    assert all(ids in windows for ids in sample.token_ids)
    assert sample.token_ids == sorted(sample.token_ids, key=windows.index)  # stream order
    assert sample.texts[0] == TOKENIZER.decode(sample.token_ids[0])
    everything = sample_sequences(TOKENIZER, documents, n=50, m=4)
    assert everything.token_ids == windows  # fewer windows than asked: all of them, in order


def test_sampling_errors():
    with pytest.raises(CorpusError, match="fewer than one sequence"):
        sample_sequences(TOKENIZER, ["ab"], n=1, m=4)
    with pytest.raises(CorpusError, match="at least 1"):
        sample_sequences(TOKENIZER, ["ab"], n=0, m=4)


def test_a_bos_adding_tokenizer_gets_its_prefix_on_every_sequence():
    class WithBos:
        eos_token_id = None

        def __call__(self, texts, add_special_tokens=True):
            single = isinstance(texts, str)
            rows = [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in ([texts] if single else texts)]
            return {"input_ids": rows[0] if single else rows}

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    sample = sample_sequences(WithBos(), ["abcdefgh"], n=2, m=5, seed=0)
    assert sample.token_ids == [[1, 97, 98, 99, 100], [1, 101, 102, 103, 104]]
    assert sample.texts == ["abcd", "efgh"]
