"""Tiny random models of every supported family with a byte-level tokenizer, for tests.

``build_tiny_model(path, family, seed)`` writes a ``save_pretrained`` model
plus tokenizer to ``path`` so that ``load_model(str(path))`` and
``load_tokenizer(str(path))`` work on it. Invariants other tests rely on:

* any string tokenises (byte-level: one token per UTF-8 byte, no merges), so a
  prompt of n ASCII characters has exactly n tokens;
* the tokenizer has an eos token ``<|endoftext|>`` and a distinct pad token
  ``<pad>``; it adds no special tokens to a prompt;
* the same ``(family, seed)`` always gives the same weights;
* 3 blocks, d_model 64, 4 heads, learned positions up to 1024 tokens (GPT-2),
  rotary up to 2048 (the others);
* the families beyond GPT-2 and Llama (``FAMILIES``) exercise what differs:
  grouped-query attention (2 kv heads), a sliding window of 4 positions
  (Mistral on every layer; Qwen 2/3, Gemma 2/3 on some layers only), Phi-3's
  fused projections, Gemma's (1 + w) norms and its norms after attention and
  MLP, Gemma 2's final logit soft-cap (0.3, small enough to change
  probabilities), GPT-NeoX's parallel attention and MLP with partial rotary.
  Their norm weights are perturbed away from the initial value, so a norm
  computed with the wrong gain (w instead of 1 + w) fails the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
)

__all__ = ["FAMILIES", "N_LAYERS", "D_MODEL", "VOCAB_SIZE", "WINDOW", "build_tiny_model", "build_tiny_tokenizer"]

N_LAYERS = 3
D_MODEL = 64
N_HEADS = 4
EOS = "<|endoftext|>"
PAD = "<pad>"
WINDOW = 4  # sliding attention window of the families that have one
FAMILIES: tuple[str, ...] = (
    "gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3",
    "gemma3_multimodal", "gpt_neox",
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens, then ``EOS`` and ``PAD``."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    vocab[PAD] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None
    )
    tokenizer.padding_side = "right"
    return tokenizer


VOCAB_SIZE = len(build_tiny_tokenizer())


def _common() -> dict[str, object]:
    """Config fields shared by the rotary families."""
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": D_MODEL,
        "intermediate_size": 2 * D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": VOCAB_SIZE - 2,
        "eos_token_id": VOCAB_SIZE - 2,
        "pad_token_id": VOCAB_SIZE - 1,
        "tie_word_embeddings": False,
    }


def _more_families(family: str) -> PreTrainedModel:
    common = _common()
    gemma = {**common, "head_dim": D_MODEL // N_HEADS, "hidden_activation": "gelu_pytorch_tanh"}
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=WINDOW))
    if family == "qwen2":  # layers >= max_window_layers slide
        return Qwen2ForCausalLM(
            Qwen2Config(**common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
        )
    if family == "qwen3":
        return Qwen3ForCausalLM(
            Qwen3Config(**common, head_dim=D_MODEL // N_HEADS, use_sliding_window=True,
                        sliding_window=WINDOW, max_window_layers=2)
        )
    if family == "phi3":
        return Phi3ForCausalLM(Phi3Config(**common, sliding_window=None))
    if family == "gemma":
        return GemmaForCausalLM(GemmaConfig(**gemma))
    if family == "gemma2":
        return Gemma2ForCausalLM(
            Gemma2Config(**gemma, sliding_window=WINDOW, final_logit_softcapping=0.3,
                         attn_logit_softcapping=50.0, query_pre_attn_scalar=D_MODEL // N_HEADS)
        )
    gemma3_text = {**gemma, "sliding_window": WINDOW, "query_pre_attn_scalar": D_MODEL // N_HEADS,
                   "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}
    if family == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**gemma3_text))
    if family == "gemma3_multimodal":  # a one-layer vision tower that the text path never runs
        vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=28, patch_size=14)
        return Gemma3ForConditionalGeneration(
            Gemma3Config(text_config=Gemma3TextConfig(**gemma3_text).to_dict(),
                         vision_config=vision.to_dict(), mm_tokens_per_image=4)
        )
    if family == "gpt_neox":
        return GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=VOCAB_SIZE, hidden_size=D_MODEL, intermediate_size=2 * D_MODEL,
                num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, max_position_embeddings=2048,
                rotary_pct=0.5, use_parallel_residual=True, bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 2, pad_token_id=VOCAB_SIZE - 1, tie_word_embeddings=False,
            )
        )
    raise ValueError(f"unknown tiny model family {family!r} (use one of {', '.join(FAMILIES)})")


def _perturb_norms(model: PreTrainedModel) -> None:
    """Move every norm weight away from its initial value (ones, or zeros for Gemma's 1 + w)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.add_(torch.randn_like(param) * 0.3)


def _tiny_model(family: str) -> PreTrainedModel:
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB_SIZE,
                n_positions=1024,
                n_embd=D_MODEL,
                n_layer=N_LAYERS,
                n_head=N_HEADS,
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 2,
                pad_token_id=VOCAB_SIZE - 1,
            )
        )
    if family == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=D_MODEL,
                intermediate_size=2 * D_MODEL,
                num_hidden_layers=N_LAYERS,
                num_attention_heads=N_HEADS,
                num_key_value_heads=2,
                max_position_embeddings=2048,
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 2,
                pad_token_id=VOCAB_SIZE - 1,
                tie_word_embeddings=False,
            )
        )
    model = _more_families(family)
    _perturb_norms(model)
    return model


def build_tiny_model(path: Path, family: str, seed: int = 0) -> Path:
    """Write a tiny random ``family`` model and its tokenizer to ``path``; return ``path``."""
    path = Path(path)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _tiny_model(family)
    finally:
        torch.random.set_rng_state(generator_state)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    build_tiny_tokenizer().save_pretrained(str(path))
    return path
