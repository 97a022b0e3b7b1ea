"""One eager forward + one backward that every anatomy view reads from.

``trace(lm, ids, target, foil)`` runs the model once with eager attention
(``output_attentions`` needs it: SDPA and flash kernels never form the
pattern), the token embeddings as a leaf that requires a gradient, hooks on
the block points and on the MLP's down projection (``DOWN_PROJECTIONS``: every
supported family), then back-propagates the saliency score. Invariants:

* the points are the adapters' (``latent_atlas.lm.adapters``): for a parallel
  block (GPT-NeoX) ``resid_mid`` is derived as ``resid_pre + attn_out``; for
  Gemma 2/3 ``attn_out`` and ``mlp_out`` are the outputs of the norms after
  attention and MLP (what is added to the residual);

* the model's attention implementation is switched to ``eager`` only inside
  ``eager_attention`` and restored afterwards, also when the forward raises
  (workers cache models, so a run must leave the model as it found it);
* the model's parameters never get gradients (``requires_grad`` stays off);
  only the input embeddings do;
* every tensor in the returned ``Trace`` is detached, float32, on the CPU
  except ``attentions`` (left on the model's device, one (H, T, T) per layer,
  so the caller converts them layer by layer);
* ``score = logits[-1, target] - logits[-1, foil]`` (no foil: minus nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from latent_atlas.lm.loading import LanguageModel

__all__ = ["DOWN_PROJECTIONS", "Trace", "down_projection", "eager_attention", "score_of", "trace"]

# The MLP's last linear map per family (a child of the adapter's ``mlp_module``, the MLP itself even where
# the ``mlp`` point is a norm after it: Gemma 2/3): its input is the neuron activations (for gated MLPs,
# act(gate) * up; Phi-3's fused gate_up_proj feeds the same down_proj). Every family of ADAPTERS is listed
# (tests/unit/anatomy/test_families.py runs each).
DOWN_PROJECTIONS: dict[str, str] = {
    "gpt2": "c_proj",
    "gpt_neox": "dense_4h_to_h",
    **{family: "down_proj" for family in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2",
                                          "gemma3", "gemma3_multimodal")},
}


def down_projection(lm: LanguageModel, block: torch.nn.Module) -> torch.nn.Module:
    """The MLP's down projection in ``block``; ``ValueError`` naming the family when none is known."""
    name = DOWN_PROJECTIONS.get(lm.adapter.family)
    module = getattr(lm.adapter.mlp_module_of(block), name, None) if name is not None else None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"no MLP down projection is known for family {lm.adapter.family!r}")
    return module


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Eager attention inside the block (patterns available), the previous kind after it."""
    previous = getattr(model.config, "_attn_implementation", None) or "eager"
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@dataclass
class Trace:
    """What one traced forward + backward gives (shapes for T tokens, L layers, H heads)."""

    embeddings: Tensor        # (T, d) token embeddings (the saliency input)
    gradient: Tensor          # (T, d) d score / d embeddings
    block_input: Tensor       # (T, d) residual entering block 0 (embeddings + positions)
    resid_mid: list[Tensor]   # L x (T, d) after the attention add
    resid_post: list[Tensor]  # L x (T, d) after the MLP add (the block output)
    attn_out: list[Tensor]    # L x (T, d) attention output before the add
    mlp_out: list[Tensor]     # L x (T, d) MLP output before the add
    neurons: list[Tensor]     # L x (T, n_mlp) MLP neuron activations (input of the down projection)
    attentions: list[Tensor]  # L x (H, T, T) attention patterns, rows sum to 1
    logits: Tensor            # (T, V) float32
    score: float
    target: int
    foil: int | None


def score_of(logits: Tensor, target: int, foil: int | None) -> Tensor:
    """The saliency score of the last position: a target logit, minus the foil's when given."""
    last = logits[..., -1, :]
    score = last[..., target]
    return score - last[..., foil] if foil is not None else score


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def trace(lm: LanguageModel, ids: list[int], target: int | None = None, foil: int | None = None) -> Trace:
    """Run the traced forward and backward (see the module docstring). ``target`` None: the prediction."""
    model = lm.model
    blocks = lm.adapter.blocks_of(model)
    n = len(blocks)
    slots: dict[str, list[Any]] = {k: [None] * n for k in ("pre", "mid", "post", "attn", "mlp", "neurons")}
    parallel = [lm.adapter.is_parallel(block) for block in blocks]
    handles: list[RemovableHandle] = []

    def out_hook(key: str, layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            slots[key][layer] = _first(output).detach()
        return hook

    def in_hook(key: str, layer: int):
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            value = args[0] if args else kwargs["hidden_states"]
            slots[key][layer] = value.detach()
        return hook

    input_ids = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        embeddings = lm.adapter.token_embedding_of(model)(input_ids)
    leaf = embeddings.detach().clone().requires_grad_(True)
    try:
        for layer, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(in_hook("pre", layer), with_kwargs=True))
            handles.append(lm.adapter.attention_of(block).register_forward_hook(out_hook("attn", layer)))
            if not parallel[layer]:  # a parallel block never forms resid_mid: derived below
                handles.append(lm.adapter.post_attention_norm_of(block).register_forward_pre_hook(
                    in_hook("mid", layer), with_kwargs=True))
            handles.append(lm.adapter.mlp_of(block).register_forward_hook(out_hook("mlp", layer)))
            handles.append(block.register_forward_hook(out_hook("post", layer)))
            handles.append(down_projection(lm, block).register_forward_pre_hook(
                in_hook("neurons", layer), with_kwargs=True))
        with eager_attention(model), torch.enable_grad():
            out = model(inputs_embeds=leaf, output_attentions=True, use_cache=False)
            logits = out.logits[0]
            if target is None:
                target = int(logits[-1].argmax())
            score = score_of(logits, target, foil)
            (gradient,) = torch.autograd.grad(score, leaf)
    finally:
        for handle in handles:
            handle.remove()
    attentions = [a.detach()[0] for a in out.attentions]
    if len(attentions) != n or any(a is None for a in attentions):
        raise RuntimeError("the model did not return attention patterns (eager attention needed)")

    for layer in range(n):
        if parallel[layer]:  # the adapters' definition: resid_mid = resid_pre + attn_out
            slots["mid"][layer] = slots["pre"][layer] + slots["attn"][layer]

    def cpu(values: list[Tensor]) -> list[Tensor]:
        return [v[0].float().cpu() for v in values]

    return Trace(
        embeddings=leaf.detach()[0].float().cpu(),
        gradient=gradient[0].float().cpu(),
        block_input=slots["pre"][0][0].float().cpu(),
        resid_mid=cpu(slots["mid"]),
        resid_post=cpu(slots["post"]),
        attn_out=cpu(slots["attn"]),
        mlp_out=cpu(slots["mlp"]),
        neurons=cpu(slots["neurons"]),
        attentions=attentions,
        logits=logits.detach().float().cpu(),
        score=float(score.detach()),
        target=int(target),
        foil=foil,
    )
