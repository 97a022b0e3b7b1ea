"""Run kind 2, ``grid``: the run. Token maps of a layer.

An N x N grid of points (x, y) is mapped into the residual space by a plane
(``latent_atlas.analyses.grid.planes``); each point is injected as the residual
stream entering block ``layer`` (``layer == L``: after the last block) and the
rest of the model runs (``latent_atlas.lm.inject``). Each cell keeps its
top-k next tokens with probabilities and the entropy (nats) of the
next-token distribution. Invariants:

* layout: cell ``(j, i)`` is the point ``(xs[i], ys[j])``; ``top_ids[j, i]``,
  ``top_probs[j, i]`` and ``entropy[j, i]`` describe it; cells are computed
  in row-major order (``n = j * N + i``);
* memory does not grow with N beyond the result arrays: cells stream in
  batches, the full logits of at most one batch exist at a time, and each
  batch's top-k goes straight into preallocated ``(N * N, k)`` arrays;
* ``progress(fraction, stage)`` is called once before every batch (it may
  raise ``Cancelled``; nothing needs cleaning up);
* a CUDA out-of-memory error halves the batch and retries the same cells;
  every batch size used is listed in ``summary["batch_sizes"]``;
* at ``layer == L`` the exact fast path (``AffineReadout``) is used when the
  final norm is a plain RMSNorm or LayerNorm and a probe of grid cells agrees
  with the direct computation (``summary["fast_path"]``); otherwise the
  direct computation runs;
* with a ``context`` the grid point replaces the state of the context's last
  token at ``layer``; the keys and values of the tokens before it are
  computed once and read by every batch;
* bounds that need the model (layer range, token positions) are checked at
  the start of ``run_grid`` with a clear ``ValueError`` before any cell runs;
  everything else is checked by ``GridParams`` before the run is queued;
* token strings go to the summary only, keyed by the id as a string
  (``tokens``: every top-1 id; ``topk_tokens``: the other ids in the top-k,
  when there are at most ``MAX_TOPK_TOKENS`` of them);
* ``through_states`` also returns ``state_coords`` (3, 2): the plane
  coordinates (0, 0), (1, 0), (0, 1) of the three states, and ``state_cells``
  (3, 2): their grid indices ``(i, j)``, or ``(-1, -1)`` when the spacing and
  centre do not put that state on a grid point;
* on a CPU the cells of a batch are split into jobs run by single-threaded
  worker threads (see ``Workers``); torch's thread count is restored after;
* with a ``checkpoint`` the cells go piece by piece (``grid.resume``): each
  finished piece is saved, pieces an earlier attempt saved are loaded instead
  of computed (``summary["resumed_cells"]``), and the arrays equal an
  uninterrupted run's;
* ``run_grid`` = ``compute_cells`` over every cell (the part that needs the
  model) + ``grid_result`` (arrays and summary, needs only the tokenizer); a
  sharded grid (``grid.shard``) runs ``compute_cells`` on spans of pieces and
  ``grid_result`` on their concatenation.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_atlas.analyses.base import Checkpoint, Progress, Result, no_progress
from latent_atlas.analyses.grid.fast_path import AffineReducer, check_fast_path
from latent_atlas.analyses.grid.params import GridParams
from latent_atlas.analyses.grid.planes import cell_index, grid_axis
from latent_atlas.analyses.grid.resume import stream_resumable
from latent_atlas.analyses.grid.states import build_plane
from latent_atlas.analyses.grid.streaming import (
    CPU_BATCH_CELLS,
    CPU_CHUNK_ROWS,
    FAST_CHUNK_ROWS,
    FAST_PATH_CELLS,
    FAST_PIECE_ROWS,
    LOGITS_BUDGET,
    CellGrid,
    Output,
    Workers,
    device_kind,
    piece_cells,
    start_batch,
    stream_span,
)
from latent_atlas.analyses.grid.topk import reduce_logits
from latent_atlas.lm.inject import (
    AffineReadout,
    affine_readout,
    compute_context,
    readout,
    resid_from_layer,
)
from latent_atlas.lm.loading import LanguageModel

__all__ = ["CELL_INFO_KEYS", "MAX_TOPK_TOKENS", "TOKEN_TABLE_ROWS", "compute_cells", "grid_result", "run_grid"]

MAX_TOPK_TOKENS = 20_000
TOKEN_TABLE_ROWS = 50


def _decode(tokenizer: Any, ids: Sequence[int]) -> dict[str, str]:
    return {str(int(i)): tokenizer.decode([int(i)]) for i in ids}


def run_grid(params: GridParams, lm: LanguageModel, progress: Progress = no_progress,
             checkpoint: Checkpoint | None = None) -> Result:
    """Compute the token map; see the module docstring for the contract."""
    cells = params.size * params.size
    arrays, info = compute_cells(params, lm, 0, cells, progress, checkpoint)
    result = grid_result(params, lm.tokenizer, arrays, info)
    progress(1.0, "done")
    return result


def compute_cells(params: GridParams, lm: LanguageModel, begin: int, end: int,
                  progress: Progress = no_progress,
                  checkpoint: Checkpoint | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Cells ``begin:end`` (row-major) of the grid: the part of a run that needs the model.

    Returns arrays ``ids`` (c, k) int32, ``probs`` (c, k) float32, ``entropy``
    (c,) float32 for those cells, and the plane's ``plane_center``/``plane_u``/
    ``plane_v`` (float32), plus a JSON-safe ``info`` dict (``CELL_INFO_KEYS``)
    that ``grid_result`` turns into the run's summary. Progress runs from 0 to
    1 over this span. With a ``checkpoint``, ``begin`` and ``end`` must lie on
    piece boundaries (``grid.resume``; ``end`` may be the grid's last cell).
    """
    n_layers = lm.n_layers
    if not 0 <= params.layer <= n_layers:
        raise ValueError(f"layer {params.layer} is out of range for model {params.model} (0..{n_layers})")
    began = time.perf_counter()
    requested = getattr(torch, params.dtype)
    compute_dtype = requested if lm.dtype == torch.float32 else lm.dtype
    context_ids: list[int] | None = None
    if params.context is not None:
        context_ids = [int(i) for i in lm.tokenizer(params.context)["input_ids"]]
        if not context_ids:
            raise ValueError("the context has no tokens")
        if len(context_ids) > params.max_tokens:
            raise ValueError(
                f"the context has {len(context_ids)} tokens; the limit is {params.max_tokens} (max_tokens)"
            )

    progress(0.0, f"building the {params.plane} plane")
    plane, plane_extra = build_plane(params, lm)
    if plane.d_model != lm.d_model:
        raise ValueError(f"the plane has width {plane.d_model}, the model {lm.d_model}")
    context = None
    if context_ids is not None and params.layer < n_layers:  # at L no block reads the context
        progress(0.02, "computing the context's keys and values")
        context = compute_context(lm, context_ids, compute_dtype=compute_dtype)
    plane_seconds = time.perf_counter() - began

    grid = CellGrid(params)
    if not 0 <= begin <= end <= grid.cells:
        raise ValueError(f"cells {begin}..{end} are outside the grid's {grid.cells} cells")
    k = min(params.top_k, lm.vocab_size)
    output = Output(end - begin, k, base=begin)
    kind = device_kind(lm)
    chunk_rows = CPU_CHUNK_ROWS if kind == "cpu" else None

    fast: AffineReadout | None = None
    fast_error: float | None = None
    fast_note = ""
    if params.layer == n_layers:
        fast = affine_readout(lm, plane.center, plane.u, plane.v)
        if fast is None:
            fast_note = "the final norm is not a plain RMSNorm or LayerNorm; using the direct computation"
        else:
            ok, fast_error, fast_note = check_fast_path(lm, fast, plane, grid)
            if not ok:
                fast = None

    started = time.perf_counter()
    workers = Workers(lm)
    local = threading.local()
    try:
        if fast is not None:
            piece = FAST_PIECE_ROWS if kind == "cpu" else None

            def fast_job(x: Tensor, y: Tensor, start: int) -> None:
                reducer = getattr(local, "reducer", None)
                if reducer is None:
                    reducer = local.reducer = AffineReducer(fast)
                step = x.shape[0] if chunk_rows is None else min(FAST_CHUNK_ROWS, chunk_rows)
                with torch.inference_mode():
                    for s in range(0, x.shape[0], step):
                        output.put(start + s, *reducer(x[s : s + step], y[s : s + step], k))

            def compute(start: int, stop: int) -> None:
                x, y = grid.coordinates(start, stop)
                size = stop - start if piece is None else piece
                workers.run([
                    functools.partial(fast_job, x[s : s + size], y[s : s + size], start + s)
                    for s in range(0, stop - start, size)
                ])

            first = FAST_PATH_CELLS[kind]
            if kind == "cuda":  # the whole batch's logits exist at once on a GPU
                first = max(1, min(first, LOGITS_BUDGET[kind] // (4 * lm.vocab_size)))
            stage = "cells (fast path)"
        else:
            prefix = None if context is None else context.prefix
            piece = piece_cells(lm, context, workers.count) if kind == "cpu" else None

            def job(x: Tensor, y: Tensor, start: int) -> None:
                with torch.inference_mode():
                    states = plane.points(x, y, device=lm.device)
                    resid = resid_from_layer(lm, params.layer, states, prefix=prefix, compute_dtype=compute_dtype)
                    logits = readout(lm, resid, compute_dtype=compute_dtype).float()
                    del resid
                    scratch = getattr(local, "scratch", None)
                    if scratch is None and chunk_rows is not None:
                        scratch = local.scratch = torch.empty((chunk_rows, lm.vocab_size), dtype=torch.float32)
                    output.put(start, *reduce_logits(logits, k, chunk_rows=chunk_rows, scratch=scratch))

            def compute(start: int, stop: int) -> None:
                x, y = grid.coordinates(start, stop)
                size = stop - start if piece is None else piece
                workers.run([
                    functools.partial(job, x[s : s + size], y[s : s + size], start + s)
                    for s in range(0, stop - start, size)
                ])

            first = start_batch(lm, context) if kind == "cuda" else CPU_BATCH_CELLS
            stage = "cells"
        resumed = 0
        with torch.inference_mode():
            if checkpoint is None:
                batch_sizes = []
                stream_span(begin, end, grid.cells, first, compute, progress, stage, (0.05, 1.0),
                            kind == "cuda", batch_sizes, (begin, end - begin))
            else:
                path = "fast" if fast is not None else "direct"
                dtype_name = "float32" if fast is not None else str(compute_dtype).removeprefix("torch.")
                signature = f"grid-{path}-{kind}-{dtype_name}-k{k}-n{grid.cells}"
                streamed = stream_resumable(grid.cells, first, compute, progress, stage, (0.05, 1.0),
                                            kind == "cuda", output, checkpoint, signature,
                                            (begin, end - begin))
                batch_sizes, resumed = streamed.batch_sizes, streamed.resumed_cells
    finally:
        workers.close()
    cell_seconds = time.perf_counter() - started

    center, u, v = plane.vectors_float32()
    arrays = {"ids": output.ids, "probs": output.probs, "entropy": output.entropy,
              "plane_center": center, "plane_u": u, "plane_v": v}
    info: dict[str, Any] = {
        "n_layers": n_layers,
        "d_model": lm.d_model,
        "vocab_size": lm.vocab_size,
        "top_k": k,
        "plane_info": {**plane.info, **plane_extra},
        "fast_path": fast is not None,
        "fast_path_note": fast_note,
        "fast_path_check_error": fast_error,
        "dtype": "float32" if fast is not None else str(compute_dtype).removeprefix("torch."),
        "weights_dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "batch_sizes": batch_sizes,
        "resumed_cells": resumed,
        "position": 0 if context_ids is None else len(context_ids) - 1,
        "context_tokens": 0 if context_ids is None else len(context_ids),
        "seconds": {"plane": plane_seconds, "cells": cell_seconds},
    }
    return arrays, info


# What ``compute_cells`` reports about its cells (``info``), besides their arrays.
CELL_INFO_KEYS = ("n_layers", "d_model", "vocab_size", "top_k", "plane_info", "fast_path", "fast_path_note",
                  "fast_path_check_error", "dtype", "weights_dtype", "device", "batch_sizes", "resumed_cells",
                  "position", "context_tokens", "seconds")


def grid_result(params: GridParams, tokenizer: Any, arrays: dict[str, np.ndarray],
                info: dict[str, Any]) -> Result:
    """The run's ``Result`` from every cell's arrays and ``info`` (``compute_cells``); no model needed.

    ``arrays`` hold all N * N cells in row-major order; only ``tokenizer.decode``
    is used (token strings for the summary).
    """
    n = params.size
    cells = n * n
    k = int(info["top_k"])
    if arrays["ids"].shape != (cells, k):
        raise ValueError(f"expected the top-k of {cells} cells, got an array of shape {arrays['ids'].shape}")
    xs = grid_axis(n, params.center[0], params.spacing)
    ys = grid_axis(n, params.center[1], params.spacing)
    top_ids = arrays["ids"].reshape(n, n, k)
    out: dict[str, np.ndarray] = {
        "top_ids": top_ids,
        "top_probs": arrays["probs"].reshape(n, n, k),
        "entropy": arrays["entropy"].reshape(n, n),
        "xs": xs.astype(np.float32),
        "ys": ys.astype(np.float32),
        "plane_center": arrays["plane_center"],
        "plane_u": arrays["plane_u"],
        "plane_v": arrays["plane_v"],
    }
    if params.plane == "through_states":
        coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float64)
        state_cells = [
            [cell_index(cx, n, params.center[0], params.spacing), cell_index(cy, n, params.center[1], params.spacing)]
            for cx, cy in coords
        ]
        state_cells = [c if min(c) >= 0 else [-1, -1] for c in state_cells]
        out["state_coords"] = coords.astype(np.float32)
        out["state_cells"] = np.asarray(state_cells, dtype=np.int32)

    top1 = top_ids[..., 0].reshape(-1)
    distinct, counts = np.unique(top1, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    tokens = _decode(tokenizer, distinct.tolist())
    table = [
        {"id": int(distinct[i]), "token": tokens[str(int(distinct[i]))], "cells": int(counts[i]),
         "share": float(counts[i]) / cells}
        for i in order[:TOKEN_TABLE_ROWS]
    ]
    others = np.setdiff1d(np.unique(arrays["ids"]), distinct)
    topk_complete = others.size <= MAX_TOPK_TOKENS
    topk_tokens = _decode(tokenizer, others.tolist()) if topk_complete else {}
    cell_seconds = info["seconds"]["cells"]

    summary: dict[str, Any] = {
        "layer": params.layer,
        "n_layers": info["n_layers"],
        "d_model": info["d_model"],
        "vocab_size": info["vocab_size"],
        "plane": params.plane,
        "plane_info": info["plane_info"],
        "size": n,
        "top_k": k,
        "layout": "arrays are indexed [j, i] = the cell at (xs[i], ys[j])",
        "entropy_units": "nats",
        "fast_path": info["fast_path"],
        "fast_path_note": info["fast_path_note"],
        "fast_path_check_error": info["fast_path_check_error"],
        "dtype": info["dtype"],
        "requested_dtype": params.dtype,
        "weights_dtype": info["weights_dtype"],
        "device": info["device"],
        "batch_sizes": info["batch_sizes"],
        "resumed_cells": info["resumed_cells"],
        "position": info["position"],
        "context_tokens": info["context_tokens"],
        "tokens": tokens,
        "topk_tokens": topk_tokens,
        "topk_tokens_complete": topk_complete,
        "token_table": table,
        "distinct_top1": int(distinct.size),
        "seconds": dict(info["seconds"]),
        "cells_per_second": cells / cell_seconds if cell_seconds > 0 else None,
        "config": params.model_dump(mode="json"),
    }
    return Result(arrays=out, summary=summary)
