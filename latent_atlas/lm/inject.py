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
  model's own ``rotary_emb``; learned absolute positions (GPT-2) are part of
  the residual stream at the input of block 0, so an injected state already
  carries them and blocks need no position information;
* ``compute_dtype`` other than the weights' dtype runs under
  ``torch.autocast`` (matrix products in that dtype, the residual stream and
  the norms in float32 where the model computes them so);
* ``AffineReadout`` is the exact fast path at ``layer == L``: for states on an
  affine plane ``h = c + x u + y v`` the final norm (RMSNorm or LayerNorm) is
  an affine map divided by one scalar per row, so the logits are
  ``(a + x b + y e) / s(x, y) + bias`` with three unembeddings ``a, b, e``
  computed once; only a rank-3 product per row remains.

Only the families with a tested block call are supported (GPT-2, Llama).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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
]

_SUPPORTED = ("gpt2", "llama")


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

    def __init__(self, prefix: PrefixCache) -> None:
        self.prefix = prefix

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        keys = self.prefix.keys[layer_idx]
        values = self.prefix.values[layer_idx]
        batch = key_states.shape[0]
        keys = keys.to(key_states.dtype).expand(batch, -1, -1, -1)
        values = values.to(value_states.dtype).expand(batch, -1, -1, -1)
        return torch.cat([keys, key_states], dim=2), torch.cat([values, value_states], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix.length


def _check_family(lm: LanguageModel) -> None:
    if lm.adapter.family not in _SUPPORTED:
        raise UnsupportedArchitecture(
            f"running from a layer is implemented for {', '.join(_SUPPORTED)}, "
            f"not for the {lm.adapter.family} family"
        )


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
    cache = out.past_key_values
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != lm.n_layers:
        raise RuntimeError("the model did not return a per-layer key/value cache")
    keys = tuple(layer.keys for layer in layers)
    values = tuple(layer.values for layer in layers)
    if any(k is None or k.shape[-2] != ids.shape[1] for k in keys):
        raise RuntimeError("the model's key/value cache does not cover the whole prefix")
    return PrefixCache(keys=keys, values=values, length=int(ids.shape[1]))


def _block_kwargs(lm: LanguageModel, hidden: Tensor, position: int) -> dict[str, Any]:
    """Keyword arguments every block of this family needs for a row at ``position``."""
    rotary = getattr(lm.model.base_model, "rotary_emb", None)
    if lm.adapter.family == "llama":
        if rotary is None:
            raise UnsupportedArchitecture("a Llama-family model without rotary_emb")
        position_ids = torch.full((1, 1), position, dtype=torch.long, device=hidden.device)
        return {"position_embeddings": rotary(hidden, position_ids), "position_ids": position_ids}
    return {}


def _llama_single_position(block: nn.Module, hidden: Tensor) -> Tensor:
    """A Llama decoder layer on rows that are one-position sequences without context."""
    attn = block.self_attn
    value = attn.v_proj(block.input_layernorm(hidden))  # (B, kv_heads * head_dim)
    groups = int(attn.num_key_value_groups)
    if groups > 1:  # head h reads kv head h // groups, as transformers' repeat_kv does
        rows = value.shape[0]
        value = value.view(rows, -1, attn.head_dim).repeat_interleave(groups, dim=1).reshape(rows, -1)
    hidden = hidden + attn.o_proj(value)
    return hidden + block.mlp(block.post_attention_layernorm(hidden))


def _gpt2_single_position(block: nn.Module, hidden: Tensor) -> Tensor:
    """A GPT-2 block on rows that are one-position sequences without context."""
    attn = block.attn
    width = hidden.shape[-1]
    c_attn = attn.c_attn  # Conv1D: x @ weight + bias, weight (d, 3d) = [query | key | value]
    value = torch.addmm(c_attn.bias[2 * width :], block.ln_1(hidden), c_attn.weight[:, 2 * width :])
    hidden = hidden + attn.resid_dropout(attn.c_proj(value))
    return hidden + block.mlp(block.ln_2(hidden))


# One position with no context attends to itself only: the softmax over a single key is
# exactly 1, so attention returns the value. These skip the query, key, rotary embedding and
# attention kernel (about 1/8 of a Llama block's products); tests compare them with the blocks.
_SINGLE_POSITION: dict[str, Any] = {"llama": _llama_single_position, "gpt2": _gpt2_single_position}


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
        single = _SINGLE_POSITION[lm.adapter.family]
        flat = hidden[:, 0]
        with torch.inference_mode(), _autocast(lm, compute_dtype):
            for block in blocks:
                flat = single(block, flat)
        return flat
    position = 0 if prefix is None else prefix.length
    view = None if prefix is None else _PrefixView(prefix)
    with torch.inference_mode(), _autocast(lm, compute_dtype):
        kwargs = _block_kwargs(lm, hidden, position)
        for block in blocks:
            hidden = _first(
                block(hidden, attention_mask=None, past_key_values=view, use_cache=False, **kwargs)
            )
    return hidden[:, 0]


def readout(lm: LanguageModel, resid: Tensor, *, compute_dtype: torch.dtype | None = None) -> Tensor:
    """Final norm and unembedding of residual states (B, d) -> logits (B, V)."""
    norm = lm.adapter.final_norm_of(lm.model)
    unembed = lm.adapter.unembedding_of(lm.model)
    with torch.inference_mode(), _autocast(lm, compute_dtype):
        return unembed(norm(resid.to(device=lm.device, dtype=lm.dtype)))


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


# --- The exact fast path at layer L -------------------------------------------------------------


@dataclass(frozen=True)
class _NormSpec:
    kind: str  # "rms" | "layer"
    gain: Tensor | None  # (d,) float64
    shift: Tensor | None  # (d,) float64 (LayerNorm bias)
    eps: float


def _norm_spec(norm: nn.Module, d: int) -> _NormSpec | None:
    """What the final norm computes, when it is a plain RMSNorm or LayerNorm over ``d``."""
    weight = getattr(norm, "weight", None)
    gain = None if weight is None else weight.detach().double().reshape(-1)
    if gain is not None and gain.numel() != d:
        return None
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (d,):
            return None
        shift = None if norm.bias is None else norm.bias.detach().double().reshape(-1)
        return _NormSpec("layer", gain, shift, float(norm.eps))
    if type(norm).__name__.endswith("RMSNorm"):
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            eps = getattr(norm, "eps", None)
        if eps is None:
            return None
        return _NormSpec("rms", gain, None, float(eps))
    return None


@dataclass(frozen=True)
class AffineReadout:
    """Logits of ``h = c + x u + y v`` through final norm + unembedding, without a d x V product.

    ``basis`` (3, V) float32 holds the unembeddings of the gain-scaled (and,
    for LayerNorm, centred) ``c, u, v``; ``bias`` (V,) float32 the unembedding
    bias plus the unembedding of the LayerNorm shift; ``gram`` (3, 3) float64
    the Gram matrix of the centred ``c, u, v`` that gives the per-row mean
    square ``[1, x, y] G [1, x, y]^T / d`` exactly.
    """

    basis: Tensor
    bias: Tensor
    gram: Tensor
    eps: float
    d_model: int
    kind: str

    def scale(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-row divisor ``sqrt(mean square + eps)`` (float64, on the CPU)."""
        x = x.double().cpu()
        y = y.double().cpu()
        g = self.gram
        ms = (
            g[0, 0] + 2 * x * g[0, 1] + 2 * y * g[0, 2]
            + x * x * g[1, 1] + 2 * x * y * g[1, 2] + y * y * g[2, 2]
        ) / self.d_model
        return torch.sqrt(ms.clamp_min(0.0) + self.eps)

    def coefficients(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, 3) float32 rows ``[1, x, y] / s(x, y)`` on the basis' device."""
        inv = 1.0 / self.scale(x, y)
        coef = torch.stack([inv, x.double().cpu() * inv, y.double().cpu() * inv], dim=1)
        return coef.to(device=self.basis.device, dtype=torch.float32)

    def logits(self, x: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
        """Logits (B, V) float32 for grid coordinates ``x, y`` (B,)."""
        coef = self.coefficients(x, y)
        if out is None:
            return torch.addmm(self.bias, coef, self.basis)
        return torch.addmm(self.bias, coef, self.basis, out=out)


def affine_readout(
    lm: LanguageModel, center: Tensor, u: Tensor, v: Tensor
) -> AffineReadout | None:
    """The fast path for the plane ``center + x u + y v`` at layer L; ``None`` if the norm is unknown.

    The caller should still compare a few rows with ``run_from_layer`` (an
    unknown norm subclass may compute something else under the same name).
    """
    d = lm.d_model
    spec = _norm_spec(lm.adapter.final_norm_of(lm.model), d)
    unembed = lm.adapter.unembedding_of(lm.model)
    weight = getattr(unembed, "weight", None)
    if spec is None or not isinstance(unembed, nn.Linear) or weight is None:
        return None
    vectors = torch.stack([torch.as_tensor(t).double().cpu().reshape(-1) for t in (center, u, v)])
    if vectors.shape[1] != d:
        raise ValueError(f"plane vectors must have width {d}")
    if spec.kind == "layer":
        vectors = vectors - vectors.mean(dim=1, keepdim=True)
    gram = vectors @ vectors.T
    scaled = vectors if spec.gain is None else vectors * spec.gain.cpu()
    w = weight.detach()
    with torch.inference_mode():
        basis = (scaled.to(device=w.device, dtype=torch.float32) @ w.float().T).contiguous()
        bias = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
        if spec.shift is not None:
            bias += spec.shift.to(device=w.device, dtype=torch.float32) @ w.float().T
        if unembed.bias is not None:
            bias += unembed.bias.detach().float()
    if not torch.isfinite(basis).all() or not math.isfinite(float(gram.abs().max())):
        return None
    return AffineReadout(
        basis=basis, bias=bias, gram=gram, eps=spec.eps, d_model=d, kind=spec.kind
    )
