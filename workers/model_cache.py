"""A per-process cache of loaded models, keyed by (catalogue name, dtype, device).

Invariants: lives in the worker *child* process only (CUDA is first touched
there, never in the parent before it forks); holds at most ``capacity`` models
so a shared GPU is not filled by stale ones; a failed load is not cached.
On CUDA, the process's memory cap (``settings.gpu_memory_fraction``,
``workers.gpu_memory``) is applied before the first load. A model that cannot
fit the free memory of this worker's device(s) (all visible GPUs with the
catalogue's ``device_map: "auto"``; the RAM on a CPU worker) is refused before
loading, after stale models have been evicted (``latent_atlas.lm.memory``:
``ModelTooLarge`` naming what it needs and what is available).
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict

from latent_atlas.lm import LanguageModel, load_model, resolve_device
from latent_atlas.lm.memory import check_model_fits
from latent_atlas.settings import get_settings
from workers.gpu_memory import limit_process_memory

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str, str], LanguageModel] = OrderedDict()


def get_model(name: str, capacity: int = 1) -> LanguageModel:
    settings = get_settings()
    entry = settings.model_source(name)
    device = resolve_device(settings.device)
    key = (name, entry.dtype, str(device), entry.device_map or "")
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        if device.type == "cuda":
            limit_process_memory(device, settings.gpu_memory_fraction)
        while len(_cache) >= capacity:
            _cache.popitem(last=False)
            gc.collect()
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        check_model_fits(
            name, source=entry.source, gguf_file=entry.gguf_file, revision=entry.revision, dtype=entry.dtype,
            memory_gb=entry.memory_gb, device=device, device_map=entry.device_map,
            fraction=settings.gpu_memory_fraction if device.type == "cuda" else None,
        )
        lm = load_model(
            entry.source,
            gguf_file=entry.gguf_file,
            revision=entry.revision,
            dtype=entry.dtype,
            device=device,
            device_map=entry.device_map,
            name=name,
            tokenizer_cache_dir=settings.data_dir / "tokenizers",
            gguf_cache_dir=settings.data_dir / "converted",
        )
        _cache[key] = lm
        return lm


def clear() -> None:
    with _lock:
        _cache.clear()
