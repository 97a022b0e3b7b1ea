"""Running the rest of the model from layer ``l``: inject residual states, get logits.

``run_from_layer(lm, layer, states)`` treats each row of ``states`` (B, d) as
the residual stream entering block ``layer`` (``layer == L`` means after the
last block) of a one-position sequence, runs blocks ``layer .. L-1`` by calling
each block module directly, then the final norm and the unembedding, and
returns the logits (B, V) of that one batch. Invariants:

* the model is never modified: no hooks, no weights, no cache is mutated;
* without a prefix, each row is a sequence of length one at position 0. It
  attends to itself only, so no attention mask is needed, and rows never see
  each other (the batch is a batch of independent sequences). The softmax
  over that single key is exactly 1, so by default attention is computed as
  the value projection through the output projection (query, key, rotary
  embedding and the attention kernel are skipped; ``shortcut=False`` calls
  the block modules instead, and tests hold the two equal);
* with a ``PrefixCache`` (the keys and values of a context's first ``P``
  tokens, computed once by ``prefix_cache``), each row sits at position ``P``
  and attends to the prefix plus itself. The prefix tensors are read, expanded
  to the batch as views and concatenated per layer; nothing is stored, so one
  prefix serves every batch and memory does not grow with the number of
  batches;
* rotary families get the rotary embedding of the row's position from the
  model's own ``rotary_emb`` (per layer type where the model has several, as
  Gemma 3's local and global layers); learned absolute positions (GPT-2) are
  part of the residual stream at the input of block 0, so an injected state
  already carries them and blocks need no position information;
* the prefix reaches a block through the keyword the block's ``forward``
  declares (``ArchitectureAdapter.cache_kwarg``: ``cache`` in transformers
  5.x, ``layer_past`` for GPT-NeoX); a block whose signature lacks it is
  refused (``UnsupportedArchitecture``), because a decoder layer swallows an
  unknown keyword into ``**kwargs`` and would silently drop the context;
* sliding-window layers (Mistral, Phi-3 with a window, Qwen 2/3 where
  configured, Gemma 2/3 local layers) see only the last ``window - 1`` prefix
  positions plus the row itself, exactly as the model's own sliding mask
  (``kv > q - window``) allows; full-attention layers see the whole prefix;
  grouped-query attention needs nothing special (the block repeats its
  key/value heads itself);
* ``compute_dtype`` other than the weights' dtype runs under
  ``torch.autocast`` (matrix products in that dtype, the residual stream and
  the norms in float32 where the model computes them so);
* ``AffineReadout`` / ``affine_readout`` (the exact fast path at ``layer ==
  L``) live in ``latent_atlas.lm.affine`` and are re-exported here;
* ``readout`` applies the final logit soft-cap when the model has one, so
  every logit computed here equals the model's own;
* a model spread over several devices (``lm.device_map``: accelerate places
  whole blocks) is run block by block with the residual, the rotary tables and
  the prefix's keys and values moved to each block's device at the boundary
  (``to_module``); the result is on the last block's (``readout``: the
  unembedding's) device. On one device every move is a no-op.

Supported: every family of ``latent_atlas.lm.adapters.ADAPTERS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from latent_atlas.lm.adapters import ADAPTERS, ArchitectureAdapter, soft_cap, text_config_of
from latent_atlas.lm.affine import AffineReadout, affine_readout
from latent_atlas.lm.device import module_device, to_module
from latent_atlas.lm.errors import UnsupportedArchitecture
from latent_atlas.lm.loading import LanguageModel

__all__ = [
    "AffineReadout",
    "ContextState",
    "PrefixCache",
    "affine_readout",
    "compute_context",
    "prefix_cache",
    "readout",
    "resid_from_layer",
    "run_from_layer",
    "sliding_windows",
]



@dataclass(frozen=True)
class PrefixCache:
    """Keys and values of a context prefix, one (1, kv_heads, P, head_dim) pair per layer."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    length: int

    def to_dtype(self, dtype: torch.dtype) -> PrefixCache:
        """The same prefix with its tensors in ``dtype`` (itself when already so)."""
        if all(k.dtype == dtype for k in self.keys):
            return self
        return PrefixCache(
            keys=tuple(k.to(dtype) for k in self.keys),
            values=tuple(v.to(dtype) for v in self.values),
            length=self.length,
        )


class _PrefixView:
    """What a block's attention sees as ``past_key_values`` for one batch.

    ``update`` returns the prefix's keys and values (expanded to the batch, a
    view) followed by the batch's own, and stores nothing: the prefix is read
    only and the returned tensors die with the layer's attention.
    """

    def __init__(self, prefix: PrefixCache, windows: Sequence[int | None]) -> None:
        self.prefix = prefix
        self.windows = tuple(windows)

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        keys = self.prefix.keys[layer_idx]
        values = self.prefix.values[layer_idx]
        window = self.windows[layer_idx]
        if window is not None:  # the row at position P sees positions > P - window
            keep = max(window - 1, 0)
            keys = keys[:, :, keys.shape[2] - min(keep, keys.shape[2]) :]
            values = values[:, :, values.shape[2] - min(keep, values.shape[2]) :]
        batch = key_states.shape[0]
        keys = keys.to(device=key_states.device, dtype=key_states.dtype).expand(batch, -1, -1, -1)
        values = values.to(device=value_states.device, dtype=value_states.dtype).expand(batch, -1, -1, -1)
        return torch.cat([keys, key_states], dim=2), torch.cat([values, value_states], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix.length


def _check_family(lm: LanguageModel) -> None:
    if lm.adapter.family not in ADAPTERS:
        raise UnsupportedArchitecture(
            f"running from a layer is implemented for {', '.join(ADAPTERS)}, "
            f"not for the {lm.adapter.family} family"
        )


def sliding_windows(lm: LanguageModel) -> tuple[int | None, ...]:
    """Per layer: the sliding attention window, or ``None`` for full attention.

    From the config: ``sliding_window`` with ``layer_types`` where the model
    mixes layer types (Qwen 2/3, Gemma 2/3), for every layer otherwise
    (Mistral, Phi-3); ``None`` everywhere without a window.
    """
    config = text_config_of(lm.model)
    window = getattr(config, "sliding_window", None)
    if window is None:
        return (None,) * lm.n_layers
    types = getattr(config, "layer_types", None)
    if types is None:
        return (int(window),) * lm.n_layers
    return tuple(int(window) if kind == "sliding_attention" else None for kind in types[: lm.n_layers])


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


@contextmanager
def _autocast(lm: LanguageModel, compute_dtype: torch.dtype | None) -> Iterator[None]:
    if compute_dtype is None or compute_dtype == lm.dtype:
        yield
        return
    if lm.dtype != torch.float32:
        raise ValueError(
            f"cannot compute in {compute_dtype} with a model loaded in {lm.dtype}; "
            "load the model in float32 to choose the compute dtype"
        )
    with torch.autocast(device_type=lm.device.type, dtype=compute_dtype):
        yield


def prefix_cache(
    lm: LanguageModel, input_ids: Sequence[int] | Tensor, *, compute_dtype: torch.dtype | None = None
) -> PrefixCache | None:
    """Per-layer keys and values of ``input_ids`` (one sequence); ``None`` for an empty prefix."""
    _check_family(lm)
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    if ids.shape[1] == 0:
        return None
    with torch.inference_mode(), _autocast(lm, compute_dtype):
        out = lm.model(input_ids=ids.to(lm.device), use_cache=True, logits_to_keep=1)
    cache = out.cache  # transformers 5.x; ``past_key_values`` is a deprecated alias until 5.40
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != lm.n_layers:
        raise RuntimeError("the model did not return a per-layer key/value cache")
    keys = tuple(layer.keys for layer in layers)
    values = tuple(layer.values for layer in layers)
    length = int(ids.shape[1])
    # A sliding layer's cache keeps only the positions its window can still see.
    needed = [length if w is None else min(length, w - 1) for w in sliding_windows(lm)]
    if any(k is None or k.shape[-2] < n for k, n in zip(keys, needed, strict=True)):
        raise RuntimeError("the model's key/value cache does not cover the whole prefix")
    return PrefixCache(keys=keys, values=values, length=int(ids.shape[1]))


def _block_kwargs(lm: LanguageModel, hidden: Tensor, position: int) -> list[dict[str, Any]]:
    """Per block: the keyword arguments it needs for a row at ``position`` (rotary embeddings)."""
    if lm.adapter.position_embedding is not None:  # learned positions: already in the residual
        return [{} for _ in range(lm.n_layers)]
    rotary = lm.adapter.rotary_of(lm.model)
    if rotary is None:
        raise UnsupportedArchitecture(f"a {lm.adapter.family} model without rotary_emb")
    hidden = to_module(hidden, rotary)  # its tables are computed where its buffers are
    position_ids = torch.full((1, 1), position, dtype=torch.long, device=hidden.device)
    if "layer_type" not in inspect.signature(rotary.forward).parameters:
        shared = {"position_embeddings": rotary(hidden, position_ids), "position_ids": position_ids}
        return [shared] * lm.n_layers
    types = list(text_config_of(lm.model).layer_types)  # one rotary per layer type (Gemma 3)
    tables = {kind: rotary(hidden, position_ids, kind) for kind in set(types)}
    return [{"position_embeddings": tables[kind], "position_ids": position_ids} for kind in types]


def _to_device(extra: dict[str, Any], device: torch.device | None) -> dict[str, Any]:
    """A block's keyword arguments with their tensors (and tuples of tensors) on ``device``."""
    if device is None:
        return extra

    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device)
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        return value

    return {name: move(value) for name, value in extra.items()}


def _cache_keyword(adapter: ArchitectureAdapter, block: nn.Module) -> str:
    """The keyword through which ``block`` takes its key/value cache; refused when it has none."""
    name = adapter.cache_kwarg
    if name not in inspect.signature(block.forward).parameters:
        raise UnsupportedArchitecture(
            f"{type(block).__name__}.forward has no {name!r} parameter: a context would be silently "
            "ignored by this transformers version (see the supported range in pyproject.toml)"
        )
    return name


def _lone_position_values(attn: nn.Module, x: Tensor) -> Tensor:
    """The value vectors (B, heads * head_dim) of rows ``x``, one kv head per query head."""
    if hasattr(attn, "v_proj"):  # Llama, Mistral, Qwen 2/3, Gemma 1/2/3
        value = attn.v_proj(x)
    elif hasattr(attn, "qkv_proj"):  # Phi-3: one fused [query | key | value] projection
        start = (attn.config.num_attention_heads + attn.num_key_value_heads) * attn.head_dim
        proj = attn.qkv_proj
        bias = None if proj.bias is None else proj.bias[start:]
        value = nn.functional.linear(x, proj.weight[start:], bias)
    elif hasattr(attn, "query_key_value"):  # GPT-NeoX: per head [query | key | value]
        rows = x.shape[0]
        qkv = attn.query_key_value(x).view(rows, -1, 3 * attn.head_size)
        return qkv[..., 2 * attn.head_size :].reshape(rows, -1)
    else:
        raise UnsupportedArchitecture(f"no value projection known for {type(attn).__name__}")
    groups = int(getattr(attn, "num_key_value_groups", 1))
    if groups > 1:  # head h reads kv head h // groups, as transformers' repeat_kv does
        rows = value.shape[0]
        value = value.view(rows, -1, attn.head_dim).repeat_interleave(groups, dim=1).reshape(rows, -1)
    return value


def _rotary_single_position(adapter: ArchitectureAdapter, block: nn.Module, hidden: Tensor) -> Tensor:
    """A rotary-family block on rows that are one-position sequences without context.

    Every rotary family here names its pre-attention norm ``input_layernorm``;
    the adapter says where the points are (norms after attention/MLP, parallel).
    """
    attn = adapter.attention_module_of(block)
    output = attn.o_proj if hasattr(attn, "o_proj") else attn.dense
    attn_out = output(_lone_position_values(attn, block.input_layernorm(hidden)))
    if adapter.attention_module is not None:  # Gemma 2/3: the norm after the attention
        attn_out = adapter.attention_of(block)(attn_out)
    if adapter.is_parallel(block):  # GPT-NeoX: the MLP reads resid_pre too
        mlp_out = adapter.mlp_of(block)(block.post_attention_layernorm(hidden))
        return mlp_out + attn_out + hidden
    hidden = hidden + attn_out
    mlp_out = adapter.mlp_module_of(block)(adapter.post_attention_norm_of(block)(hidden))
    if adapter.mlp_module is not None:
        mlp_out = adapter.mlp_of(block)(mlp_out)
    return hidden + mlp_out


def _gpt2_single_position(block: nn.Module, hidden: Tensor) -> Tensor:
    """A GPT-2 block on rows that are one-position sequences without context."""
    attn = block.attn
    width = hidden.shape[-1]
    c_attn = attn.c_attn  # Conv1D: x @ weight + bias, weight (d, 3d) = [query | key | value]
    value = torch.addmm(c_attn.bias[2 * width :], block.ln_1(hidden), c_attn.weight[:, 2 * width :])
    hidden = hidden + attn.resid_dropout(attn.c_proj(value))
    return hidden + block.mlp(block.ln_2(hidden))


# One position with no context attends to itself only: the softmax over a single key is
# exactly 1 (also with Gemma 2's attention soft-cap), so attention returns the value. These skip
# the query, key, rotary embedding and attention kernel (about 1/8 of a Llama block's
# products); tests compare them with the blocks for every family.
def _single_position(adapter: ArchitectureAdapter, block: nn.Module, hidden: Tensor) -> Tensor:
    if adapter.family == "gpt2":
        return _gpt2_single_position(block, hidden)
    return _rotary_single_position(adapter, block, hidden)


def _check_layer(lm: LanguageModel, layer: int) -> None:
    if not 0 <= layer <= lm.n_layers:
        raise ValueError(f"layer {layer} is out of range for model {lm.name} (0..{lm.n_layers})")


def resid_from_layer(
    lm: LanguageModel,
    layer: int,
    states: Tensor,
    *,
    prefix: PrefixCache | None = None,
    compute_dtype: torch.dtype | None = None,
    shortcut: bool = True,
) -> Tensor:
    """The residual after the last block (before the final norm) for rows entering ``layer``.

    ``states`` is (B, d); the result is (B, d) in the dtype the blocks produce.
    Without a prefix and with ``shortcut``, each block's attention is computed
    as what it is for a lone position, its value (see ``_SINGLE_POSITION``);
    ``shortcut=False`` calls the block modules themselves.
    """
    _check_family(lm)
    _check_layer(lm, layer)
    if states.ndim != 2 or states.shape[1] != lm.d_model:
        raise ValueError(f"states must have shape (B, {lm.d_model}), got {tuple(states.shape)}")
    hidden = states.to(device=lm.device, dtype=lm.dtype).unsqueeze(1)
    blocks = lm.adapter.blocks_of(lm.model)[layer:]
    if not blocks:
        return hidden[:, 0]
    if prefix is None and shortcut:
        flat = hidden[:, 0]
        with torch.inference_mode(), _autocast(lm, compute_dtype):
            for block in blocks:
                flat = _single_position(lm.adapter, block, to_module(flat, block))
        return flat
    position = 0 if prefix is None else prefix.length
    view = None if prefix is None else _PrefixView(prefix, sliding_windows(lm))
    with torch.inference_mode(), _autocast(lm, compute_dtype):
        kwargs = _block_kwargs(lm, hidden, position)[layer:]
        for block, extra in zip(blocks, kwargs, strict=True):
            cache = {} if view is None else {_cache_keyword(lm.adapter, block): view}
            extra = _to_device(extra, module_device(block))
            hidden = _first(block(to_module(hidden, block), attention_mask=None, **cache, **extra))
    return hidden[:, 0]


def readout(lm: LanguageModel, resid: Tensor, *, compute_dtype: torch.dtype | None = None) -> Tensor:
    """Final norm, unembedding (and the final soft-cap, if any) of states (B, d) -> logits (B, V)."""
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    with torch.inference_mode(), _autocast(lm, compute_dtype):
        normed = norm(to_module(resid.to(dtype=lm.dtype), norm))
        logits = unembed(to_module(normed, unembed))
        return soft_cap(logits, lm.adapter.softcap_of(lm.model))


def run_from_layer(
    lm: LanguageModel,
    layer: int,
    states: Tensor,
    *,
    prefix: PrefixCache | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Logits (B, V) of rows (B, d) injected as the residual entering block ``layer``."""
    resid = resid_from_layer(lm, layer, states, prefix=prefix, compute_dtype=compute_dtype)
    return readout(lm, resid, compute_dtype=compute_dtype)


@dataclass(frozen=True)
class ContextState:
    """A context prompt prepared for injection at its last position."""

    input_ids: tuple[int, ...]
    prefix: PrefixCache | None  # keys/values of all tokens but the last

    @property
    def position(self) -> int:
        return len(self.input_ids) - 1


def compute_context(
    lm: LanguageModel, input_ids: Sequence[int], *, compute_dtype: torch.dtype | None = None
) -> ContextState:
    """Keys and values of every token of ``input_ids`` but the last, where the grid point goes."""
    ids = tuple(int(i) for i in input_ids)
    if not ids:
        raise ValueError("the context has no tokens")
    return ContextState(input_ids=ids, prefix=prefix_cache(lm, ids[:-1], compute_dtype=compute_dtype))
