"""A sharded grid: cell ranges aligned to the resume pieces, merged by concatenation.

``GRID_SHARDS`` implements ``latent_atlas.analyses.shards.ShardableKind`` for
``grid`` runs. Invariants:

* work units are cells (``size ** 2``); a shard is the spec
  ``{"index", "count", "begin", "end"}``: cells ``begin:end`` in row-major
  order, whole resume pieces (``grid.resume.CHECKPOINT_CELLS``; the last
  shard may end at the grid's last cell), so a shard retried with the run's
  ``checkpoint`` loads the pieces its earlier attempt saved under the very
  keys an unsharded run uses;
* ``run_shard`` is ``compute_cells`` over its span: it builds the plane (and
  the context, and checks the fast path) itself, like the unsharded run;
* ``merge`` concatenates the cells of neighbouring parts; the parts must
  agree on how cells were computed (fast or direct path, dtypes, top-k,
  model shape, the plane's vectors to float32 rounding), else ``ValueError``;
  bookkeeping merges associatively: ``batch_sizes`` concatenated with a size
  listed again only when it changes, ``resumed_cells`` and ``seconds``
  summed (device time, not wall time), distinct ``device`` names joined with
  ", ", the largest ``fast_path_check_error``;
* ``finish`` = ``grid_result`` on the merged cells: arrays equal the
  unsharded ``run_grid``'s bit for bit (same machine and device kind), and so
  does the summary except ``seconds`` / ``cells_per_second`` (summed shard
  times) and, when a GPU halved a batch, ``batch_sizes``. Only
  ``lm.tokenizer`` is read. On a CPU every batch lies inside a piece, so
  this holds whether or not the unsharded run had a checkpoint; on a GPU a
  batch (vocabulary-sized, e.g. 5,461 cells) may straddle pieces without a
  checkpoint, so the bitwise reference is the unsharded run streamed piece by
  piece with a checkpoint, which is how the worker runs every grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.grid.params import GridParams
from latent_atlas.analyses.grid.resume import CHECKPOINT_CELLS
from latent_atlas.analyses.grid.run import compute_cells, grid_result
from latent_atlas.analyses.shard_base import ShardResult, check_parts, check_spec, even_ranges

__all__ = ["GRID_SHARDS", "GridShards"]

CELL_ARRAYS = ("ids", "probs", "entropy")
PLANE_ARRAYS = ("plane_center", "plane_u", "plane_v")
# info keys every part must agree on (how the cells were computed)
SAME = ("n_layers", "d_model", "vocab_size", "top_k", "plane_info", "fast_path", "dtype", "weights_dtype",
        "position", "context_tokens")


class GridShards:
    name = "grid"
    min_units_per_shard = 2 * CHECKPOINT_CELLS  # a 128 x 128 grid runs whole

    def work_units(self, params: GridParams) -> int:
        return params.size * params.size

    def split(self, params: GridParams, n: int) -> list[dict[str, Any]]:
        cells = self.work_units(params)
        pieces = -(-cells // CHECKPOINT_CELLS)
        ranges = even_ranges(pieces, n)
        return [
            {"index": i, "count": len(ranges), "begin": first * CHECKPOINT_CELLS,
             "end": min(cells, last * CHECKPOINT_CELLS)}
            for i, (first, last) in enumerate(ranges)
        ]

    def run_shard(self, params: GridParams, shard: dict[str, Any], lm: Any, progress: Progress = no_progress,
                  **kw: Any) -> ShardResult:
        check_spec(shard, ("begin", "end"))
        begin, end = shard["begin"], shard["end"]
        arrays, info = compute_cells(params, lm, begin, end, progress, kw.get("checkpoint"))
        progress(1.0, f"cells {begin}..{end} done")
        return ShardResult(arrays=arrays, summary={**info, "begin": begin, "end": end})

    def merge(self, params: GridParams, parts: list[ShardResult]) -> ShardResult:
        check_parts(parts, "begin", "end")
        first = parts[0]
        for part in parts[1:]:
            for key in SAME:
                if part.summary[key] != first.summary[key]:
                    raise ValueError(f"grid shards disagree on {key}: {first.summary[key]!r} "
                                     f"vs {part.summary[key]!r}")
            for name in PLANE_ARRAYS:
                if not np.allclose(part.arrays[name], first.arrays[name], rtol=1e-5, atol=1e-6):
                    raise ValueError(f"grid shards built different planes ({name})")
        arrays = {name: np.concatenate([p.arrays[name] for p in parts]) for name in CELL_ARRAYS}
        arrays.update({name: first.arrays[name] for name in PLANE_ARRAYS})
        batch_sizes: list[int] = []
        for part in parts:
            for size in part.summary["batch_sizes"]:
                if not batch_sizes or batch_sizes[-1] != size:
                    batch_sizes.append(size)
        devices: list[str] = []
        for part in parts:
            for device in str(part.summary["device"]).split(", "):
                if device not in devices:
                    devices.append(device)
        errors = [p.summary["fast_path_check_error"] for p in parts if p.summary["fast_path_check_error"] is not None]
        summary = {
            **first.summary,
            "begin": first.summary["begin"],
            "end": parts[-1].summary["end"],
            "batch_sizes": batch_sizes,
            "resumed_cells": sum(int(p.summary["resumed_cells"]) for p in parts),
            "seconds": {key: sum(float(p.summary["seconds"][key]) for p in parts)
                        for key in first.summary["seconds"]},
            "device": ", ".join(devices),
            "fast_path_check_error": max(errors) if errors else None,
        }
        return ShardResult(arrays=arrays, summary=summary)

    def finish(self, params: GridParams, merged: ShardResult, lm: Any, progress: Progress = no_progress,
               **kw: Any) -> Result:
        cells = self.work_units(params)
        if merged.summary["begin"] != 0 or merged.summary["end"] != cells:
            raise ValueError(f"the merged shards cover cells {merged.summary['begin']}..{merged.summary['end']}, "
                             f"not the grid's 0..{cells}")
        info = {key: value for key, value in merged.summary.items() if key not in ("begin", "end")}
        result = grid_result(params, lm.tokenizer, merged.arrays, info)
        progress(1.0, "done")
        return result


GRID_SHARDS = GridShards()
