"""Language models for Latent Atlas: loading, architecture adapters, hook points, lens.

Public names are re-exported here; each lives in a small module with one job:
``loading`` (model + tokenizer), ``adapters`` (where a family keeps its
modules), ``hooks`` (the four points of every block), ``lens`` (logit lens),
``device`` (the device setting, a module's device), ``shape`` (a model's
shape from its config or GGUF header), ``memory`` (what a model needs and
whether it fits the devices), ``fetch`` (the offline models of the catalogue),
``demo`` / ``gemma3_fetch`` (their downloads).
"""

from latent_atlas.lm.adapters import ADAPTERS, ArchitectureAdapter, adapter_for
from latent_atlas.lm.demo import DemoFetchError, fetch_demo_model
from latent_atlas.lm.device import DeviceError, resolve_device
from latent_atlas.lm.errors import ModelLoadError, UnsupportedArchitecture
from latent_atlas.lm.hooks import (
    COMPONENTS,
    Capture,
    HookPointMismatch,
    capture_hooks,
    capture_points,
    check_hook_points,
    verify_capture,
)
from latent_atlas.lm.lens import logit_lens
from latent_atlas.lm.loading import DTYPES, LanguageModel, load_model, load_tokenizer

__all__ = [
    "ADAPTERS",
    "COMPONENTS",
    "DTYPES",
    "ArchitectureAdapter",
    "Capture",
    "DemoFetchError",
    "DeviceError",
    "HookPointMismatch",
    "LanguageModel",
    "ModelLoadError",
    "UnsupportedArchitecture",
    "adapter_for",
    "capture_hooks",
    "capture_points",
    "check_hook_points",
    "fetch_demo_model",
    "load_model",
    "load_tokenizer",
    "logit_lens",
    "resolve_device",
    "verify_capture",
]
