"""The harvest loop: token sequences -> model stopped at the hook -> ``sae.encode`` -> reducers + CSC.

* ``corpus_sequences``: the run's token sequences from any corpus kind, at most
  ``n_tokens`` in all (the last sequence is cut), each at most ``context_len``;
  a corpus with fewer tokens gives what it has and a note that says so.
* ``harvest``: sequences are run ``batch_tokens // context_len`` at a time through
  ``activations.activations_at`` (the forward stops at the hooked point: no later
  block, norm or unembedding runs), the rows at real tokens past ``skip_positions``
  go through ``sae.encode``, except attention-sink outliers (norm over
  ``outlier_factor`` x the batch's median, as ``sae_train`` leaves them out; counted
  in ``HarvestTokens.outliers_dropped``, stored but never encoded). When
  ``reducers`` has a device set (``HarvestReducers(device=...)``), top-k, histogram,
  stats (and co-firing and interval samples off the CPU) reduce the batch in torch
  where it is, from one ``torch.nonzero``; the non-zeros are packed there into the
  CSC's 12-byte records and come to the CPU in one transfer, for the CSC writer and
  the host-side reducers if any (all of them without a device set; co-firing and
  intervals with one on a CPU). The host work of batch i runs in a worker thread
  while the device computes batch i + 1 (numpy, numba and torch release the GIL).
* ``CscWriter``: the per-token sparse activations, latent-major. Batches are appended
  token-major to an anonymous temporary file (12 bytes per non-zero); ``finish``
  counting-sorts them (a compiled scatter, one pass) into ``lat_token`` / ``lat_value``
  arrays mapped on anonymous temporary files, chunk by chunk. Memory stays bounded (a chunk plus ``d_sae``
  counters); disk is ``tokens x L0 x 20`` bytes; the files vanish when the arrays do.

Global token index = position in the harvested token arrays (``token_id``,
``token_doc`` = sequence index, ``token_pos`` = position in the sequence); tokens in
the first ``skip_positions`` of a sequence, and outliers, are stored (so windows
show them) but never encoded.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from latent_atlas.analyses.sae.reducers import HarvestReducers, SparseBatch

OUTLIER_FACTOR = 10.0  # = activations.OUTLIER_FACTOR (not imported: that module loads the model stack)

__all__ = ["CscWriter", "HarvestTokens", "corpus_sequences", "harvest", "scratch_array"]

_RECORD = np.dtype([("t", "<i4"), ("l", "<i4"), ("v", "<f4")])
_CHUNK = 1 << 22


def scratch_array(n: int, dtype: Any, directory: str | None = None) -> np.ndarray:
    """A zeroed (n,) array mapped on an anonymous temporary file (gone when the array is)."""
    if n == 0:
        return np.zeros(0, dtype)
    return np.memmap(tempfile.TemporaryFile(dir=directory), dtype=dtype, mode="w+", shape=(n,))


class CscWriter:
    """Streams token-major non-zeros to disk; ``finish`` returns the latent-major CSC arrays.

    Two ways in: ``add(batch)`` takes a ``SparseBatch`` in any order (checked, sorted
    if needed); ``add_packed(records)`` takes ``pack``'s (nnz, 3) int32 records, built
    where the non-zeros are (on the GPU: one 12-byte-per-entry transfer), which must be
    in ascending (token, latent) order, as ``torch.nonzero`` of a dense batch returns
    them; only the order across batches is checked there. Token indices are below 2**31.
    """

    def __init__(self, d_sae: int, directory: str | None = None) -> None:
        self.d_sae, self.directory = d_sae, directory
        self.file = tempfile.TemporaryFile(dir=directory)
        self.count = np.zeros(d_sae, np.int64)
        self.nnz = 0
        self.last_token = -1

    @staticmethod
    def pack(token: torch.Tensor, latent: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(nnz, 3) int32 records (token, latent, float32 bits of value) on the tensors' device."""
        return torch.stack([token.to(torch.int32), latent.to(torch.int32),
                            value.to(torch.float32).view(torch.int32)], dim=1)

    def add(self, batch: SparseBatch) -> None:
        if batch.token.size == 0:
            return
        key = batch.token * self.d_sae + batch.latent
        order = np.arange(key.size) if bool((key[1:] > key[:-1]).all()) else np.argsort(key, kind="stable")
        records = np.empty(order.size, _RECORD)
        records["t"], records["l"], records["v"] = batch.token[order], batch.latent[order], batch.value[order]
        self._append(records)

    def add_packed(self, records: torch.Tensor | np.ndarray) -> None:
        """``pack``'s records (on any device), in ascending (token, latent) order (not checked)."""
        if isinstance(records, torch.Tensor):
            records = records.cpu().numpy()
        if records.shape[0] == 0:
            return
        self._append(np.ascontiguousarray(records, np.int32).view(_RECORD).reshape(-1))

    def _append(self, records: np.ndarray) -> None:
        if int(records["t"][0]) <= self.last_token:
            raise ValueError("CscWriter: batches must come in token order")
        self.file.write(records.data)
        self.count += np.bincount(records["l"], minlength=self.d_sae)
        self.nnz += records.size
        self.last_token = int(records["t"][-1])

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``lat_ptr`` (d+1,) int64, ``lat_token`` (nnz,) int32 ascending per latent, ``lat_value`` float32.

        A counting sort: each record goes to its latent's cursor, in file (token) order,
        so tokens are ascending within a latent (compiled, ``_scatter_kernel``).
        """
        ptr = np.zeros(self.d_sae + 1, np.int64)
        np.cumsum(self.count, out=ptr[1:])
        tokens = scratch_array(self.nnz, np.int32, self.directory)
        values = scratch_array(self.nnz, np.float32, self.directory)
        if self.nnz:
            self.file.flush()
            source = np.memmap(self.file, dtype=_RECORD, mode="r", shape=(self.nnz,))
            cursor = ptr[:-1].copy()
            scatter = _scatter_kernel()
            shift = max(0, (self.d_sae - 1).bit_length() // 2)
            buffer = np.empty((min(_CHUNK, self.nnz), 3), np.int32)
            for start in range(0, self.nnz, _CHUNK):
                chunk = np.asarray(source[start:start + _CHUNK]).view(np.int32).reshape(-1, 3)
                scatter(chunk, cursor, tokens.view(np.ndarray), values.view(np.ndarray).view(np.int32), shift,
                        buffer)
            del source
        self.file.close()
        return ptr, tokens, values


@cache
def _scatter_kernel() -> Any:
    """The compiled counting-sort scatter (numba imported on first use; releases the GIL).

    Two stable passes, so that each writes to few places at a time (a one-pass scatter to
    ``d_sae`` cursors misses the cache and TLB on nearly every entry): records to a buffer
    grouped by ``latent >> shift`` (about sqrt(d) groups), then each group, in order, to
    its latents' cursors. Stable both times, so tokens stay in file order in a latent.
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def scatter(records, cursor, tokens, value_bits, shift, buffer):  # pragma: no cover - compiled
        """records (n, 3) int32 (token, latent, value bits): each to ``cursor[latent]``, then advance it."""
        n = records.shape[0]
        start = np.zeros(((cursor.size - 1) >> shift) + 2, np.int64)
        for i in range(n):
            start[(records[i, 1] >> shift) + 1] += 1
        for b in range(1, start.size):
            start[b] += start[b - 1]
        for i in range(n):
            b = records[i, 1] >> shift
            at = start[b]
            buffer[at, 0] = records[i, 0]
            buffer[at, 1] = records[i, 1]
            buffer[at, 2] = records[i, 2]
            start[b] = at + 1
        for i in range(n):
            lat = buffer[i, 1]
            at = cursor[lat]
            tokens[at] = buffer[i, 0]
            value_bits[at] = buffer[i, 2]
            cursor[lat] = at + 1

    return scatter


@dataclass(frozen=True)
class HarvestTokens:
    """The harvested tokens: (T,) int32 each; and how many were outliers left out of the encoding."""

    token_id: np.ndarray
    token_doc: np.ndarray
    token_pos: np.ndarray
    outliers_dropped: int = 0


def corpus_sequences(sequences: Sequence[Sequence[int]], n_tokens: int, context_len: int,
                     source: str) -> tuple[list[list[int]], str]:
    """Sequences cut to ``context_len`` and to ``n_tokens`` in all, plus the corpus note."""
    out: list[list[int]] = []
    total = 0
    for seq in sequences:
        if total >= n_tokens:
            break
        piece = [int(t) for t in seq[: min(context_len, n_tokens - total)]]
        if piece:
            out.append(piece)
            total += len(piece)
    if not out:
        raise ValueError(f"{source} gave no tokens")
    if total < n_tokens:
        note = (f"{source} has {total:,} tokens, fewer than the {n_tokens:,} asked: "
                f"the run harvested all {total:,} ({len(out):,} sequences)")
    else:
        note = f"{total:,} tokens in {len(out):,} sequences of at most {context_len} from {source}"
    return out, note


def _batches(lengths: np.ndarray, per_batch: int) -> list[tuple[int, int]]:
    return [(s, min(s + per_batch, lengths.size)) for s in range(0, lengths.size, per_batch)]


def harvest(lm: Any, sae: Any, hook: Any, sequences: list[list[int]], reducers: HarvestReducers, *,
            batch_tokens: int, skip_positions: int, progress: Callable[[float, str], None],
            csc: CscWriter | None = None, forward: Callable[..., torch.Tensor] | None = None,
            progress_span: tuple[float, float] = (0.0, 1.0),
            outlier_factor: float = OUTLIER_FACTOR, token_offset: int = 0) -> HarvestTokens:
    """Run every sequence; feed ``reducers`` and ``csc``; returns the token arrays (see the module docstring).

    ``forward(lm, input_ids, attention_mask, hook)`` defaults to ``activations.activations_at``.
    ``outlier_factor`` (0: off) leaves out of the encoding the rows whose norm exceeds that
    multiple of the median norm of their batch, as ``sae_train`` does (``activations.drop_outliers``).
    ``token_offset``: the global index of the first token (a shard's place in its run): the
    reducers and ``csc`` see ``token_offset + `` the position in ``sequences``.
    """
    if forward is None:
        from latent_atlas.analyses.sae.activations import activations_at as forward
    lengths = np.array([len(s) for s in sequences], np.int64)
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if token_offset < 0 or token_offset + total >= 1 << 31:
        raise ValueError(f"global token indices are int32: offset {token_offset:,} + {total:,} tokens "
                         f"must stay below 2**31")
    token_id = np.concatenate([np.asarray(s, np.int32) for s in sequences])
    token_doc = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
    token_pos = (np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)).astype(np.int32)
    per_batch = max(1, batch_tokens // max(1, int(lengths.max())))
    pad = int(getattr(lm.tokenizer, "pad_token_id", None) or 0)
    sae_device = next(sae.parameters()).device
    sae_dtype = next(sae.parameters()).dtype
    spans = _batches(lengths, per_batch)
    lo, hi = progress_span
    pending: Future | None = None
    outliers = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        for number, (first, last) in enumerate(spans):
            lens = lengths[first:last]
            width = int(lens.max())
            ids = torch.full((lens.size, width), pad, dtype=torch.long)
            mask = torch.zeros((lens.size, width), dtype=torch.long)
            for row, seq in enumerate(sequences[first:last]):
                ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            keep = mask.bool().clone()
            keep[:, :skip_positions] = False
            acts = forward(lm, ids, mask, hook)
            with torch.no_grad():
                rows = acts[keep.to(acts.device)]
                if outlier_factor and rows.shape[0]:
                    norms = rows.float().norm(dim=-1)
                    ok = norms <= outlier_factor * norms.median()
                    n_out = int((~ok).sum())
                    if n_out:
                        outliers += n_out
                        keep[keep.clone()] = ok.cpu()
                        rows = rows[ok]
                rows = rows.to(device=sae_device, dtype=sae_dtype)
                feats = sae.encode(rows)
            # global token index of each encoded row, in (sequence, position) order
            seq_rows, positions = np.nonzero(keep.numpy())
            global_row = torch.from_numpy(offsets[first + seq_rows] + positions + token_offset).to(feats.device)
            with torch.no_grad():
                where = torch.nonzero(feats)  # (row, latent) ascending: token-major, as the CSC wants
                nonzero = (where[:, 1], global_row[where[:, 0]], feats[where[:, 0], where[:, 1]])
                if reducers.on_device is not None:
                    reducers.update_dense(feats, global_row, nonzero)
                host = reducers.needs_host_batch or csc is not None
                # the one transfer: 12 bytes per non-zero, packed where they are
                records = CscWriter.pack(nonzero[1], nonzero[0], nonzero[2]).cpu().numpy() if host else None
            if pending is not None:
                pending.result()
            if records is not None:
                pending = pool.submit(_consume, reducers, csc, records, token_offset + int(offsets[first]),
                                      int(offsets[last] - offsets[first]), int(global_row.numel()))
            progress(lo + (hi - lo) * (number + 1) / len(spans),
                     f"harvesting: {int(offsets[last]):,} of {total:,} tokens")
        if pending is not None:
            pending.result()
    return HarvestTokens(token_id, token_doc, token_pos, outliers)


def _consume(reducers: HarvestReducers, csc: CscWriter | None, records: np.ndarray, token_start: int,
             n_tokens: int, encoded: int) -> None:
    """The host-side work of one batch (in the worker thread): host reducers, if any, and the CSC."""
    if reducers.needs_host_batch:
        reducers.update(SparseBatch(records[:, 0].astype(np.int64), records[:, 1].astype(np.int64),
                                    records[:, 2].view(np.float32), token_start=token_start,
                                    n_tokens=n_tokens, encoded=encoded))
    if csc is not None:
        csc.add_packed(records)


def windows_needed(n_tokens: int, context_len: int) -> int:
    """Sequences of ``context_len`` to sample for ``n_tokens`` tokens."""
    return max(1, math.ceil(n_tokens / context_len))
