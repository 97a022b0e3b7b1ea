"""Loading a causal language model and its tokenizer.

A source is a Hugging Face hub id, a local directory (``save_pretrained``
output), or a directory (or hub repo) holding a GGUF file named by
``gguf_file``. Invariants of a returned ``LanguageModel``:

* the model is in ``eval()`` mode with ``requires_grad`` off, on ``device``,
  in ``dtype`` (float32, bfloat16 or float16; GGUF weights are de-quantised);
* with a ``device_map`` (``"auto"`` on CUDA, or an explicit dict of module
  path -> device), accelerate places whole blocks on the GPUs instead:
  ``device_map`` records where each part went, ``device`` is where inputs go
  (the token embedding's device), and every caller that calls blocks, norms or
  the unembedding directly moves tensors to the module's device at that
  boundary (``latent_atlas.lm.device.to_module``); a map that would offload
  weights to disk or leave them on the meta device is refused. ``"auto"`` on a
  CPU device is a plain CPU load (there is nothing to spread);
* the tokenizer has a pad token (the eos token when it had none) and pads on
  the right, so real tokens always sit at positions ``0 .. n-1``;
* ``adapter`` has been validated against the model's modules;
* ``revision`` identifies the weights when we can know it: the hub commit sha,
  the sha256 of the GGUF file, or a sha256 over a local directory's weight
  files (names and contents); ``None`` otherwise.

Any failure becomes ``ModelLoadError("could not load model '<name>': <reason>")``
(``UnsupportedArchitecture`` for a model whose family has no adapter).

Tokenizer cache: converting a GGUF tokenizer takes seconds, so ``load_tokenizer``
with a ``cache_dir`` keeps a ``save_pretrained`` copy under
``cache_dir/<gguf stem>-<sha256 of the GGUF file, 32 hex>`` (written to a
temporary directory, then renamed into place). The key is the file's content
hash, so a replaced file never reuses a stale tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from latent_atlas.lm.adapters import ArchitectureAdapter, adapter_for
from latent_atlas.lm.device import resolve_device
from latent_atlas.lm.errors import ModelLoadError, UnsupportedArchitecture

__all__ = [
    "DTYPES",
    "LanguageModel",
    "ModelLoadError",
    "UnsupportedArchitecture",
    "load_model",
    "load_tokenizer",
    "parse_dtype",
    "sha256_file",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LanguageModel:
    """A loaded causal LM with its tokenizer and architecture adapter."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchitectureAdapter
    name: str
    source: str
    gguf_file: str | None
    revision: str | None
    dtype: torch.dtype
    device: torch.device
    device_map: dict[str, str] | None = None  # module path -> device, when spread by accelerate

    @property
    def n_layers(self) -> int:
        return len(self.adapter.blocks_of(self.model))

    @property
    def d_model(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)  # text_config when multimodal

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (the width of the logits)."""
        return int(self.adapter.unembedding_of(self.model).weight.shape[0])

    def environment(self) -> dict[str, Any]:
        """JSON-safe description of the model and the software that runs it."""
        return {
            "model": self.name,
            "source": self.source,
            "gguf_file": self.gguf_file,
            "revision": self.revision,
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "device_map": self.device_map,
            "architecture": type(self.model).__name__,
            "family": self.adapter.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        }


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """One of ``DTYPES``; ``ValueError`` naming the choices otherwise."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(
            f"dtype {name!r} is not supported (choose {', '.join(DTYPES)})"
        ) from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _local_dir(source: str) -> Path | None:
    """The local directory ``source`` names, ``None`` for a hub id.

    A source that looks like a path (absolute, ``./``, ``../``, ``~``) but is
    not a directory is an error, so a typo never turns into a hub request.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{source} is a file, not a model directory")
    if source.startswith(("/", ".", "~")) or not _HUB_ID.match(source):
        raise ValueError(f"local directory {source} does not exist")
    return None


def _resolve_hub_commit(source: str, revision: str | None) -> str | None:
    """The commit sha a hub revision points to (best effort, ``None`` if unknown)."""
    if revision is not None and _COMMIT.match(revision):
        return revision
    try:
        from transformers.utils.hub import resolve_revision

        resolved = resolve_revision(source, revision)
    except Exception:  # best effort; the load itself reports real errors
        return None
    commit = getattr(resolved, "resolved", None)
    return commit if isinstance(commit, str) and _COMMIT.match(commit) else None


def _dir_weights_sha256(path: Path) -> str | None:
    """sha256 over (relative name, sha256 of contents) of every weight file, sorted."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _gguf_path(local: Path, gguf_file: str) -> Path:
    path = local / gguf_file
    if not path.is_file():
        raise ValueError(f"GGUF file {gguf_file} not found in {local}")
    return path


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _cached_gguf_tokenizer(
    local: Path, gguf_file: str, cache_dir: Path, sha256: str | None = None
) -> PreTrainedTokenizerBase:
    gguf_path = _gguf_path(local, gguf_file)
    key = sha256 or sha256_file(gguf_path)
    target = cache_dir / f"{gguf_path.stem}-{key[:32]}"
    if (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(target))
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(str(local), gguf_file=gguf_file))
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; other processes read the cache too
        tokenizer.save_pretrained(str(staging))
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def _load_tokenizer(
    source: str,
    local: Path | None,
    gguf_file: str | None,
    revision: str | None,
    cache_dir: Path | None,
    gguf_sha256: str | None = None,
) -> PreTrainedTokenizerBase:
    if gguf_file is not None and local is not None and cache_dir is not None:
        tokenizer = _cached_gguf_tokenizer(local, gguf_file, Path(cache_dir), gguf_sha256)
    else:
        kwargs: dict[str, Any] = {}
        if gguf_file is not None:
            if local is not None:
                _gguf_path(local, gguf_file)
            kwargs["gguf_file"] = gguf_file
        if revision is not None and local is None:
            kwargs["revision"] = revision
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return _prepare_tokenizer(tokenizer)


def load_tokenizer(
    source: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    cache_dir: Path | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer of ``source`` (pad token set, right padding).

    With ``cache_dir`` and a local GGUF file, a converted copy is kept (see the
    module docstring) so that the second load takes well under a second.
    Raises ``ModelLoadError`` with the reason.
    """
    try:
        local = _local_dir(source)
        return _load_tokenizer(source, local, gguf_file, revision, cache_dir)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer of {source!r}: {_reason(exc)}") from exc


def _load_gguf_cached(
    source: str, gguf_sha: str, cache_dir: Path, kwargs: dict[str, Any]
) -> PreTrainedModel:
    """A GGUF model from its dequantised copy in ``cache_dir/<sha256>``, made on first use.

    The copy is written to a temporary folder and renamed into place, so a
    concurrent or interrupted writer never leaves a half-written copy behind.
    """
    converted = cache_dir / gguf_sha
    placement = {k: v for k, v in kwargs.items() if k in ("dtype", "device_map")}
    if (converted / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(str(converted), **placement)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{gguf_sha[:12]}-", dir=cache_dir))
    try:
        # save_pretrained refuses GGUF-loaded models; the weights are plain
        # dequantised tensors, so write them and a config without quantisation.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(str(staging))
        save_model(model, str(staging / "model.safetensors"))
        os.replace(staging, converted)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return model


def _device_name(value: str | int | torch.device) -> str:
    """``0`` -> ``"cuda:0"``, a device -> its name; anything else (``"disk"``) as written."""
    if isinstance(value, int):
        return f"cuda:{value}"
    try:
        return str(torch.device(value))
    except (RuntimeError, TypeError):
        return str(value)


def _placement(model: PreTrainedModel, requested: str | dict[str, str | int]) -> dict[str, str]:
    """Where the parts went (module path -> device); refused if weights were offloaded to disk.

    accelerate records its map in ``hf_device_map`` when it dispatched the
    model over several devices; a map naming one device is loaded in place
    without dispatch, and then the requested map (or ``{"": device}``) is it.
    """
    placed = {name: _device_name(d) for name, d in (getattr(model, "hf_device_map", None) or {}).items()}
    if not placed:
        placed = ({name: _device_name(d) for name, d in requested.items()} if isinstance(requested, dict)
                  else {"": str(next(model.parameters()).device)})
    offloaded = sorted(name for name, d in placed.items() if d in ("disk", "meta"))
    if offloaded or any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError(
            f"the device map offloads {', '.join(offloaded) or 'weights'} to disk; the model does not fit "
            "the devices' memory"
        )
    return placed


def _input_device(model: PreTrainedModel, adapter: ArchitectureAdapter) -> torch.device:
    return adapter.token_embedding_of(model).weight.device


def load_model(
    source: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict[str, str | int] | None = None,
    name: str | None = None,
    tokenizer_cache_dir: Path | None = None,
    gguf_cache_dir: Path | None = None,
) -> LanguageModel:
    """Load model, tokenizer and adapter; see the module docstring for invariants.

    ``name`` is the catalogue name used in messages and ``environment()``
    (defaults to ``source``). ``tokenizer_cache_dir`` is passed to the GGUF
    tokenizer cache. With ``gguf_cache_dir``, a GGUF model is dequantised once
    and kept there as safetensors under the GGUF file's sha256 (later loads
    skip the slow GGUF reader; the revision stays the GGUF file's hash).
    ``device_map``: ``"auto"`` spreads the model over the visible GPUs when
    ``device`` is CUDA (on a CPU device it loads plainly), a dict places modules
    explicitly (accelerate's format; tests use it to exercise the path on one
    device); see the module docstring.
    """
    label = name or source
    try:
        torch_dtype = parse_dtype(dtype)
        target = device if isinstance(device, torch.device) else resolve_device(device)
        local = _local_dir(source)
        gguf_sha = None
        if local is not None:
            if gguf_file is not None:
                gguf_sha = sha256_file(_gguf_path(local, gguf_file))
                known_revision = gguf_sha
            else:
                known_revision = _dir_weights_sha256(local)
            load_revision = None
        else:
            known_revision = _resolve_hub_commit(source, revision)
            load_revision = known_revision or revision
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if device_map == "auto" and target.type != "cuda":
            device_map = None  # nothing to spread on a CPU
        if device_map is not None:
            kwargs["device_map"] = device_map
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        if load_revision is not None:
            kwargs["revision"] = load_revision
        if gguf_sha is not None and gguf_cache_dir is not None:
            model = _load_gguf_cached(source, gguf_sha, Path(gguf_cache_dir), kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        adapter = adapter_for(model)
        placed = None
        if device_map is None:
            model.to(target)
        else:
            placed = _placement(model, device_map)
            target = _input_device(model, adapter)
        model.eval()
        model.requires_grad_(False)
        tokenizer = _load_tokenizer(
            source, local, gguf_file, load_revision, tokenizer_cache_dir, gguf_sha
        )
    except UnsupportedArchitecture as exc:
        raise UnsupportedArchitecture(f"could not load model {label!r}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"could not load model {label!r}: {_reason(exc)}") from exc
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        name=label,
        source=source,
        gguf_file=gguf_file,
        revision=known_revision,
        dtype=torch_dtype,
        device=target,
        device_map=placed,
    )
