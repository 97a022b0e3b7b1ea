"""A catalogue model's shape (block count, vocabulary size) without loading weights.

The web process validates params against the model before anything is
queued (layer ranges, token ids) but never loads a model: ``model_shape``
reads ``config.json`` (transformers' ``AutoConfig``, text config) or, for a
GGUF file, the metadata at the head of the file only.

Invariants: a value that cannot be read is ``None`` ("unknown here": the
worker checks it again with the loaded model); results are cached per model
name, and a failure is retried after ``SHAPE_RETRY_S`` seconds.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_atlas.settings import get_settings

__all__ = ["SHAPE_RETRY_S", "ModelShape", "clear_cache", "gguf_shape", "model_shape"]

log = logging.getLogger(__name__)

SHAPE_RETRY_S = 300.0  # a model whose config could not be read is tried again after this

# GGUF metadata value types (gguf.GGUFValueType): fixed sizes and struct formats; 8 string, 9 array.
_GGUF_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class ModelShape:
    """What validation needs to know of a model; ``None``: unknown without the weights."""

    n_layers: int | None = None
    vocab_size: int | None = None  # rows of the embedding / unembedding: valid ids are 0..vocab_size-1


def gguf_shape(path: Path) -> ModelShape:
    """``<arch>.block_count`` and the vocabulary size from a GGUF file's metadata.

    The vocabulary size is ``<arch>.vocab_size`` when the file has it, else the
    length of ``tokenizer.ggml.tokens`` (llama.cpp pads that list to the
    embedding's rows). Only the key/value section is read; arrays are skipped
    by seeking (their length is in their header).
    """
    n_layers: int | None = None
    vocab_key: int | None = None
    token_count: int | None = None
    with open(path, "rb") as handle:
        def read(fmt: str) -> tuple[Any, ...]:
            return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))

        def string() -> str:
            (length,) = read("<Q")
            return handle.read(length).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == _GGUF_STRING:
                (length,) = read("<Q")
                handle.seek(length, 1)
            elif kind == _GGUF_ARRAY:
                item, count = read("<IQ")
                skip_array(item, count)
            elif kind in _GGUF_FORMATS:
                handle.seek(struct.calcsize(_GGUF_FORMATS[kind]), 1)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        def skip_array(item: int, count: int) -> None:
            if item in _GGUF_FORMATS:
                handle.seek(struct.calcsize(_GGUF_FORMATS[item]) * count, 1)
            else:
                for _ in range(count):
                    skip(item)

        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        read("<I")  # version
        _tensors, n_kv = read("<QQ")
        arch = None
        for _ in range(n_kv):
            key = string()
            (kind,) = read("<I")
            if key == "general.architecture" and kind == _GGUF_STRING:
                arch = string()
            elif arch is not None and key == f"{arch}.block_count" and kind in _GGUF_FORMATS:
                n_layers = int(read(_GGUF_FORMATS[kind])[0])
            elif arch is not None and key == f"{arch}.vocab_size" and kind in _GGUF_FORMATS:
                vocab_key = int(read(_GGUF_FORMATS[kind])[0])
            elif key == "tokenizer.ggml.tokens" and kind == _GGUF_ARRAY:
                item, count = read("<IQ")
                token_count = int(count)
                skip_array(item, count)
            else:
                skip(kind)
            if n_layers is not None and vocab_key is not None:
                break
    return ModelShape(n_layers, vocab_key if vocab_key is not None else token_count)


def _read_shape(entry: Any) -> ModelShape:
    if entry.gguf_file is not None:
        path = Path(entry.source) / entry.gguf_file
        return gguf_shape(path) if path.is_file() else ModelShape()  # a hub GGUF would be downloaded
    from transformers import AutoConfig

    kwargs = {"revision": entry.revision} if entry.revision else {}
    config = AutoConfig.from_pretrained(entry.source, **kwargs).get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None)
    vocab_size = getattr(config, "vocab_size", None)
    return ModelShape(None if n_layers is None else int(n_layers), None if vocab_size is None else int(vocab_size))


_lock = threading.Lock()
_cache: dict[str, tuple[float, ModelShape]] = {}


def clear_cache() -> None:
    """Forget every cached shape (tests; a changed catalogue)."""
    with _lock:
        _cache.clear()


def model_shape(model_name: str) -> ModelShape:
    """The shape of catalogue model ``model_name`` from its config, never its weights.

    Cached per model; a shape with an unknown field is read again after
    ``SHAPE_RETRY_S`` seconds. Any failure means "unknown" and is logged.
    """
    now = time.monotonic()
    with _lock:
        cached = _cache.get(model_name)
        if cached is not None:
            stamp, shape = cached
            complete = shape.n_layers is not None and shape.vocab_size is not None
            if complete or now - stamp < SHAPE_RETRY_S:
                return shape
        try:
            shape = _read_shape(get_settings().model_source(model_name))
        except Exception as exc:  # noqa: BLE001 - any failure means "unknown here"
            log.info("could not read the shape of model %s: %s", model_name, exc)
            shape = ModelShape()
        _cache[model_name] = (now, shape)
        return shape
