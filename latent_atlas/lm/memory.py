"""How much memory a model needs, how much the devices have, and whether it fits.

A worker calls ``check_model_fits`` before it loads a model, so a model that
cannot fit is refused with a message that names what it needs and what is
available, instead of failing half-way through a load (or pushing another
process's model out of a shared GPU).

* Needed: the catalogue's ``memory_gb`` when the admin gave one, else the
  weights (``parameter count x bytes of the dtype``) plus ``HEADROOM`` for
  activations, the CUDA context and the allocator. The parameter count comes
  from the config without weights: the model is built on PyTorch's ``meta``
  device by ``meta_model`` (the one meta-device builder of the package, also
  behind the anatomy summary; tied weights counted once), or for a
  GGUF file from its tensor table (``latent_atlas.lm.shape.gguf_parameter_count``,
  the header only: the config of a GGUF file is itself derived from that
  header, and reading it through transformers takes tens of seconds).
* Available: on CUDA, the free memory of each GPU (``torch.cuda.mem_get_info``),
  capped by this process's share when a memory fraction is in force; one GPU for
  a plain load, every visible GPU (summed) with ``device_map="auto"``. On the CPU,
  the available RAM (``psutil.virtual_memory().available``, else
  ``MemAvailable`` of ``/proc/meminfo``).
* ``fit_error`` is the pure decision: it fits when needed <= the sum available.

Invariants: nothing here loads weights; importing this module never
initialises CUDA (only ``available_memory`` on a CUDA device asks the driver).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latent_atlas.lm.errors import ModelLoadError

__all__ = [
    "DTYPE_BYTES",
    "GB",
    "HEADROOM",
    "ModelTooLarge",
    "available_memory",
    "check_model_fits",
    "meta_model",
    "fit_error",
    "needed_memory_gb",
    "parameter_count",
    "ram_available",
]

log = logging.getLogger(__name__)

GB = 1e9  # memory is reported in GB of 10^9 bytes, like GPU data sheets
HEADROOM = 0.2  # fraction of the weights' size added for activations, CUDA context and allocator
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


class ModelTooLarge(ModelLoadError):
    """The model cannot fit the memory of the devices this worker has."""


def meta_model(config: Any) -> Any:
    """``AutoModelForCausalLM.from_config(config)`` with every parameter on the meta device, tied."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model


def parameter_count(source: str, *, gguf_file: str | None = None, revision: str | None = None) -> int:
    """The number of parameters of a model, from its config (meta device) or its GGUF header."""
    if gguf_file is not None:
        from latent_atlas.lm.shape import gguf_parameter_count

        path = Path(source) / gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file} not found in {source}")
        return gguf_parameter_count(path)
    from transformers import AutoConfig

    kwargs = {"revision": revision} if revision else {}
    model = meta_model(AutoConfig.from_pretrained(source, **kwargs))
    return int(sum(p.numel() for p in model.parameters()))


def needed_memory_gb(n_params: int, dtype: str, headroom: float = HEADROOM) -> float:
    """GB a model of ``n_params`` parameters in ``dtype`` needs: its weights plus ``headroom`` of them."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not supported (choose {', '.join(DTYPE_BYTES)})")
    return n_params * DTYPE_BYTES[dtype] * (1.0 + headroom) / GB


def ram_available() -> int:
    """Bytes of RAM available to a new allocation (psutil, else ``/proc/meminfo``)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("cannot tell the available RAM: no psutil and no MemAvailable in /proc/meminfo")


def _cuda_free(index: int, fraction: float | None) -> int:
    free, total = torch.cuda.mem_get_info(index)
    if fraction is not None:  # this process may use at most fraction x total (workers.gpu_memory)
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(index))
    return max(int(free), 0)


def available_memory(
    device: torch.device, device_map: str | None = None, *, fraction: float | None = None
) -> dict[str, int]:
    """Bytes available per device for a model loaded on ``device`` (see the module docstring).

    ``device_map="auto"`` on CUDA counts every visible GPU; ``fraction`` is this
    process's cap of each GPU's total memory, when one is in force.
    """
    if device.type == "cuda":
        if device_map == "auto":
            indices = list(range(torch.cuda.device_count()))
        else:
            indices = [device.index if device.index is not None else torch.cuda.current_device()]
        return {f"cuda:{i}": _cuda_free(i, fraction) for i in indices}
    return {"cpu": ram_available()}


def fit_error(model_name: str, needed_gb: float, available: Mapping[str, int]) -> str | None:
    """``None`` when ``needed_gb`` fits the summed ``available`` bytes, else the refusal message."""
    total_gb = sum(available.values()) / GB
    if needed_gb <= total_gb:
        return None
    per_device = ", ".join(f"{name} {free / GB:.1f} GB" for name, free in available.items())
    if len(available) > 1:
        where = f"the {len(available)} devices have {total_gb:.1f} GB free together ({per_device})"
        hint = "use a smaller dtype or add GPUs"
    else:
        where = f"{per_device} free"
        hint = "use a smaller dtype" + (
            ", or set device_map \"auto\" in the catalogue to spread it over the node's GPUs"
            if next(iter(available), "").startswith("cuda") else ""
        )
    return f"model {model_name!r} needs about {needed_gb:.1f} GB but only {where}; {hint}"


def check_model_fits(
    model_name: str,
    *,
    source: str,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    memory_gb: float | None = None,
    device: torch.device,
    device_map: str | None = None,
    fraction: float | None = None,
    available: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Refuse (``ModelTooLarge``) a model that cannot fit; return what was compared.

    ``memory_gb`` (the catalogue's) wins over the estimate. When neither is
    known (a hub config that cannot be read here), nothing is refused: the load
    itself reports what goes wrong. ``available`` overrides the measurement.
    """
    needed = memory_gb
    if needed is None:
        try:
            needed = needed_memory_gb(parameter_count(source, gguf_file=gguf_file, revision=revision), dtype)
        except Exception as exc:  # noqa: BLE001 - unknown here; the load reports real errors
            log.info("could not estimate the memory of model %s: %s", model_name, exc)
            return {"needed_gb": None, "available": None}
    free = dict(available) if available is not None else available_memory(device, device_map, fraction=fraction)
    message = fit_error(model_name, needed, free)
    if message is not None:
        raise ModelTooLarge(message)
    return {"needed_gb": needed, "available": free}
