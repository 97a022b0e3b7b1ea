"""Resuming a grid from the cells an earlier attempt finished.

The cells (row-major) are divided into pieces of ``CHECKPOINT_CELLS``; piece
``p`` covers cells ``p * CHECKPOINT_CELLS`` up to the next piece. Invariants:

* a piece is saved (``Checkpoint.save``) right after its last batch and before
  the next piece's first progress report, so when progress shows cell ``s``
  every piece ending at or before ``s`` is saved;
* the key of a piece is ``<signature>.<p>``: the signature names how cells
  are computed (fast or direct path, device kind, dtype, top-k, cell count),
  so a retry on another kind of device, or one that took the other path,
  recomputes instead of mixing results; nothing in a key depends on the
  attempt or the batch size (``CHECKPOINT_CELLS`` is a multiple of the CPU
  batches, so there a piece holds whole batches; on a GPU a piece's last
  batch may be shorter);
* a span of the grid (a shard, ``span=``) starts and ends on piece
  boundaries (or the grid's end), so its pieces and keys are the whole run's;
* a saved piece whose arrays do not match the piece's shapes and dtypes is
  ignored and recomputed; the result equals an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from latent_atlas.analyses.base import Checkpoint, Progress
from latent_atlas.analyses.grid.streaming import Output, stream_span

__all__ = ["CHECKPOINT_CELLS", "Streamed", "stream_resumable"]

CHECKPOINT_CELLS = 8192


@dataclass(frozen=True)
class Streamed:
    batch_sizes: list[int]
    resumed_cells: int  # cells loaded from pieces an earlier attempt saved


def stream_resumable(
    total: int,
    first_batch: int,
    compute: Callable[[int, int], None],
    progress: Progress,
    stage: str,
    share: tuple[float, float],
    is_cuda: bool,
    output: Output,
    checkpoint: Checkpoint,
    signature: str,
    span: tuple[int, int] | None = None,
) -> Streamed:
    """Like ``stream_cells``, piece by piece, loading saved pieces and saving computed ones.

    ``span`` (first cell, cell count; default the whole grid) limits the work to
    those cells (a shard of a grid); its first cell must start a piece, so a
    piece's key and contents are the same whichever span computed it.
    """
    origin, extent = (0, total) if span is None else span
    stop = origin + extent
    if origin % CHECKPOINT_CELLS or (stop % CHECKPOINT_CELLS and stop != total) or not 0 <= origin <= stop <= total:
        raise ValueError(f"cells {origin}..{origin + extent} are not a span of pieces of {total} cells")
    used: list[int] = []
    batch = first_batch
    resumed = 0
    for begin in range(origin, stop, CHECKPOINT_CELLS):
        end = min(begin + CHECKPOINT_CELLS, stop)
        key = f"{signature}.{begin // CHECKPOINT_CELLS}"
        saved = checkpoint.load(key)
        if saved is not None and output.restore(begin, end, saved):
            resumed += end - begin
            continue
        batch = stream_span(begin, end, total, batch, compute, progress, stage, share, is_cuda, used,
                            (origin, extent))
        checkpoint.save(key, output.piece(begin, end))
    return Streamed(used, resumed)
