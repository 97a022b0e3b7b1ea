"""A model's shape (block count, hidden size, vocabulary) from its config alone, never its weights.

This is the one reader of model shapes; the web process adds only a cache per
catalogue name (``webapp.model_shape``). ``model_shape(source, gguf_file=...,
revision=...)`` reads ``config.json`` (through transformers' ``AutoConfig``,
the text config of a multimodal model) or, for a GGUF file, only the metadata
at the head of the file (``gguf_shape``): the key/value section is walked in
order, arrays are skipped by seeking, and the walk stops as soon as everything
wanted has been seen, so it costs milliseconds where ``gguf.GGUFReader`` parses
the whole file.

Invariants: a value that cannot be read is ``None`` ("unknown here": the
worker checks again with the loaded model). The vocabulary size is the number
of rows of the embedding / unembedding (valid token ids are
``0 .. vocab_size - 1``): ``config.vocab_size``, or in a GGUF file
``<arch>.vocab_size`` when present, else the length of ``tokenizer.ggml.tokens``
(llama.cpp pads that list to the embedding's rows).

Used before anything is queued (layer ranges, token ids, an SAE's ``d_in``
against the hidden size).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TOKEN_COUNT", "ModelShape", "gguf_header_values", "gguf_parameter_count", "gguf_shape", "model_shape"]

# GGUF metadata value types (gguf.GGUFValueType): fixed sizes and struct formats; 8 string, 9 array.
_GGUF_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_FLOATS = (6, 12)
TOKEN_COUNT = "tokenizer.ggml.tokens"  # key of gguf_header_values' token-list length


@dataclass(frozen=True)
class ModelShape:
    """``n_layers`` blocks of width ``d_model`` over ``vocab_size`` tokens; ``None`` where unknown."""

    n_layers: int | None = None
    d_model: int | None = None
    vocab_size: int | None = None


class _GgufStream:
    """Sequential reads of a GGUF header: values, strings, and skips by seeking (arrays are never read)."""

    def __init__(self, handle: Any, path: Path) -> None:
        self.handle = handle
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        self.read("<I")  # version
        self.n_tensors, self.n_kv = self.read("<QQ")

    def read(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.handle.read(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.read("<Q")
        return self.handle.read(length).decode("utf-8", "replace")

    def skip_string(self) -> None:
        (length,) = self.read("<Q")
        self.handle.seek(length, 1)

    def skip_array(self, item: int, count: int) -> None:
        if item in _GGUF_FORMATS:
            self.handle.seek(struct.calcsize(_GGUF_FORMATS[item]) * count, 1)
        else:
            for _ in range(count):
                self.skip(item)

    def skip(self, kind: int) -> None:
        if kind == _GGUF_STRING:
            self.skip_string()
        elif kind == _GGUF_ARRAY:
            self.skip_array(*self.read("<IQ"))
        elif kind in _GGUF_FORMATS:
            self.handle.seek(struct.calcsize(_GGUF_FORMATS[kind]), 1)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def gguf_header_values(path: Path, suffixes: tuple[str, ...], *, token_count: bool = False) -> dict[str, int]:
    """Integer values of the ``<arch>.<suffix>`` keys of a GGUF header (those present).

    With ``token_count``, the length of the tokenizer's token list is returned
    under ``TOKEN_COUNT`` (read from the array's header; the list is skipped).
    The walk stops once every wanted value is seen, except that ``vocab_size``
    and the token count stand in for each other (either one ends the wait).
    Raises ``ValueError`` for a file that is not GGUF.
    """
    found: dict[str, int] = {}

    def complete() -> bool:
        fixed = [s for s in suffixes if s != "vocab_size"]
        if any(s not in found for s in fixed):
            return False
        vocab_wanted = "vocab_size" in suffixes or token_count
        return not vocab_wanted or "vocab_size" in found or TOKEN_COUNT in found

    with open(path, "rb") as handle:
        stream = _GgufStream(handle, path)
        arch = None
        for _ in range(stream.n_kv):
            key = stream.string()
            (kind,) = stream.read("<I")
            suffix = key[len(arch) + 1:] if arch is not None and key.startswith(f"{arch}.") else None
            if key == "general.architecture" and kind == _GGUF_STRING:
                arch = stream.string()
            elif suffix in suffixes and kind in _GGUF_FORMATS and kind not in _FLOATS:
                found[suffix] = int(stream.read(_GGUF_FORMATS[kind])[0])
            elif token_count and key == TOKEN_COUNT and kind == _GGUF_ARRAY:
                item, count = stream.read("<IQ")
                found[TOKEN_COUNT] = int(count)
                stream.skip_array(item, count)
            else:
                stream.skip(kind)
            if complete():
                break
    return found


def gguf_parameter_count(path: Path) -> int:
    """The number of weights in a GGUF file: the sum over its tensor table of each tensor's element count.

    Reads the header only (the key/value section is skipped, then the tensor
    infos are read); a quantised tensor counts its elements, which is what it
    becomes when dequantised. Raises ``ValueError`` for a file that is not GGUF.
    """
    with open(path, "rb") as handle:
        stream = _GgufStream(handle, path)
        for _ in range(stream.n_kv):
            stream.skip_string()
            stream.skip(stream.read("<I")[0])
        total = 0
        for _ in range(stream.n_tensors):
            stream.skip_string()  # name
            (n_dims,) = stream.read("<I")
            count = 1
            for dim in stream.read(f"<{n_dims}Q"):
                count *= int(dim)
            stream.read("<IQ")  # type, offset
            total += count
    return total


def gguf_shape(path: Path) -> ModelShape:
    """Block count, hidden size and vocabulary size from a GGUF file's metadata (see the module docstring)."""
    values = gguf_header_values(path, ("block_count", "embedding_length", "vocab_size"), token_count=True)
    vocab = values.get("vocab_size", values.get(TOKEN_COUNT))
    return ModelShape(values.get("block_count"), values.get("embedding_length"), vocab)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def model_shape(source: str, *, gguf_file: str | None = None, revision: str | None = None) -> ModelShape:
    """The shape of a model directory, hub id or GGUF file.

    A GGUF file must be local (a hub GGUF would be downloaded): otherwise every
    field is ``None``. Errors reading a config or a header propagate.
    """
    if gguf_file is not None:
        path = Path(source) / gguf_file
        return gguf_shape(path) if path.is_file() else ModelShape()
    from transformers import AutoConfig

    kwargs = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(source, **kwargs).get_text_config()
    return ModelShape(
        _int_or_none(getattr(config, "num_hidden_layers", None)),
        _int_or_none(getattr(config, "hidden_size", None)),
        _int_or_none(getattr(config, "vocab_size", None)),
    )
