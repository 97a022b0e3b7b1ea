"""A model's block count, hidden size and vocabulary from config.json or a GGUF header, without weights."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from latent_atlas.lm.shape import ModelShape, gguf_header_values, model_shape
from tiny_models import D_MODEL, N_LAYERS, VOCAB_SIZE


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _gguf(path: Path, items: list[tuple[str, int, bytes]]) -> Path:
    body = b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 0, len(items))
    for key, kind, value in items:
        body += _string(key) + struct.pack("<I", kind) + value
    path.write_bytes(body + b"\x00" * 64)
    return path


def test_config_dir(tiny_llama_dir: Path, tiny_gpt2_dir: Path) -> None:
    assert model_shape(str(tiny_llama_dir)) == ModelShape(N_LAYERS, D_MODEL, VOCAB_SIZE)
    assert model_shape(str(tiny_gpt2_dir)) == ModelShape(N_LAYERS, D_MODEL, VOCAB_SIZE)


def test_gguf_header(tmp_path: Path) -> None:
    _gguf(tmp_path / "m.gguf", [
        ("general.architecture", 8, _string("llama")),
        ("general.name", 8, _string("x" * 100)),
        ("llama.tags", 9, struct.pack("<IQ", 8, 2) + _string("a") + _string("bb")),  # array of strings, skipped
        ("llama.block_count", 4, struct.pack("<I", 30)),
        ("llama.embedding_length", 10, struct.pack("<Q", 576)),
    ])
    # no vocab_size key and no token list: the vocabulary is unknown
    assert model_shape(str(tmp_path), gguf_file="m.gguf") == ModelShape(30, 576, None)
    assert gguf_header_values(tmp_path / "m.gguf", ("block_count",)) == {"block_count": 30}
    assert model_shape(str(tmp_path), gguf_file="absent.gguf") == ModelShape(None, None, None)
    (tmp_path / "bad.gguf").write_bytes(b"NOPE")
    with pytest.raises(ValueError, match="not a GGUF file"):
        model_shape(str(tmp_path), gguf_file="bad.gguf")


@pytest.mark.demo_model
def test_demo_gguf(demo_model_dir: Path) -> None:
    from latent_atlas.settings import DEMO_GGUF_FILE

    assert model_shape(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE) == ModelShape(30, 576, 49152)


def test_gguf_vocabulary(tmp_path: Path) -> None:
    """The vocabulary is ``<arch>.vocab_size`` when present, else the token list's length."""
    tokens = struct.pack("<IQ", 8, 3) + _string("a") + _string("b") + _string("c")
    _gguf(tmp_path / "t.gguf", [
        ("general.architecture", 8, _string("gemma3")),
        ("gemma3.block_count", 4, struct.pack("<I", 18)),
        ("gemma3.embedding_length", 4, struct.pack("<I", 640)),
        ("tokenizer.ggml.tokens", 9, tokens),
    ])
    assert model_shape(str(tmp_path), gguf_file="t.gguf") == ModelShape(18, 640, 3)
    _gguf(tmp_path / "v.gguf", [
        ("general.architecture", 8, _string("llama")),
        ("llama.vocab_size", 4, struct.pack("<I", 7)),
        ("llama.block_count", 4, struct.pack("<I", 2)),
        ("llama.embedding_length", 4, struct.pack("<I", 8)),
        ("tokenizer.ggml.tokens", 9, tokens),
    ])
    assert model_shape(str(tmp_path), gguf_file="v.gguf") == ModelShape(2, 8, 7)


def test_webapp_caches_the_science_reader(monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    """``webapp.model_shape`` is only a cache by catalogue name over ``latent_atlas.lm.shape``."""
    import json

    from latent_atlas.settings import get_settings
    from webapp import model_shape as web_shape

    assert web_shape.ModelShape is ModelShape
    monkeypatch.setenv("ATLAS_MODELS", json.dumps({"tiny": {"source": str(tiny_llama_dir)}}))
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "tiny")
    get_settings.cache_clear()
    web_shape.clear_cache()
    try:
        assert web_shape.model_shape("tiny") == model_shape(str(tiny_llama_dir))
        assert web_shape.model_shape("absent") == ModelShape()  # not in the catalogue: unknown
    finally:
        get_settings.cache_clear()
        web_shape.clear_cache()
