"""A catalogue model's shape for the web process: a cache over ``latent_atlas.lm.shape``.

The web process validates params against the model before anything is
queued (layer ranges, token ids) but never loads a model. The reading itself
(``config.json`` or the GGUF header, never the weights) is the science
package's ``latent_atlas.lm.shape``; this module only keys it by catalogue name
and caches it.

Invariants: a value that cannot be read is ``None`` ("unknown here": the
worker checks it again with the loaded model); results are cached per model
name, and a shape with an unknown field (or a failure) is read again after
``SHAPE_RETRY_S`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from latent_atlas.lm.shape import ModelShape, gguf_shape
from latent_atlas.lm.shape import model_shape as read_shape
from latent_atlas.settings import get_settings

__all__ = ["SHAPE_RETRY_S", "ModelShape", "clear_cache", "gguf_shape", "model_shape"]

log = logging.getLogger(__name__)

SHAPE_RETRY_S = 300.0  # a model whose config could not be read is tried again after this

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
            complete = None not in (shape.n_layers, shape.d_model, shape.vocab_size)
            if complete or now - stamp < SHAPE_RETRY_S:
                return shape
        try:
            entry = get_settings().model_source(model_name)
            shape = read_shape(entry.source, gguf_file=entry.gguf_file, revision=entry.revision)
        except Exception as exc:  # noqa: BLE001 - any failure means "unknown here"
            log.info("could not read the shape of model %s: %s", model_name, exc)
            shape = ModelShape()
        _cache[model_name] = (now, shape)
        return shape
