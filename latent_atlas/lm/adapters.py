"""Architecture adapters: where the hook points of each model family live.

An adapter names modules by dotted attribute paths (readable, JSON-safe), and
resolves them on a loaded model. Invariants a new family must keep (the hook
check in ``latent_atlas.lm.hooks`` proves them on a real forward pass):

* ``attention`` (relative to a block) outputs the attention result *before* the
  residual add (a tensor, or a tuple whose first item is that tensor);
* ``post_attention_norm`` (relative to a block) receives, as its first input,
  the residual stream right after the attention add (``resid_mid``);
* ``mlp`` (relative to a block) outputs the MLP result before the residual add;
* a block's output (a tensor or a tuple whose first item is the tensor) is the
  residual after the MLP add (``resid_post``);
* ``final_norm`` is applied to the last block's output before ``unembedding``.

Only families whose adapters are tested are listed in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from latent_atlas.lm.errors import UnsupportedArchitecture

__all__ = ["ADAPTERS", "ArchitectureAdapter", "GPT2", "LLAMA", "adapter_for"]


def _resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{path!r} is not a module")
    return module


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

    def blocks_of(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in order."""
        return list(_resolve(model, self.blocks))  # type: ignore[arg-type]

    def attention_of(self, block: nn.Module) -> nn.Module:
        return _resolve(block, self.attention)

    def post_attention_norm_of(self, block: nn.Module) -> nn.Module:
        return _resolve(block, self.post_attention_norm)

    def mlp_of(self, block: nn.Module) -> nn.Module:
        return _resolve(block, self.mlp)

    def final_norm_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.final_norm)

    def unembedding_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.unembedding)

    def token_embedding_of(self, model: nn.Module) -> nn.Module:
        return _resolve(model, self.token_embedding)

    def position_embedding_of(self, model: nn.Module) -> nn.Module | None:
        """Learned position embeddings, or ``None`` (rotary families)."""
        return None if self.position_embedding is None else _resolve(model, self.position_embedding)

    def validate(self, model: nn.Module) -> None:
        """Resolve every path once; ``UnsupportedArchitecture`` if one is missing."""
        try:
            blocks = self.blocks_of(model)
            if not blocks:
                raise TypeError("the model has no blocks")
            for block in blocks:
                self.attention_of(block)
                self.post_attention_norm_of(block)
                self.mlp_of(block)
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

ADAPTERS: dict[str, ArchitectureAdapter] = {"gpt2": GPT2, "llama": LLAMA}

# Model classes known to follow each family's layout (only tested ones).
_CLASSES: dict[str, ArchitectureAdapter] = {
    "GPT2LMHeadModel": GPT2,
    "LlamaForCausalLM": LLAMA,
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
