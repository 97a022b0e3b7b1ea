"""Turning the ``device`` setting into a ``torch.device``.

Invariant: importing this module never initialises CUDA; only calling
``resolve_device`` asks torch whether CUDA is there (``torch.cuda.is_available``
does not create a CUDA context), so a worker can fork before touching the GPU.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

__all__ = ["DeviceError", "module_device", "resolve_device", "to_module"]

_CUDA = re.compile(r"^cuda(:\d+)?$")


class DeviceError(ValueError):
    """The device setting names a device this machine does not have."""


def resolve_device(setting: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    Raises ``DeviceError`` with a clear message for an unknown setting, for CUDA
    on a machine without it, or for a CUDA index beyond the visible devices.
    """
    value = setting.strip().lower()
    if value == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    if _CUDA.match(value):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {setting!r} was requested but CUDA is not available on this machine")
        device = torch.device(value)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {setting!r} was requested but only {count} CUDA device(s) are visible"
            )
        return device
    raise DeviceError(f"unknown device {setting!r} (use auto, cpu, cuda or cuda:N)")


def module_device(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter (else buffer); ``None`` for a module without either.

    With a device map (accelerate), each block sits wholly on one device, so
    this is where a block's inputs must be.
    """
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def to_module(x: Tensor, module: nn.Module) -> Tensor:
    """``x`` on ``module``'s device (``x`` itself when it is already there or the module has no tensors).

    The one device boundary of a model spread over several devices: callers
    that call blocks, norms or the unembedding directly pass inputs through it.
    """
    device = module_device(module)
    return x if device is None or x.device == device else x.to(device)
