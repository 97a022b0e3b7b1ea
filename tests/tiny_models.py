"""Tiny random GPT-2 and Llama models with a byte-level tokenizer, for tests.

``build_tiny_model(path, family, seed)`` writes a ``save_pretrained`` model
plus tokenizer to ``path`` so that ``load_model(str(path))`` and
``load_tokenizer(str(path))`` work on it. Invariants other tests rely on:

* any string tokenises (byte-level: one token per UTF-8 byte, no merges), so a
  prompt of n ASCII characters has exactly n tokens;
* the tokenizer has an eos token ``<|endoftext|>`` and a distinct pad token
  ``<pad>``; it adds no special tokens to a prompt;
* the same ``(family, seed)`` always gives the same weights;
* 3 blocks, d_model 64, 4 heads, learned positions up to 1024 tokens (GPT-2),
  rotary up to 2048 (Llama).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

__all__ = ["N_LAYERS", "D_MODEL", "VOCAB_SIZE", "build_tiny_model", "build_tiny_tokenizer"]

N_LAYERS = 3
D_MODEL = 64
N_HEADS = 4
EOS = "<|endoftext|>"
PAD = "<pad>"


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


def _tiny_model(family: Literal["gpt2", "llama"]) -> PreTrainedModel:
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
    raise ValueError(f"unknown tiny model family {family!r} (use 'gpt2' or 'llama')")


def build_tiny_model(path: Path, family: Literal["gpt2", "llama"], seed: int = 0) -> Path:
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
