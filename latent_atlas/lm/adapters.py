"""Architecture adapters: where the hook points of each model family live.

An adapter names modules by dotted attribute paths (readable, JSON-safe), and
resolves them on a loaded model. Invariants a new family must keep (the hook
check in ``latent_atlas.lm.hooks`` proves them on a real forward pass):

* ``attention`` (relative to a block) outputs what the attention adds to the
  residual stream (a tensor, or a tuple whose first item is that tensor). For
  Gemma 2/3 that is the output of the norm *after* the attention
  (``post_attention_layernorm``), so ``attention`` names that norm and
  ``attention_module`` the attention itself;
* ``post_attention_norm`` (relative to a block) receives, as its first input,
  the residual stream right after the attention add (``resid_mid``);
* ``mlp`` (relative to a block) outputs what the MLP adds to the residual
  stream (Gemma 2/3: the output of ``post_feedforward_layernorm``; then
  ``mlp_module`` names the MLP itself);
* a block's output (a tensor or a tuple whose first item is the tensor) is the
  residual after the MLP add (``resid_post``);
* ``final_norm`` is applied to the last block's output before ``unembedding``.

Parallel blocks (GPT-NeoX/Pythia with ``use_parallel_residual``, named by
``parallel_flag``, a boolean attribute of each block): attention and MLP both
read ``resid_pre`` and ``resid_post = resid_pre + attn_out + mlp_out``. The
model never forms ``resid_mid``; it is *defined* as ``resid_pre + attn_out``
(a derived point, computed by the capture), so ``resid_mid + mlp_out ==
resid_post`` holds as for sequential blocks. ``post_attention_norm_of`` refuses
a parallel block: its input there is ``resid_pre``, not ``resid_mid``.

Other declared facts: ``norm_weight_offset`` is 1 where RMSNorm multiplies by
``(1 + w)`` (Gemma), 0 otherwise; ``logit_softcap`` names the config attribute
of the final logit soft-capping ``cap * tanh(z / cap)`` (Gemma 2/3), applied by
``soft_cap`` wherever logits are computed from a residual state;
``cache_kwarg`` is the keyword through which a block receives its key/value
cache (transformers 5.x: ``cache``; GPT-NeoX: ``layer_past``). Gemma scales the
token embedding by sqrt(d_model) inside its embedding module
(``ScaledWordEmbedding.forward``), so ``token_embedding_of(model)(ids)`` is
already what enters block 0; its ``.weight`` is unscaled (cosines unaffected).

Multimodal Gemma 3 (``Gemma3ForConditionalGeneration``, the 4B-27B
checkpoints) is read as its text model: the blocks, norms and rotary table
live under ``model.language_model`` and the text settings in
``config.text_config`` (``text_config_of``); images are never fed.

Only families whose adapters are tested are listed in ``ADAPTERS``
(``tests/unit/test_families.py`` runs every one on a tiny random model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latent_atlas.lm.errors import UnsupportedArchitecture

__all__ = ["ADAPTERS", "ArchitectureAdapter", "GPT2", "LLAMA", "adapter_for", "soft_cap", "text_config_of"]


def _resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{path!r} is not a module")
    return module


def text_config_of(model: nn.Module) -> object:
    """The config that describes the text decoder (``config.text_config`` for a multimodal model)."""
    return model.config.get_text_config()


def soft_cap(logits: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(logits / cap)`` (a new tensor), or ``logits`` itself when ``cap`` is ``None``."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths of one family; model-level paths start at the ``*ForCausalLM`` model."""

    family: str
    blocks: str
    attention: str
    post_attention_norm: str
    mlp: str
    final_norm: str
    unembedding: str
    token_embedding: str
    position_embedding: str | None = None
    attention_module: str | None = None  # the attention itself, when ``attention`` is a norm after it
    mlp_module: str | None = None  # the MLP itself, when ``mlp`` is a norm after it
    parallel_flag: str | None = None  # block attribute: attention and MLP both read resid_pre
    norm_weight_offset: float = 0.0  # RMSNorm gain is offset + weight
    logit_softcap: str | None = None  # config attribute of the final logit soft-capping
    cache_kwarg: str = "cache"  # keyword through which a block takes its key/value cache
    rotary: str | None = None  # model-level path of the rotary table (default: base_model.rotary_emb)

    def blocks_of(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in order."""
        return list(_resolve(model, self.blocks))  # type: ignore[arg-type]

    def attention_of(self, block: nn.Module) -> nn.Module:
        """The module whose output is ``attn_out`` (what the attention adds to the residual)."""
        return _resolve(block, self.attention)

    def attention_module_of(self, block: nn.Module) -> nn.Module:
        """The attention module itself (its projections live here)."""
        return _resolve(block, self.attention_module or self.attention)

    def is_parallel(self, block: nn.Module) -> bool:
        """Whether attention and MLP of ``block`` both read ``resid_pre``."""
        return self.parallel_flag is not None and bool(getattr(block, self.parallel_flag))

    def post_attention_norm_of(self, block: nn.Module) -> nn.Module:
        """The module whose first input is ``resid_mid``; refused for a parallel block."""
        if self.is_parallel(block):
            raise UnsupportedArchitecture(
                f"a parallel {self.family} block never forms resid_mid: derive it as resid_pre + attn_out"
            )
        return _resolve(block, self.post_attention_norm)

    def mlp_of(self, block: nn.Module) -> nn.Module:
        """The module whose output is ``mlp_out`` (what the MLP adds to the residual)."""
        return _resolve(block, self.mlp)

    def mlp_module_of(self, block: nn.Module) -> nn.Module:
        """The MLP module itself (its projections live here)."""
        return _resolve(block, self.mlp_module or self.mlp)

    def final_norm_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.final_norm)

    def unembedding_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.unembedding)

    def token_embedding_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.token_embedding)

    def position_embedding_of(self, model: nn.Module) -> nn.Module | None:
        """Learned position embeddings, or ``None`` (rotary families)."""
        return None if self.position_embedding is None else _resolve(model, self.position_embedding)

    def softcap_of(self, model: nn.Module) -> float | None:
        """The final logit soft-cap of this model (``None``: logits are not capped)."""
        if self.logit_softcap is None:
            return None
        value = getattr(text_config_of(model), self.logit_softcap, None)
        return None if value is None else float(value)

    def rotary_of(self, model: nn.Module) -> nn.Module | None:
        """The rotary embedding table, or ``None`` (learned positions)."""
        if self.rotary is not None:
            return _resolve(model, self.rotary)
        return getattr(model.base_model, "rotary_emb", None)

    def validate(self, model: nn.Module) -> None:
        """Resolve every path once; ``UnsupportedArchitecture`` if one is missing."""
        try:
            blocks = self.blocks_of(model)
            if not blocks:
                raise TypeError("the model has no blocks")
            for block in blocks:
                self.attention_of(block)
                self.attention_module_of(block)
                if not self.is_parallel(block):
                    self.post_attention_norm_of(block)
                self.mlp_of(block)
                self.mlp_module_of(block)
            self.final_norm_of(model)
            self.unembedding_of(model)
            self.token_embedding_of(model)
            self.position_embedding_of(model)
        except (AttributeError, TypeError) as exc:
            raise UnsupportedArchitecture(
                f"{type(model).__name__} does not have the module layout of the "
                f"{self.family} family: {exc}"
            ) from exc


GPT2 = ArchitectureAdapter(
    family="gpt2",
    blocks="transformer.h",
    attention="attn",
    post_attention_norm="ln_2",
    mlp="mlp",
    final_norm="transformer.ln_f",
    unembedding="lm_head",
    token_embedding="transformer.wte",
    position_embedding="transformer.wpe",
)

LLAMA = ArchitectureAdapter(
    family="llama",
    blocks="model.layers",
    attention="self_attn",
    post_attention_norm="post_attention_layernorm",
    mlp="mlp",
    final_norm="model.norm",
    unembedding="lm_head",
    token_embedding="model.embed_tokens",
    position_embedding=None,
)


def _llama_like(family: str, **changes: object) -> ArchitectureAdapter:
    """An adapter with the Llama module layout (``model.layers[i].self_attn`` ...)."""
    fields = {**LLAMA.__dict__, "family": family, **changes}
    return ArchitectureAdapter(**fields)  # type: ignore[arg-type]


MISTRAL = _llama_like("mistral")
QWEN2 = _llama_like("qwen2")
QWEN3 = _llama_like("qwen3")
PHI3 = _llama_like("phi3")  # fused qkv_proj and gate_up_proj inside the same module names
GEMMA = _llama_like("gemma", norm_weight_offset=1.0)
# Gemma 2/3: a norm after the attention and one around the MLP; what is added is the norms' output.
_GEMMA2_POINTS = {
    "attention": "post_attention_layernorm",
    "attention_module": "self_attn",
    "post_attention_norm": "pre_feedforward_layernorm",
    "mlp": "post_feedforward_layernorm",
    "mlp_module": "mlp",
    "norm_weight_offset": 1.0,
    "logit_softcap": "final_logit_softcapping",
}
GEMMA2 = _llama_like("gemma2", **_GEMMA2_POINTS)
GEMMA3 = _llama_like("gemma3", **_GEMMA2_POINTS)
GEMMA3_MULTIMODAL = ArchitectureAdapter(
    **{**GEMMA3.__dict__, "family": "gemma3_multimodal", "blocks": "model.language_model.layers",
       "final_norm": "model.language_model.norm", "token_embedding": "model.language_model.embed_tokens",
       "rotary": "model.language_model.rotary_emb"}
)
GPT_NEOX = ArchitectureAdapter(
    family="gpt_neox",
    blocks="gpt_neox.layers",
    attention="attention",
    post_attention_norm="post_attention_layernorm",
    mlp="mlp",
    final_norm="gpt_neox.final_layer_norm",
    unembedding="lm_head",
    token_embedding="gpt_neox.embed_in",
    parallel_flag="use_parallel_residual",
    cache_kwarg="layer_past",
)

ADAPTERS: dict[str, ArchitectureAdapter] = {
    adapter.family: adapter
    for adapter in (
        GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, GEMMA, GEMMA2, GEMMA3, GEMMA3_MULTIMODAL, GPT_NEOX,
    )
}

# Model classes known to follow each family's layout (only tested ones).
_CLASSES: dict[str, ArchitectureAdapter] = {
    "GPT2LMHeadModel": GPT2,
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": MISTRAL,
    "Qwen2ForCausalLM": QWEN2,
    "Qwen3ForCausalLM": QWEN3,
    "Phi3ForCausalLM": PHI3,
    "GemmaForCausalLM": GEMMA,
    "Gemma2ForCausalLM": GEMMA2,
    "Gemma3ForCausalLM": GEMMA3,  # text-only Gemma 3 (model_type gemma3_text)
    "Gemma3ForConditionalGeneration": GEMMA3_MULTIMODAL,  # Gemma 3 4B-27B, text path only
    "GPTNeoXForCausalLM": GPT_NEOX,
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``'s class, validated against the model's modules.

    Raises ``UnsupportedArchitecture`` naming the class and the supported families.
    """
    name = type(model).__name__
    adapter = _CLASSES.get(name)
    if adapter is None:
        supported = ", ".join(ADAPTERS)
        raise UnsupportedArchitecture(f"architecture {name} is not supported (supported: {supported})")
    adapter.validate(model)
    return adapter
