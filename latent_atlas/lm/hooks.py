"""Capturing the four points of every block in one forward pass.

For block ``l`` the points are (``COMPONENTS`` order):

* ``attn_out``   the attention output before the residual add;
* ``resid_mid``  the residual right after the attention add (input of the
                 post-attention norm, taken by a forward pre-hook);
* ``mlp_out``    the MLP output before the residual add;
* ``resid_post`` the residual after the MLP add (the block's output).

Which modules carry the points is the adapter's business (Gemma 2/3: the
norms after attention and MLP). In a parallel block (GPT-NeoX with
``use_parallel_residual``) the model never forms ``resid_mid``: it is the
derived point ``resid_pre + attn_out``, computed by ``capture_points`` after
the forward (one addition per such block), so every identity below still
holds and ``resid_post == output_hidden_states[l + 1]`` is checked as usual;
for those blocks the first identity holds by definition and the check proves
the other two.

Invariants:

* hooks only store references to tensors the model creates anyway: no copy,
  no device transfer, no dtype change inside a hook, so capturing costs almost
  nothing beyond the forward pass itself;
* hooks are removed when the capture ends, also when the forward raises;
* nothing here needs gradients: forwards run under ``torch.inference_mode``;
* a ``Capture`` holds every tensor on ``lm.device``: for a model spread over
  several devices (``lm.device_map``) the points of blocks elsewhere are moved
  there once after the forward (never inside a hook); for a model on one
  device that is a no-op;
* ``check_hook_points`` proves the points on a real forward pass:
  ``resid_mid == resid_pre + attn_out``, ``resid_post == resid_mid + mlp_out``,
  ``resid_post[l] == output_hidden_states[l + 1]`` for ``l < L - 1`` and
  ``final_norm(resid_post[L - 1]) == output_hidden_states[L]`` (transformers
  applies the final norm to the last hidden state), over real (unpadded) tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from latent_atlas.lm.device import to_module
from latent_atlas.lm.loading import LanguageModel

__all__ = [
    "COMPONENTS",
    "Capture",
    "HookPointMismatch",
    "capture_hooks",
    "capture_points",
    "check_hook_points",
    "default_tolerance",
    "verify_capture",
]

COMPONENTS: tuple[str, ...] = ("attn_out", "resid_mid", "mlp_out", "resid_post")
ATTN_OUT, RESID_MID, MLP_OUT, RESID_POST = range(4)


class HookPointMismatch(Exception):
    """A captured point disagrees with the model's own hidden states."""


def _first(value: Any) -> Tensor:
    """A module's tensor output: the tensor itself or the first item of a tuple."""
    return value[0] if isinstance(value, tuple | list) else value


def _hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _Store:
    """Slots the hooks fill with references: ``points[layer][component]``."""

    def __init__(self, n_layers: int) -> None:
        self.points: list[list[Tensor | None]] = [[None] * 4 for _ in range(n_layers)]
        self.embeddings: Tensor | None = None

    def clear(self) -> None:
        for slots in self.points:
            slots[:] = [None] * 4
        self.embeddings = None


@contextmanager
def capture_hooks(lm: LanguageModel) -> Iterator[_Store]:
    """Register the capture hooks for the duration of the ``with`` block."""
    adapter = lm.adapter
    blocks = adapter.blocks_of(lm.model)
    store = _Store(len(blocks))
    handles: list[RemovableHandle] = []

    def output_hook(layer: int, component: int) -> Callable[[torch.nn.Module, Any, Any], None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            store.points[layer][component] = _first(output)

        return hook

    def input_hook(
        layer: int, component: int
    ) -> Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store.points[layer][component] = _hidden_input(args, kwargs)

        return hook

    def embeddings_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        store.embeddings = _hidden_input(args, kwargs)

    try:
        handles.append(blocks[0].register_forward_pre_hook(embeddings_hook, with_kwargs=True))
        for layer, block in enumerate(blocks):
            handles.append(adapter.attention_of(block).register_forward_hook(output_hook(layer, ATTN_OUT)))
            if not adapter.is_parallel(block):  # parallel: resid_mid is derived by capture_points
                handles.append(
                    adapter.post_attention_norm_of(block).register_forward_pre_hook(
                        input_hook(layer, RESID_MID), with_kwargs=True
                    )
                )
            handles.append(adapter.mlp_of(block).register_forward_hook(output_hook(layer, MLP_OUT)))
            handles.append(block.register_forward_hook(output_hook(layer, RESID_POST)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Capture:
    """References to the four points of every block for one batch.

    ``points[l][c]`` has shape (batch, seq, d_model) in the model's dtype and on
    its device. ``embeddings`` is the residual entering block 0.
    """

    points: list[list[Tensor]]
    embeddings: Tensor
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None

    @property
    def n_layers(self) -> int:
        return len(self.points)

    def resid_pre(self, layer: int) -> Tensor:
        """The residual entering block ``layer``."""
        return self.embeddings if layer == 0 else self.points[layer - 1][RESID_POST]

    def stacked(self) -> Tensor:
        """All points as one tensor of shape (n_layers, 4, batch, seq, d_model) (one copy)."""
        flat = torch.stack([tensor for components in self.points for tensor in components])
        return flat.view(self.n_layers, len(COMPONENTS), *flat.shape[1:])

    def gather(self, mask: Tensor | None = None) -> Tensor:
        """Points at the positions where ``mask`` (batch, seq) is true.

        Returns (n_layers, 4, n, d_model) with rows in (batch, position) order;
        one copy per point, nothing else.
        """
        first = self.embeddings
        batch, seq, d_model = first.shape
        if mask is None:
            index = torch.arange(batch * seq, device=first.device)
        else:
            index = mask.to(first.device).reshape(-1).nonzero().squeeze(1)
        out = torch.empty(
            (self.n_layers, len(COMPONENTS), index.numel(), d_model),
            dtype=first.dtype,
            device=first.device,
        )
        for layer, components in enumerate(self.points):
            for component, tensor in enumerate(components):
                torch.index_select(tensor.reshape(-1, d_model), 0, index, out=out[layer, component])
        return out


def _forward(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    logits: bool,
    hidden_states: bool,
) -> tuple[Tensor | None, tuple[Tensor, ...] | None]:
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": None if attention_mask is None else attention_mask.to(lm.device),
        "use_cache": False,
    }
    if hidden_states:
        kwargs["output_hidden_states"] = True
    if logits:
        out = lm.model(**kwargs)
        return out.logits, (tuple(out.hidden_states) if hidden_states else None)
    # Without logits the unembedding (often the largest matrix) is skipped.
    out = lm.model.base_model(**kwargs)
    return None, (tuple(out.hidden_states) if hidden_states else None)


def capture_points(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    logits: bool = False,
    hidden_states: bool = False,
) -> Capture:
    """Run one forward pass and capture the four points of every block.

    ``logits=True`` runs the full causal LM and keeps its logits; otherwise
    only the base model runs. ``hidden_states=True`` also keeps transformers'
    ``output_hidden_states`` (for ``verify_capture``).
    """
    with torch.inference_mode(), capture_hooks(lm) as store:
        out_logits, out_hidden = _forward(
            lm, input_ids, attention_mask, logits=logits, hidden_states=hidden_states
        )
    if store.embeddings is None:
        raise RuntimeError("the input of block 0 was not reached during the forward pass")
    points: list[list[Tensor]] = []
    blocks = lm.adapter.blocks_of(lm.model)
    for layer, slots in enumerate(store.points):
        attn = slots[ATTN_OUT]
        if lm.adapter.is_parallel(blocks[layer]) and attn is not None:
            resid_pre = store.embeddings if layer == 0 else store.points[layer - 1][RESID_POST]
            if resid_pre is not None:
                slots[RESID_MID] = resid_pre.to(attn.device) + attn
        for component, tensor in enumerate(slots):
            if tensor is None:
                raise RuntimeError(
                    f"hook point {COMPONENTS[component]} of layer {layer} was not reached "
                    "during the forward pass"
                )
        points.append([t.to(lm.device) for t in slots if t is not None])
    if out_hidden is not None:
        out_hidden = tuple(t.to(lm.device) for t in out_hidden)
    if out_logits is not None:
        out_logits = out_logits.to(lm.device)
    return Capture(points=points, embeddings=store.embeddings.to(lm.device), logits=out_logits,
                   hidden_states=out_hidden)


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the hook check: 1e-4 in float32, 2e-2 in half precision."""
    return 1e-4 if dtype == torch.float32 else 2e-2


def verify_capture(
    lm: LanguageModel,
    capture: Capture,
    attention_mask: Tensor | None = None,
    *,
    tol: float | None = None,
) -> float:
    """Check a capture taken with ``hidden_states=True``; return the max abs error.

    Errors are measured in float32 over real tokens only. A check fails when its
    max abs error exceeds ``tol`` times the max abs value of its reference
    (at least 1); the ``HookPointMismatch`` names the layer and the identity.
    """
    if capture.hidden_states is None:
        raise ValueError("verify_capture needs a capture taken with hidden_states=True")
    tolerance = default_tolerance(lm.dtype) if tol is None else tol
    hs = capture.hidden_states
    n_layers = capture.n_layers
    if len(hs) != n_layers + 1:
        raise HookPointMismatch(
            f"the model returned {len(hs)} hidden states for {n_layers} blocks (expected {n_layers + 1})"
        )
    batch, seq, _ = capture.embeddings.shape
    if attention_mask is None:
        keep = torch.ones(batch, seq, dtype=torch.bool, device=capture.embeddings.device)
    else:
        keep = attention_mask.to(capture.embeddings.device).bool()
    final_norm = lm.adapter.final_norm_of(lm.model)
    worst = 0.0

    def compare(actual: Tensor, reference: Tensor, layer: int, what: str) -> None:
        nonlocal worst
        a = actual[keep].float()
        r = reference[keep].float()
        error = float((a - r).abs().max()) if a.numel() else 0.0
        scale = max(1.0, float(r.abs().max()) if r.numel() else 0.0)
        if not error <= tolerance * scale:  # also catches NaN
            raise HookPointMismatch(
                f"hook point check failed at layer {layer} ({what}): max abs error {error:.3g} "
                f"exceeds {tolerance:g} x {scale:.3g}"
            )
        worst = max(worst, error)

    with torch.inference_mode():
        compare(capture.embeddings, hs[0], 0, "block input != output_hidden_states[0]")
        for layer, (attn, mid, mlp, post) in enumerate(capture.points):
            compare(capture.resid_pre(layer) + attn, mid, layer, "resid_pre + attn_out != resid_mid")
            compare(mid + mlp, post, layer, "resid_mid + mlp_out != resid_post")
            if layer < n_layers - 1:
                compare(post, hs[layer + 1], layer, f"resid_post != output_hidden_states[{layer + 1}]")
            else:
                compare(
                    final_norm(to_module(post, final_norm)).to(post.device), hs[layer + 1], layer,
                    f"final_norm(resid_post) != output_hidden_states[{layer + 1}]",
                )
    return worst


def check_hook_points(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    tol: float | None = None,
) -> float:
    """Capture with hidden states on this batch and ``verify_capture`` it."""
    capture = capture_points(lm, input_ids, attention_mask, hidden_states=True)
    return verify_capture(lm, capture, attention_mask, tol=tol)
