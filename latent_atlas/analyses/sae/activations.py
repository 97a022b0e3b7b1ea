"""The model's activations at one point of one block, from a forward pass that stops there.

``activations_at(lm, input_ids, attention_mask, hook)`` runs the base model
(no unembedding) with one hook on the module that produces ``hook``'s point
(see ``source.HOOK_POINTS``): the hook keeps a reference to the tensor and
raises ``_StopForward``, so no later module runs: no later block, no final
norm, no unembedding. ``ActivationStream`` turns token sequences into
batches of activation rows for sae-lens's trainer (an iterator of
``(n, d_model)`` float32 tensors, its ``DataProvider``).

Invariants:

* ``activations_at`` equals the same point of a full forward pass
  (``latent_atlas.lm.hooks.capture_points``) and no block after ``hook.layer``
  runs (both proven in tests/unit/sae/test_activations.py);
* the hook is removed when the call ends, also when it raises;
* forwards run under ``torch.no_grad`` (not inference mode), so the rows can
  feed a training step;
* rows are taken at real tokens only (``attention_mask``), in (sequence,
  position) order; ``skip_positions`` leaves out the first positions of every
  sequence (the BOS / attention-sink position, whose norm is tens of times
  the others' on SmolLM2 and would dominate a squared-error loss);
* ``drop_outliers`` leaves out rows whose norm is more than ``OUTLIER_FACTOR``
  times the median norm of their forward pass: attention sinks elsewhere than
  position 0 (on SmolLM2's layer 12 a few tokens at position 1 reach a norm of
  ~21,700 against a median of ~140); the stream counts what it dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from latent_atlas.analyses.sae.source import SaeHook
from latent_atlas.lm.loading import LanguageModel

__all__ = ["OUTLIER_FACTOR", "ActivationStream", "activations_at", "drop_outliers", "rows_of"]

OUTLIER_FACTOR = 10.0


class _StopForward(Exception):
    """Raised by the hook to end the forward pass at the hooked point."""


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _register(lm: LanguageModel, hook: SaeHook, slot: list[Tensor]) -> Any:
    """The handle of one hook that stores the point in ``slot`` and stops the forward."""
    adapter = lm.adapter
    blocks = adapter.blocks_of(lm.model)
    if not 0 <= hook.layer < len(blocks):
        raise ValueError(
            f"the SAE hooks layer {hook.layer} but model {lm.name} has {len(blocks)} layers (0..{len(blocks) - 1})"
        )
    block = blocks[hook.layer]

    def on_output(module: torch.nn.Module, args: Any, output: Any) -> None:
        slot.append(_first(output))
        raise _StopForward

    def on_input(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        slot.append(_hidden_input(args, kwargs))
        raise _StopForward

    if hook.point == "resid_pre":
        return block.register_forward_pre_hook(on_input, with_kwargs=True)
    if hook.point == "resid_mid":
        return adapter.post_attention_norm_of(block).register_forward_pre_hook(on_input, with_kwargs=True)
    if hook.point == "attn_out":
        return adapter.attention_of(block).register_forward_hook(on_output)
    if hook.point == "mlp_out":
        return adapter.mlp_of(block).register_forward_hook(on_output)
    if hook.point == "resid_post":
        return block.register_forward_hook(on_output)
    raise ValueError(f"unknown hook point {hook.point!r}")


def activations_at(lm: LanguageModel, input_ids: Tensor, attention_mask: Tensor | None,
                   hook: SaeHook) -> Tensor:
    """(batch, seq, d_model) activations at ``hook`` in the model's dtype, on its device."""
    slot: list[Tensor] = []
    handle = _register(lm, hook, slot)
    try:
        with torch.no_grad():
            lm.model.base_model(
                input_ids=input_ids.to(lm.device),
                attention_mask=None if attention_mask is None else attention_mask.to(lm.device),
                use_cache=False,
            )
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not slot:
        raise RuntimeError(f"the forward pass never reached {hook.name}")
    return slot[0]


def rows_of(acts: Tensor, attention_mask: Tensor | None, skip_positions: int = 0) -> Tensor:
    """Activation rows (n, d) at real tokens, leaving out the first ``skip_positions`` of each sequence."""
    batch, seq, d = acts.shape
    keep = torch.ones(batch, seq, dtype=torch.bool, device=acts.device)
    if attention_mask is not None:
        keep &= attention_mask.to(acts.device).bool()
    if skip_positions:
        keep[:, :skip_positions] = False
    return acts[keep].reshape(-1, d)


def drop_outliers(rows: Tensor, factor: float = OUTLIER_FACTOR) -> tuple[Tensor, int]:
    """``rows`` without those whose norm exceeds ``factor`` x the median norm; and how many went."""
    if len(rows) == 0:
        return rows, 0
    norms = rows.float().norm(dim=-1)
    keep = norms <= factor * norms.median()
    return rows[keep], int((~keep).sum())


class ActivationStream:
    """Batches of exactly ``batch_rows`` activation rows from ``sequences``, for ``SAETrainer``.

    Sequences (lists of token ids, all of one length) are run ``seqs_per_forward``
    at a time; rows are shuffled within a buffer of ``buffer_forwards`` forwards
    (seeded) so that one batch mixes positions and documents. The stream cycles
    over the sequences when it runs out (the trainer asks for a fixed number of
    rows); ``epochs`` counts how often it began again. ``on_forward(tokens)`` is
    called after every forward with the number of tokens it ran.
    """

    def __init__(self, lm: LanguageModel, hook: SaeHook, sequences: Sequence[Sequence[int]], *,
                 batch_rows: int, seqs_per_forward: int = 8, skip_positions: int = 1,
                 buffer_forwards: int = 8, seed: int = 0, on_forward: Any = None) -> None:
        if not sequences:
            raise ValueError("the activation stream needs at least one sequence")
        self.lm, self.hook = lm, hook
        self.sequences = torch.tensor([list(s) for s in sequences], dtype=torch.long)
        if self.sequences.shape[1] <= skip_positions:
            raise ValueError(f"sequences of {self.sequences.shape[1]} tokens leave nothing after "
                             f"skipping {skip_positions} positions")
        self.batch_rows = batch_rows
        self.seqs_per_forward = seqs_per_forward
        self.skip_positions = skip_positions
        self.buffer_forwards = buffer_forwards
        self.generator = torch.Generator().manual_seed(seed)
        self.on_forward = on_forward
        self.epochs = 0
        self.dropped = 0
        self._next_seq = 0
        self._buffer = torch.empty(0, lm.d_model)

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def _forward_once(self) -> Tensor:
        if self._next_seq >= len(self.sequences):
            self._next_seq = 0
            self.epochs += 1
        chunk = self.sequences[self._next_seq:self._next_seq + self.seqs_per_forward]
        self._next_seq += len(chunk)
        acts = activations_at(self.lm, chunk, None, self.hook)
        if self.on_forward is not None:
            self.on_forward(int(chunk.numel()))
        rows, dropped = drop_outliers(rows_of(acts, None, self.skip_positions).float().cpu())
        self.dropped += dropped
        return rows

    def _refill(self) -> None:
        parts = [self._buffer] + [self._forward_once() for _ in range(self.buffer_forwards)]
        rows = torch.cat(parts)
        self._buffer = rows[torch.randperm(len(rows), generator=self.generator)]

    def __next__(self) -> Tensor:
        while len(self._buffer) < self.batch_rows:
            self._refill()
        batch, self._buffer = self._buffer[:self.batch_rows], self._buffer[self.batch_rows:]
        return batch
