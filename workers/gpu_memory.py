"""How one GPU is shared between worker processes: a per-process cap on CUDA memory.

On one GPU the long-job worker (``gpu`` queue) and the interactive worker
(``interactive`` queue) run side by side, each with its own model cache. Each
gets a fraction of the device's memory (``ATLAS_GPU_MEMORY_FRACTION``, set per
process: ``latent-atlas up`` gives the interactive worker
``settings.interactive.gpu_memory_fraction`` (0.2) and the long-job worker
``0.95`` minus that (0.75); docker-compose sets the same per service), so a
long run that grows cannot starve the lane, and the lane cannot push the long
run out of memory (PyTorch's caching allocator raises an out-of-memory error in
the process that exceeds its cap, and execute's OOM path halves the batch).

Invariants: applied in the worker *child* process, before its first model load
(CUDA is never touched in the parent); applied once per device and process;
never on CPU; a fraction of None leaves the device uncapped.
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger(__name__)

_lock = threading.Lock()
_applied: dict[int, float] = {}


def limit_process_memory(device: torch.device, fraction: float | None) -> dict[int, float]:
    """Cap this process's share of ``device`` (every visible GPU for plain ``cuda``) at ``fraction``.

    Returns the caps now in force, by device index ({} on CPU or with no fraction).
    Raises ``ValueError`` for a fraction outside (0, 1].
    """
    if fraction is None or device.type != "cuda":
        return dict(_applied)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {fraction!r}")
    indices = [device.index] if device.index is not None else list(range(torch.cuda.device_count()))
    with _lock:
        for index in indices:
            if _applied.get(index) == fraction:
                continue
            torch.cuda.set_per_process_memory_fraction(fraction, index)
            _applied[index] = fraction
            log.info("this worker process may use %.0f%% of cuda:%d's memory", 100 * fraction, index)
        return dict(_applied)
