"""A model's shape (block count, hidden size) from its config alone, never its weights.

``model_shape(source, gguf_file=..., revision=...)`` reads ``config.json``
(through transformers' ``AutoConfig``) or, for a GGUF file, only the metadata
at the head of the file: the key/value section is walked in order and the scan
stops as soon as ``<arch>.block_count`` and ``<arch>.embedding_length`` are
both seen (llama.cpp writes them before the tokenizer's large arrays), so it
costs milliseconds where ``gguf.GGUFReader`` parses the whole file.

Used before anything is queued (an SAE's ``d_in`` against the hidden size, a
hook layer against the block count); a model whose shape cannot be read gives
``None`` fields and leaves the check to the worker, which has the model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelShape", "gguf_header_values", "model_shape"]

# GGUF metadata value types (gguf.GGUFValueType): fixed sizes and struct formats; 8 string, 9 array.
_GGUF_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class ModelShape:
    """``n_layers`` blocks of hidden size ``d_model``; ``None`` where unknown."""

    n_layers: int | None
    d_model: int | None


def gguf_header_values(path: Path, suffixes: tuple[str, ...]) -> dict[str, int]:
    """Integer values of ``<arch>.<suffix>`` keys from a GGUF header (those present).

    Reads only up to the last wanted key; raises ``ValueError`` for a file that
    is not GGUF.
    """
    found: dict[str, int] = {}
    with open(path, "rb") as handle:
        def read(fmt: str) -> tuple:
            return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))

        def string() -> str:
            (length,) = read("<Q")
            return handle.read(length).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                (length,) = read("<Q")
                handle.seek(length, 1)
            elif kind == 9:
                item, count = read("<IQ")
                if item in _GGUF_FORMATS:
                    handle.seek(struct.calcsize(_GGUF_FORMATS[item]) * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in _GGUF_FORMATS:
                handle.seek(struct.calcsize(_GGUF_FORMATS[kind]), 1)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        read("<I")  # version
        _tensors, n_kv = read("<QQ")
        arch = None
        for _ in range(n_kv):
            key = string()
            (kind,) = read("<I")
            if key == "general.architecture" and kind == 8:
                arch = string()
                continue
            suffix = key[len(arch) + 1:] if arch is not None and key.startswith(f"{arch}.") else None
            if suffix in suffixes and kind in _GGUF_FORMATS and kind not in (6, 12):
                found[suffix] = int(read(_GGUF_FORMATS[kind])[0])
                if len(found) == len(suffixes):
                    break
            else:
                skip(kind)
    return found


def model_shape(source: str, *, gguf_file: str | None = None, revision: str | None = None) -> ModelShape:
    """The block count and hidden size of a model directory, hub id or GGUF file.

    A GGUF file must be local (a hub GGUF would be downloaded): otherwise both
    fields are ``None``. Errors reading a config propagate to the caller.
    """
    if gguf_file is not None:
        path = Path(source) / gguf_file
        if not path.is_file():
            return ModelShape(None, None)
        values = gguf_header_values(path, ("block_count", "embedding_length"))
        return ModelShape(values.get("block_count"), values.get("embedding_length"))
    from transformers import AutoConfig

    kwargs = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(source, **kwargs).get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None)
    d_model = getattr(config, "hidden_size", None)
    return ModelShape(
        int(n_layers) if n_layers is not None else None,
        int(d_model) if d_model is not None else None,
    )
