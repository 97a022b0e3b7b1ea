"""Where an SAE comes from, loading it with sae-lens, and the maths every view shares.

* ``SaeSource``: a pretrained sae-lens release + SAE id, a directory saved by
  sae-lens (under ``{data_dir}/saes`` for users; the admin's catalogue may
  point anywhere), an SAE saved by a ``sae_train`` run, or a catalogue name.
* ``load_sae``: sae-lens loads every kind (``SAE.from_pretrained``,
  ``SAE.load_from_disk``); every failure is one ``SaeLoadError`` whose message
  says what to do (an unreachable hub, a missing directory, an unknown run).
* ``sae_config``: the SAE's config without its weights (``cfg.json``), for the
  checks made before anything is queued: ``check_sae_fits`` compares ``d_in``
  and the hook's layer with the model's hidden size and block count.
* Hook convention (transformer-lens names, which sae-lens SAEs record):
  ``blocks.{L}.hook_resid_post`` is the residual after block L (our
  ``resid_post`` of layer L, ``output_hidden_states[L + 1]``);
  ``hook_resid_pre`` of L is the residual entering block L;
  ``hook_resid_mid``, ``hook_attn_out`` and ``hook_mlp_out`` are our
  ``resid_mid``, ``attn_out`` and ``mlp_out`` of layer L.
* ``decoder_rows`` / ``decoder_bias``: for every supported architecture and
  every activation vector ``a`` that ``sae.encode`` produces,
  ``sae.decode(a) == a @ decoder_rows(sae) + decoder_bias(sae)`` (float
  error). TopK SAEs that rescale activations by the decoder norm get unit rows;
  SAEs whose decode depends on the input (run-time layer norm or norm
  rescaling) or that are not autoencoders of one point (transcoders) are
  refused with a clear error. Every sum of "activation x decoder row" in the
  portal uses these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DECODER_ARCHITECTURES",
    "HOOK_POINTS",
    "SaeHook",
    "SaeLoadError",
    "SaeSource",
    "check_sae_fits",
    "decoder_bias",
    "decoder_rows",
    "load_sae",
    "parse_hook_name",
    "sae_config",
    "sae_hook",
    "sae_hook_layer",
    "user_sae_root",
]

# The architectures whose decode is the affine map ``a @ rows + bias`` (sae-lens 6.54 names).
DECODER_ARCHITECTURES = frozenset({"standard", "gated", "jumprelu", "topk", "abstopk", "batchtopk"})
# transformer-lens hook suffix -> our point of the block (``latent_atlas.lm.hooks.COMPONENTS``
# plus ``resid_pre``, the residual entering the block).
HOOK_POINTS: dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
_HOOK_RE = re.compile(r"^blocks\.(\d{1,4})\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out)$")
_RUN_ID_RE = RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_RE = r"^[A-Za-z0-9_.:/@+-]{1,200}$"
_RUNTIME_NORMS = frozenset({"layer_norm", "constant_norm_rescale"})


class SaeLoadError(Exception):
    """An SAE could not be found or loaded; the message says why and what to do."""


RunDirResolver = Callable[[str], Path]


class SaeSource(BaseModel):
    """Which SAE to use. Each kind needs its own fields and accepts no others:

    * ``pretrained``: ``release`` + ``sae_id`` (sae-lens's pretrained directory or a hub repo);
    * ``disk``: ``path``, a directory saved by sae-lens (``cfg.json`` + ``sae_weights.safetensors``);
    * ``run``: ``run_id`` of a succeeded ``sae_train`` run;
    * ``catalogue``: ``name`` of an entry of the admin's SAE catalogue (``ATLAS_SAES``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pretrained", "disk", "run", "catalogue"]
    release: str | None = Field(None, pattern=_NAME_RE)
    sae_id: str | None = Field(None, pattern=_NAME_RE)
    path: str | None = Field(None, min_length=1, max_length=1000)
    run_id: str | None = Field(None, pattern=_RUN_ID_RE)
    name: str | None = Field(None, pattern=_NAME_RE)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> SaeSource:
        needed = {
            "pretrained": ("release", "sae_id"),
            "disk": ("path",),
            "run": ("run_id",),
            "catalogue": ("name",),
        }[self.kind]
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"an SAE of kind {self.kind!r} needs {' and '.join(missing)}")
        extra = [f for f in ("release", "sae_id", "path", "run_id", "name")
                 if f not in needed and getattr(self, f) is not None]
        if extra:
            raise ValueError(f"an SAE of kind {self.kind!r} takes no {', '.join(extra)}")
        if self.path is not None and "\x00" in self.path:
            raise ValueError("the SAE path may not contain NUL")
        return self

    def describe(self) -> str:
        """One line naming the SAE (for summaries and pages)."""
        if self.kind == "pretrained":
            return f"pretrained {self.release} / {self.sae_id}"
        if self.kind == "disk":
            return f"directory {self.path}"
        if self.kind == "run":
            return f"trained by run {self.run_id}"
        return f"catalogue SAE {self.name}"


def user_sae_root(data_dir: Path) -> Path:
    """The one directory under which users may name SAE directories: ``{data_dir}/saes``."""
    return (Path(data_dir) / "saes").resolve()


def _settings() -> Any:
    from latent_atlas.settings import get_settings

    return get_settings()


def _resolve(source: SaeSource, *, settings: Any | None) -> SaeSource:
    """A catalogue name becomes its entry's source; a user's disk path must lie under ``{data_dir}/saes``."""
    if source.kind == "catalogue":
        settings = settings or _settings()
        try:
            entry = settings.sae_entry(source.name)
        except KeyError as exc:
            raise SaeLoadError(str(exc.args[0])) from None
        if entry.source == "disk":
            return SaeSource(kind="disk", path=entry.path)
        return SaeSource(kind="pretrained", release=entry.release, sae_id=entry.sae_id)
    if source.kind == "disk":
        settings = settings or _settings()
        root = user_sae_root(settings.data_dir)
        path = Path(source.path)
        resolved = (path if path.is_absolute() else root / path).resolve()
        if resolved != root and root not in resolved.parents:
            raise SaeLoadError(
                f"SAE directories must lie under {root} (ask an admin to add other SAEs to the catalogue)"
            )
        return SaeSource(kind="disk", path=str(resolved))
    return source


def _hub_unreachable(exc: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError | TimeoutError):
            return True
        name = type(chain).__name__
        if name in {"ConnectError", "ConnectTimeout", "ReadTimeout", "ConnectionError", "MaxRetryError"}:
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def _pretrained_error(source: SaeSource, exc: BaseException) -> SaeLoadError:
    what = f"pretrained SAE {source.release!r} / {source.sae_id!r}"
    if _hub_unreachable(exc):
        return SaeLoadError(
            f"could not fetch the {what}: the Hugging Face hub is unreachable from this worker "
            "(offline or HF_HUB_OFFLINE=1). Use an SAE saved on disk, a catalogue SAE, or train one "
            "with a sae_train run."
        )
    return SaeLoadError(f"could not load the {what}: {exc}")


def _check_dir(path: str) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise SaeLoadError(f"SAE directory {path} does not exist")
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).is_file():
            raise SaeLoadError(f"SAE directory {path} has no {name} (save SAEs with sae-lens's save_model)")
    return directory


def _run_dir(source: SaeSource, run_dir_resolver: RunDirResolver | None) -> Path:
    if run_dir_resolver is None:
        raise SaeLoadError("an SAE from a run needs the portal (no run resolver was given)")
    try:
        return _check_dir(str(run_dir_resolver(source.run_id)))
    except SaeLoadError:
        raise
    except Exception as exc:  # the resolver reports unknown / unfinished runs in its own words
        raise SaeLoadError(f"SAE of run {source.run_id}: {exc}") from exc


def load_sae(
    source: SaeSource,
    device: str | torch.device = "cpu",
    *,
    run_dir_resolver: RunDirResolver | None = None,
    settings: Any | None = None,
) -> Any:
    """The SAE ``source`` names, loaded by sae-lens on ``device`` in eval mode (a ``sae_lens.SAE``).

    ``run_dir_resolver(run_id)`` returns the directory a ``sae_train`` run saved
    (the worker supplies it; this package never touches the database). Raises
    ``SaeLoadError`` for anything that goes wrong.
    """
    from sae_lens import SAE

    source = _resolve(source, settings=settings)
    device = str(device)
    if source.kind == "pretrained":
        try:
            sae = SAE.from_pretrained(source.release, source.sae_id, device=device)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
            raise _pretrained_error(source, exc) from exc
    else:
        directory = _check_dir(source.path) if source.kind == "disk" else _run_dir(source, run_dir_resolver)
        try:
            sae = SAE.load_from_disk(directory, device=device)
        except Exception as exc:  # noqa: BLE001
            raise SaeLoadError(f"could not load the SAE in {directory}: {type(exc).__name__}: {exc}") from exc
    sae.eval()
    return sae


def sae_config(
    source: SaeSource,
    *,
    run_dir_resolver: RunDirResolver | None = None,
    settings: Any | None = None,
) -> dict[str, Any]:
    """The SAE's config (``cfg.json`` as sae-lens reads it), without its weights.

    Pretrained SAEs read their config from the hub (``SaeLoadError`` when it is
    unreachable). Used before queueing.
    """
    from sae_lens.loading.pretrained_sae_loaders import (
        handle_config_defaulting,
        load_sae_config_from_huggingface,
    )

    source = _resolve(source, settings=settings)
    if source.kind == "pretrained":
        try:
            return load_sae_config_from_huggingface(source.release, source.sae_id)
        except Exception as exc:  # noqa: BLE001
            raise _pretrained_error(source, exc) from exc
    directory = _check_dir(source.path) if source.kind == "disk" else _run_dir(source, run_dir_resolver)
    try:
        return handle_config_defaulting(json.loads((directory / "cfg.json").read_text()))
    except (OSError, ValueError) as exc:
        raise SaeLoadError(f"could not read {directory / 'cfg.json'}: {exc}") from exc


@dataclass(frozen=True)
class SaeHook:
    """Where an SAE reads the model: ``point`` of block ``layer`` (see ``HOOK_POINTS``)."""

    name: str
    layer: int
    point: str

    @property
    def hidden_state_index(self) -> int | None:
        """The index into ``output_hidden_states`` for residual points, else ``None``.

        ``resid_pre`` of L is ``hidden_states[L]``, ``resid_post`` of L is
        ``hidden_states[L + 1]`` (except after the last block, where
        transformers applies the final norm: use the capture, not this).
        """
        return {"resid_pre": self.layer, "resid_post": self.layer + 1}.get(self.point)


def parse_hook_name(name: str) -> SaeHook:
    """``blocks.{L}.hook_...`` as a ``SaeHook``; ``ValueError`` for hooks the portal cannot read."""
    match = _HOOK_RE.match(name or "")
    if match is None:
        raise ValueError(
            f"the SAE hooks {name!r}; the portal reads blocks.<L>.hook_resid_pre, hook_resid_mid, "
            "hook_resid_post, hook_attn_out or hook_mlp_out"
        )
    return SaeHook(name=name, layer=int(match.group(1)), point=HOOK_POINTS[match.group(2)])


def _hook_name_of(cfg: Mapping[str, Any] | Any) -> str:
    if isinstance(cfg, Mapping):
        metadata = cfg.get("metadata") or {}
        name = metadata.get("hook_name") if isinstance(metadata, Mapping) else None
        return str(name or cfg.get("hook_name") or "")
    return str(getattr(cfg.metadata, "hook_name", None) or "")


def sae_hook(sae_or_cfg: Any) -> SaeHook:
    """The hook of a loaded SAE or of its config dict (``sae_config``)."""
    cfg = sae_or_cfg if isinstance(sae_or_cfg, Mapping) else sae_or_cfg.cfg
    return parse_hook_name(_hook_name_of(cfg))


def sae_hook_layer(sae_or_cfg: Any) -> int:
    """The block index L in the SAE's hook name ``blocks.{L}.hook_...``."""
    return sae_hook(sae_or_cfg).layer


def check_sae_fits(d_in: int, hook_layer: int, d_model: int | None, n_layers: int | None,
                   *, model_name: str = "the model") -> None:
    """``ValueError`` unless an SAE of width ``d_in`` hooked at block ``hook_layer`` fits the model.

    ``None`` for a model figure skips that check (the worker repeats it with the model loaded).
    """
    if d_model is not None and d_in != d_model:
        raise ValueError(f"the SAE reads vectors of size {d_in} but model {model_name} has hidden size {d_model}")
    if n_layers is not None and not 0 <= hook_layer < n_layers:
        raise ValueError(
            f"the SAE hooks layer {hook_layer} but model {model_name} has {n_layers} layers (0..{n_layers - 1})"
        )


def _architecture(sae: Any) -> str:
    return str(sae.cfg.architecture())


def _check_decodable(sae: Any) -> None:
    arch = _architecture(sae)
    if arch not in DECODER_ARCHITECTURES:
        raise ValueError(
            f"SAE architecture {arch!r} is not supported here (supported: {', '.join(sorted(DECODER_ARCHITECTURES))})"
        )
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm in _RUNTIME_NORMS:
        raise ValueError(
            f"the SAE normalises its input at run time ({norm}), so its decoding depends on each input; "
            "such SAEs are not supported"
        )
    if getattr(sae.cfg, "reshape_activations", "none") != "none":
        raise ValueError("SAEs of attention heads (hook_z reshaping) are not supported")


@torch.no_grad()
def _rows_tensor(sae: Any) -> torch.Tensor:
    rows = sae.W_dec.detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        # sae-lens's act_times_W_dec divides activations by the decoder row norms.
        rows = rows / rows.norm(dim=-1, keepdim=True)
    return rows


def decoder_rows(sae: Any) -> np.ndarray:
    """(d_sae, d_in) float32: row i is what one unit of latent i's activation adds to the reconstruction."""
    _check_decodable(sae)
    return _rows_tensor(sae).float().cpu().numpy().astype(np.float32, copy=False)


def decoder_bias(sae: Any) -> np.ndarray:
    """(d_in,) float32: the reconstruction when no latent fires (``b_dec``)."""
    _check_decodable(sae)
    return sae.b_dec.detach().float().cpu().numpy().astype(np.float32, copy=False)
