"""Streaming the cells of a grid in batches: coordinates, batch sizes, CPU workers, output.

Invariants: cells are row-major (``n = j * N + i``); the full logits of at
most one batch exist at a time; each batch's top-k goes straight into the
preallocated ``Output`` arrays; ``stream_cells`` reports progress before every
batch and halves the batch on a CUDA out-of-memory error, retrying the same
cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import torch
from torch import Tensor

from latent_atlas.analyses.base import Progress
from latent_atlas.analyses.grid.params import GridParams
from latent_atlas.analyses.grid.planes import grid_axis
from latent_atlas.lm.inject import ContextState
from latent_atlas.lm.loading import LanguageModel

__all__ = ["CellGrid", "Output", "Workers", "device_kind", "piece_cells", "start_batch", "stream_cells",
           "stream_span"]

# Batch sizing: bytes of one batch's float32 logits, cells per batch, rows per in-cache chunk.
LOGITS_BUDGET = {"cpu": 128 << 20, "cuda": 1 << 30}
CONTEXT_BUDGET = {"cpu": 256 << 20, "cuda": 2 << 30}
MAX_CELLS = {"cpu": 4096, "cuda": 8192}
FAST_PATH_CELLS = {"cpu": 4096, "cuda": 16384}  # cells per progress report on the fast path
CPU_CHUNK_ROWS = 32  # rows per in-cache chunk of the reduction on a CPU
CPU_BATCH_CELLS = 1024  # cells per batch (one progress report) on a CPU, direct computation
CPU_PIECE_CELLS = 128  # cells per job on a CPU: a worker thread runs blocks, readout, reduction
FAST_PIECE_ROWS = 64  # rows per job on the fast path on a CPU
FAST_CHUNK_ROWS = 16  # rows per in-cache chunk on the fast path on a CPU




class CellGrid:
    """Coordinates of the N x N cells in row-major order."""

    def __init__(self, params: GridParams) -> None:
        self.n = params.size
        self.xs = grid_axis(self.n, params.center[0], params.spacing)
        self.ys = grid_axis(self.n, params.center[1], params.spacing)
        self._xs = torch.from_numpy(self.xs)
        self._ys = torch.from_numpy(self.ys)

    @property
    def cells(self) -> int:
        return self.n * self.n

    def coordinates(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(start, stop)
        return self._xs[index % self.n], self._ys[index // self.n]


def device_kind(lm: LanguageModel) -> str:
    return "cuda" if lm.device.type == "cuda" else "cpu"


def start_batch(lm: LanguageModel, context: ContextState | None) -> int:
    kind = device_kind(lm)
    cells = LOGITS_BUDGET[kind] // (4 * lm.vocab_size)
    if context is not None and context.prefix is not None:
        per_cell = 4 * 4 * lm.d_model * (context.prefix.length + 1)
        cells = min(cells, CONTEXT_BUDGET[kind] // per_cell)
    return int(max(1, min(cells, MAX_CELLS[kind])))


def piece_cells(lm: LanguageModel, context: ContextState | None, workers: int) -> int:
    """Cells per CPU job: ``CPU_PIECE_CELLS``, fewer when a long context's keys would not fit."""
    cells = CPU_PIECE_CELLS
    if context is not None and context.prefix is not None:
        per_cell = 4 * 4 * lm.d_model * (context.prefix.length + 1)
        cells = min(cells, CONTEXT_BUDGET["cpu"] // (per_cell * max(1, workers)))
    return max(1, cells)


def _single_threaded_ops() -> None:
    torch.set_num_threads(1)


class Workers:
    """Runs the jobs of one batch: inline on a GPU (or with one CPU thread), else on a pool.

    On a CPU with n > 1 torch threads, jobs run on n Python threads whose torch
    ops are single-threaded (torch ops release the GIL). Per-op OpenMP
    parallelism puts a barrier in every op, so on a busy machine one
    descheduled thread stalls every small op (2-10x slower on a loaded 2-core
    machine, measured), while independent jobs on separate threads just go on.
    ``torch.set_num_threads(1)`` in a pool thread sets that thread's OpenMP and
    MKL thread counts (thread-local) and torch's default for new threads;
    ``close`` restores the default.
    """

    def __init__(self, lm: LanguageModel) -> None:
        self.saved = torch.get_num_threads()
        self.count = self.saved if lm.device.type == "cpu" else 1
        self.pool = (
            ThreadPoolExecutor(self.count, thread_name_prefix="grid", initializer=_single_threaded_ops)
            if self.count > 1 else None
        )

    def run(self, jobs: Sequence[Callable[[], None]]) -> None:
        if self.pool is None:
            for job in jobs:
                job()
            return
        futures = [self.pool.submit(job) for job in jobs]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()
            wait(futures)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self.saved)


class Output:
    """Preallocated result arrays for cells ``base:base + cells``, filled batch by batch.

    Cell indices passed to ``put``, ``piece`` and ``restore`` are the grid's
    (row-major over the whole grid); ``base`` is the first cell held (a shard
    of a grid holds only its span).
    """

    def __init__(self, cells: int, k: int, base: int = 0) -> None:
        self.base = base
        self.ids = np.empty((cells, k), dtype=np.int32)
        self.probs = np.empty((cells, k), dtype=np.float32)
        self.entropy = np.empty((cells,), dtype=np.float32)

    def put(self, start: int, ids: Tensor, probs: Tensor, entropy: Tensor) -> None:
        start -= self.base
        stop = start + ids.shape[0]
        self.ids[start:stop] = ids.cpu().numpy()
        self.probs[start:stop] = probs.cpu().numpy()
        self.entropy[start:stop] = entropy.cpu().numpy()

    def piece(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Cells ``start:stop`` (views, not copies)."""
        start, stop = start - self.base, stop - self.base
        return {"ids": self.ids[start:stop], "probs": self.probs[start:stop],
                "entropy": self.entropy[start:stop]}

    def restore(self, start: int, stop: int, piece: dict[str, np.ndarray]) -> bool:
        """Fill cells ``start:stop`` from a saved ``piece``; False (nothing written) if it does not fit."""
        mine = self.piece(start, stop)
        if set(piece) != set(mine) or any(
            piece[name].shape != mine[name].shape or piece[name].dtype != mine[name].dtype for name in mine
        ):
            return False
        for name, array in mine.items():
            array[...] = piece[name]
        return True


def stream_cells(
    total: int,
    first_batch: int,
    compute: Callable[[int, int], None],
    progress: Progress,
    stage: str,
    share: tuple[float, float],
    is_cuda: bool,
) -> list[int]:
    """Run ``compute(start, stop)`` over all cells, halving the batch on out-of-memory."""
    used: list[int] = []
    stream_span(0, total, total, first_batch, compute, progress, stage, share, is_cuda, used)
    return used


def stream_span(
    begin: int,
    end: int,
    total: int,
    first_batch: int,
    compute: Callable[[int, int], None],
    progress: Progress,
    stage: str,
    share: tuple[float, float],
    is_cuda: bool,
    used: list[int],
    span: tuple[int, int] | None = None,
) -> int:
    """Run ``compute`` over cells ``begin:end`` of ``total``; returns the batch size to go on with.

    Progress is reported as the fraction of ``span`` (first cell, cell count;
    default: the whole grid, ``(0, total)``) done, the stage text names the
    grid's cell index; batch sizes go to ``used`` (a size is listed again only
    when it changes).
    """
    batch = first_batch
    start = begin
    low, high = share
    origin, extent = (0, total) if span is None else span
    while start < end:
        progress(low + (high - low) * (start - origin) / max(1, extent), f"{stage}: {start}/{total} cells")
        stop = min(start + batch, end)
        try:
            compute(start, stop)
            failed = False
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            failed = True
        if failed:  # outside the handler, so the failed batch's tensors are freed first
            batch //= 2
            if is_cuda:
                torch.cuda.empty_cache()
            continue
        if not used or used[-1] != stop - start:
            used.append(stop - start)
        start = stop
    return batch
