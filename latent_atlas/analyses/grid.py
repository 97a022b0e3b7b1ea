"""Run kind 2, ``grid``: token maps of a layer.

An N x N grid of points (x, y) is mapped into the residual space by a plane
(``latent_atlas.analyses.planes``); each point is injected as the residual
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
  worker threads (see ``_Workers``); torch's thread count is restored after.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.planes import (
    Plane,
    cell_index,
    direct_plane,
    grid_axis,
    pca_plane,
    random_projection_plane,
    replicated_plane,
    through_states_plane,
)
from latent_atlas.analyses.validation import (
    CatalogueModel,
    MaxTokens,
    check_prompts,
    check_token_counts,
    context_get,
)
from latent_atlas.lm.hooks import RESID_POST, capture_points
from latent_atlas.lm.inject import (
    AffineReadout,
    ContextState,
    affine_readout,
    compute_context,
    readout,
    resid_from_layer,
)
from latent_atlas.lm.loading import LanguageModel

__all__ = [
    "DEFAULT_PROMPTS",
    "GridParams",
    "PlaneKind",
    "StateRef",
    "reduce_logits",
    "run_grid",
    "states_at_layer",
    "topk_rows",
]

PlaneKind = Literal["direct", "replicated", "random_projection", "pca", "through_states"]
GridDtype = Literal["float32", "bfloat16"]

STATIC_MAX_GRID = 4096
STATIC_MAX_LAYER = 4096
MAX_TOP_K = 10
MAX_TOPK_TOKENS = 20_000
TOKEN_TABLE_ROWS = 50

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
FAST_PATH_PROBES = 16

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is Paris, a city on the Seine.",
    "She opened the window and let the cold morning air into the room.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "In 1969, two astronauts walked on the surface of the Moon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "My grandmother's recipe calls for two cups of flour and a pinch of salt.",
    "The defendant pleaded not guilty to all charges on Tuesday.",
    "Quantum entanglement links the states of two particles across any distance.",
    "Once upon a time, a small dragon lived alone at the top of a mountain.",
    "Please remember to bring your passport and boarding pass to the gate.",
    "The derivative of x squared is two x.",
    "Heavy rain is expected across the northern region tomorrow afternoon.",
    "He scored the winning goal in the final minute of the match.",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01';",
    "The orchestra tuned their instruments before the symphony began.",
    "Mitochondria are often called the powerhouse of the cell.",
    "I can't believe it's already December; the year went by so fast!",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "To reset the device, hold the power button for ten seconds.",
    "The treaty was signed by twelve nations in a small village near Geneva.",
    "Bananas are rich in potassium and easy to carry as a snack.",
    "The algorithm sorts the list in O(n log n) time using merge sort.",
    "Thank you for your email; I will get back to you by Friday.",
)


class StateRef(BaseModel):
    """A real state: token ``position`` (negative counts from the end) of prompt ``prompt`` (0-based)."""

    model_config = ConfigDict(extra="forbid")

    prompt: int = Field(ge=0, le=100_000)
    position: int = Field(ge=-100_000, le=100_000)


class GridParams(BaseModel):
    """Parameters of a grid run; see ``latent_atlas.analyses.validation`` for context checks.

    Validation context keys used: ``limits`` (``Limits``: ``max_grid_size``,
    prompt bounds, ``max_tokens_per_prompt``), ``models`` (allowed names),
    ``count_tokens`` (token budgets and positions) and ``n_layers`` (the
    model's block count, for the layer bound).
    """

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    layer: int = Field(ge=0, le=STATIC_MAX_LAYER, description="residual entering block `layer`; L = after the last block")
    size: int = Field(200, ge=2, le=STATIC_MAX_GRID, description="N: the grid has N x N cells")
    spacing: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description="distance between neighbouring grid points")
    center: tuple[float, float] = Field((0.0, 0.0), description="plane coordinates of grid point (N // 2, N // 2)")
    plane: PlaneKind = "direct"
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the random_projection plane")
    prompts: list[str] | None = Field(None, description="prompts for the pca and through_states planes (pca default: a built-in set)")
    states: list[StateRef] | None = Field(None, description="through_states: exactly three (prompt, position)")
    exclude_first_token: bool = Field(True, description="pca: leave position 0 (an outlier in most models) out of the fit")
    max_tokens: MaxTokens = Field(64, description="tokens per prompt (longer prompts are cut) and of the context")
    context: str | None = Field(None, description="the grid point replaces the state of this prompt's last token")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    dtype: GridDtype = "float32"

    @field_validator("layer")
    @classmethod
    def _layer_in_range(cls, value: int, info: ValidationInfo) -> int:
        n_layers = context_get(info.context, "n_layers")
        if n_layers is not None and value > int(n_layers):
            raise PydanticCustomError(
                "layer_out_of_range",
                "layer {layer} is out of range for this model (0..{n_layers})",
                {"layer": value, "n_layers": int(n_layers)},
            )
        return value

    @field_validator("size")
    @classmethod
    def _size_ok(cls, value: int, info: ValidationInfo) -> int:
        limits = context_get(info.context, "limits")
        if limits is not None and value > limits.max_grid_size:
            raise PydanticCustomError(
                "grid_too_large",
                "grid size {size} is too large; this portal allows at most {limit} x {limit}",
                {"size": value, "limit": limits.max_grid_size},
            )
        return value

    @field_validator("center")
    @classmethod
    def _center_ok(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(c) and abs(c) <= 1e9 for c in value):
            raise ValueError("center coordinates must be finite numbers within +-1e9")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None:
            check_prompts(value, context_get(info.context, "limits"))
        return value

    @field_validator("context")
    @classmethod
    def _context_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        limits = context_get(info.context, "limits")
        if limits is not None and len(value) > limits.max_prompt_chars:
            raise PydanticCustomError(
                "context_too_long",
                "the context has {chars} characters; the limit is {limit}",
                {"chars": len(value), "limit": limits.max_prompt_chars},
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> GridParams:
        count_tokens = context_get(info.context, "count_tokens")
        extent = (self.size // 2 + 1) * self.spacing
        if not all(math.isfinite(abs(c) + extent) for c in self.center):
            raise ValueError("the grid's coordinates are not finite")
        if self.plane == "through_states":
            if self.prompts is None:
                raise PydanticCustomError(
                    "prompts_missing", "the through_states plane needs prompts to take its states from"
                )
            if self.states is None or len(self.states) != 3:
                raise PydanticCustomError(
                    "states_count",
                    "the through_states plane needs exactly 3 states (prompt, position); {count} given",
                    {"count": 0 if self.states is None else len(self.states)},
                )
            for number, ref in enumerate(self.states, start=1):
                if ref.prompt >= len(self.prompts):
                    raise PydanticCustomError(
                        "state_prompt",
                        "state {number} names prompt {prompt}, but there are only {count} prompts (0..{last})",
                        {"number": number, "prompt": ref.prompt, "count": len(self.prompts),
                         "last": len(self.prompts) - 1},
                    )
            if count_tokens is not None:
                counts = [min(c, self.max_tokens) for c in count_tokens(list(self.prompts))]
                _check_positions(self.states, counts)
            if len({(ref.prompt, ref.position) for ref in self.states}) < 3:
                raise PydanticCustomError("states_distinct", "the three states must be distinct")
        if count_tokens is not None:
            if self.plane == "pca" and self.prompts is not None:
                check_token_counts(self.prompts, self.max_tokens, count_tokens)
            if self.plane == "through_states" and self.prompts is not None:
                check_token_counts(self.prompts, self.max_tokens, count_tokens)
            if self.context is not None:
                (count,) = count_tokens([self.context])
                if count > self.max_tokens:
                    raise PydanticCustomError(
                        "context_tokens",
                        "the context has {count} tokens; the limit is {limit} (max_tokens)",
                        {"count": int(count), "limit": self.max_tokens},
                    )
        return self


def _check_positions(states: Sequence[StateRef], counts: Sequence[int]) -> list[tuple[int, int]]:
    """Resolve negative positions against token counts; errors name the state (1-based)."""
    resolved: list[tuple[int, int]] = []
    for number, ref in enumerate(states, start=1):
        n = int(counts[ref.prompt])
        position = ref.position + n if ref.position < 0 else ref.position
        if not 0 <= position < n:
            raise PydanticCustomError(
                "state_position",
                "state {number}: position {position} is out of range for prompt {prompt} ({count} tokens: 0..{last})",
                {"number": number, "position": ref.position, "prompt": ref.prompt, "count": n, "last": n - 1},
            )
        resolved.append((ref.prompt, position))
    if len(set(resolved)) < len(resolved):
        raise PydanticCustomError("states_distinct", "the three states must be distinct")
    return resolved


# --- Real states at a layer ----------------------------------------------------------------------


def _tokenise(lm: LanguageModel, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
    rows = [list(map(int, row[:max_tokens])) for row in lm.tokenizer(list(prompts))["input_ids"]]
    for index, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {index} has no tokens")
    return rows


def states_at_layer(
    lm: LanguageModel, layer: int, rows: Sequence[Sequence[int]], *, batch_size: int = 8
) -> list[Tensor]:
    """The residual entering block ``layer`` (``L``: the last block's output, before the
    final norm) for every token of every row: one float32 CPU tensor (n_tokens, d) per row."""
    if not 0 <= layer <= lm.n_layers:
        raise ValueError(f"layer {layer} is out of range for model {lm.name} (0..{lm.n_layers})")
    pad = lm.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    out: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        capture = capture_points(lm, ids, mask)
        tensor = (
            capture.resid_pre(layer) if layer < lm.n_layers else capture.points[lm.n_layers - 1][RESID_POST]
        )
        for i, r in enumerate(chunk):
            out.append(tensor[i, : len(r)].detach().to(device="cpu", dtype=torch.float32).clone())
        del capture, tensor
    return out


def _build_plane(params: GridParams, lm: LanguageModel) -> tuple[Plane, dict[str, Any]]:
    """The plane, plus summary extras (which states were used)."""
    d = lm.d_model
    if params.plane == "direct":
        return direct_plane(d), {}
    if params.plane == "replicated":
        return replicated_plane(d), {}
    if params.plane == "random_projection":
        return random_projection_plane(d, params.seed), {}
    if params.plane == "pca":
        prompts = list(params.prompts) if params.prompts is not None else list(DEFAULT_PROMPTS)
        rows = _tokenise(lm, prompts, params.max_tokens)
        per_prompt = states_at_layer(lm, params.layer, rows)
        first = 1 if params.exclude_first_token else 0
        kept = [s[first:] for s in per_prompt if s.shape[0] > first]
        if not kept or sum(s.shape[0] for s in kept) < 3:
            raise ValueError("the pca plane needs at least 3 token states; give longer or more prompts")
        plane = pca_plane(torch.cat(kept))
        return plane, {"pca_prompts": "built-in" if params.prompts is None else "given"}
    if params.plane == "through_states":
        assert params.prompts is not None and params.states is not None  # checked by GridParams
        rows = _tokenise(lm, params.prompts, params.max_tokens)
        try:
            resolved = _check_positions(params.states, [len(r) for r in rows])
        except PydanticCustomError as exc:
            raise ValueError(str(exc)) from None
        needed = sorted({p for p, _ in resolved})
        states = dict(zip(needed, states_at_layer(lm, params.layer, [rows[p] for p in needed]), strict=True))
        chosen = [states[p][pos] for p, pos in resolved]
        plane = through_states_plane(*chosen)
        refs = [
            {"prompt": p, "position": pos, "token": lm.tokenizer.decode([rows[p][pos]])}
            for p, pos in resolved
        ]
        return plane, {"states": refs}
    raise ValueError(f"unknown plane {params.plane!r}")


# --- Reducing logits to top-k and entropy ---------------------------------------------------------

TOPK_BLOCK = 128  # block width of the two-level top-k
# Shifted logits below this are raised to it before exp: exp(-80) = 1.8e-35, so even a
# vocabulary of a million such terms changes no float32 sum, while exp below about -87
# (float32 underflow) takes a slow path that is some 50x slower on x86 CPUs.
EXP_FLOOR = -80.0


def topk_rows(z: Tensor, k: int, block: int = TOPK_BLOCK) -> tuple[Tensor, Tensor]:
    """``torch.topk(z, k, dim=1)`` (values descending, int64 indices) in two cheap levels.

    The maximum of every block of ``block`` columns is one vectorised pass; the
    top-k elements of a row lie in the k blocks with the largest maxima (a
    block holding a top-k element e is outranked only by blocks whose maxima
    exceed e, and each of those maxima is itself a top-k element, so fewer
    than k blocks outrank it), so a top-k over the ``k * block`` candidates
    finishes the job. Equal values may come out in a different order than
    ``torch.topk``'s.
    """
    rows, width = z.shape
    full = width // block
    if full < 2 * k or rows == 0:
        return torch.topk(z, k, dim=1)
    maxima = z[:, : full * block].unflatten(1, (full, block)).amax(dim=2)
    if width > full * block:
        maxima = torch.cat([maxima, z[:, full * block :].amax(dim=1, keepdim=True)], dim=1)
    chosen = torch.topk(maxima, k, dim=1).indices
    offsets = torch.arange(block, device=z.device)
    index = (chosen.unsqueeze(2) * block + offsets).reshape(rows, k * block)
    outside = index >= width
    candidates = z.gather(1, index.clamp_(max=width - 1))
    candidates.masked_fill_(outside, float("-inf"))
    values, picked = torch.topk(candidates, k, dim=1)
    return values, index.gather(1, picked)


def _row_dots(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` for rows of two (r, V) tensors, without an (r, V) temporary."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(a[i], b[i]) for i in range(a.shape[0])])


def reduce_logits(
    logits: Tensor, k: int, *, chunk_rows: int | None = None, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` ids (int64), their probabilities and the entropy (nats) of rows of logits (B, V).

    ``logits`` must be float32 and may be overwritten (it is used as scratch).
    Rows are processed ``chunk_rows`` at a time (default: all) so that the
    passes over one chunk stay in cache. Probabilities are the softmax of the
    full row: ``p_i = exp(l_i - m) / Z`` with ``m`` the row maximum; entropy
    ``log Z - sum(e * (l - m)) / Z`` with ``e = exp(max(l - m, EXP_FLOOR))``.
    ``scratch`` (at least (chunk, V) float32) saves an allocation per call.
    """
    if logits.dtype != torch.float32 or logits.ndim != 2:
        raise ValueError("reduce_logits expects a 2-d float32 tensor")
    rows, vocab = logits.shape
    k = min(k, vocab)
    ids = torch.empty((rows, k), dtype=torch.long, device=logits.device)
    probs = torch.empty((rows, k), dtype=torch.float32, device=logits.device)
    entropy = torch.empty((rows,), dtype=torch.float32, device=logits.device)
    step = rows if chunk_rows is None else max(1, chunk_rows)
    if scratch is None or scratch.shape[0] < min(step, rows) or scratch.shape[1] != vocab:
        scratch = torch.empty((min(step, rows), vocab), dtype=torch.float32, device=logits.device)
    with torch.inference_mode():
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            z = logits[start:stop]
            e = scratch[: stop - start]
            top_v, top_i = topk_rows(z, k)
            z.sub_(top_v[:, :1]).clamp_(min=EXP_FLOOR)
            torch.exp(z, out=e)
            total = e.sum(dim=1)
            weighted = _row_dots(e, z)
            entropy[start:stop] = (torch.log(total) - weighted / total).clamp_min_(0.0)
            probs[start:stop] = torch.exp(top_v - top_v[:, :1]) / total.unsqueeze(1)
            ids[start:stop] = top_i
    return ids, probs, entropy


class _AffineReducer:
    """Top-k and entropy straight from the fast path: two rank-5 products per chunk.

    With ``basis5 = [a; b; e; bias; 1]`` (5, V) and ``coef = [1/s, x/s, y/s, 1, -m]``
    one product gives the logits shifted by any ``m``: first with ``m = 0`` for
    the top-k (which gives the row maximum), then with the maximum, which
    writes ``z = l - m`` directly instead of a read-modify-write pass.
    """

    def __init__(self, fast: AffineReadout) -> None:
        vocab = fast.basis.shape[1]
        ones = torch.ones((1, vocab), dtype=torch.float32, device=fast.basis.device)
        self.fast = fast
        self.basis5 = torch.cat([fast.basis, fast.bias.unsqueeze(0), ones]).contiguous()
        self.buffers: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        rows = x.shape[0]
        if self.buffers is None or self.buffers[0].shape[0] < rows:
            self.buffers = None
            shape = (rows, self.basis5.shape[1])
            device = self.basis5.device
            self.buffers = (torch.empty(shape, device=device), torch.empty(shape, device=device))
        z, e = self.buffers[0][:rows], self.buffers[1][:rows]
        coef3 = self.fast.coefficients(x, y)
        coef = torch.zeros((rows, 5), dtype=torch.float32, device=coef3.device)
        coef[:, :3] = coef3
        coef[:, 3] = 1.0
        torch.mm(coef, self.basis5, out=z)
        top_v, top_i = topk_rows(z, k)
        coef[:, 4] = -top_v[:, 0]
        torch.mm(coef, self.basis5, out=z)
        torch.exp(z.clamp_(min=EXP_FLOOR), out=e)
        total = e.sum(dim=1)
        weighted = _row_dots(e, z)
        entropy = (torch.log(total) - weighted / total).clamp_min_(0.0)
        probs = torch.exp(top_v - top_v[:, :1]) / total.unsqueeze(1)
        return top_i, probs, entropy


# --- The grid ----------------------------------------------------------------------------------


class _Grid:
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


def _device_kind(lm: LanguageModel) -> str:
    return "cuda" if lm.device.type == "cuda" else "cpu"


def _start_batch(lm: LanguageModel, context: ContextState | None) -> int:
    kind = _device_kind(lm)
    cells = LOGITS_BUDGET[kind] // (4 * lm.vocab_size)
    if context is not None and context.prefix is not None:
        per_cell = 4 * 4 * lm.d_model * (context.prefix.length + 1)
        cells = min(cells, CONTEXT_BUDGET[kind] // per_cell)
    return int(max(1, min(cells, MAX_CELLS[kind])))


def _piece_cells(lm: LanguageModel, context: ContextState | None, workers: int) -> int:
    """Cells per CPU job: ``CPU_PIECE_CELLS``, fewer when a long context's keys would not fit."""
    cells = CPU_PIECE_CELLS
    if context is not None and context.prefix is not None:
        per_cell = 4 * 4 * lm.d_model * (context.prefix.length + 1)
        cells = min(cells, CONTEXT_BUDGET["cpu"] // (per_cell * max(1, workers)))
    return max(1, cells)


def _single_threaded_ops() -> None:
    torch.set_num_threads(1)


class _Workers:
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


class _Output:
    """Preallocated result arrays, filled batch by batch."""

    def __init__(self, cells: int, k: int) -> None:
        self.ids = np.empty((cells, k), dtype=np.int32)
        self.probs = np.empty((cells, k), dtype=np.float32)
        self.entropy = np.empty((cells,), dtype=np.float32)

    def put(self, start: int, ids: Tensor, probs: Tensor, entropy: Tensor) -> None:
        stop = start + ids.shape[0]
        self.ids[start:stop] = ids.cpu().numpy()
        self.probs[start:stop] = probs.cpu().numpy()
        self.entropy[start:stop] = entropy.cpu().numpy()


def _stream(
    total: int,
    first_batch: int,
    compute: Callable[[int, int], None],
    progress: Progress,
    stage: str,
    share: tuple[float, float],
    is_cuda: bool,
) -> list[int]:
    """Run ``compute(start, stop)`` over all cells, halving the batch on out-of-memory."""
    batch = first_batch
    used: list[int] = []
    start = 0
    low, high = share
    while start < total:
        progress(low + (high - low) * start / total, f"{stage}: {start}/{total} cells")
        stop = min(start + batch, total)
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
    return used


def _probe_cells(grid: _Grid, count: int) -> Tensor:
    n = grid.n
    corners = [0, n - 1, n * (n - 1), n * n - 1, (n // 2) * n + n // 2]
    generator = torch.Generator().manual_seed(0)
    extra = torch.randint(0, n * n, (max(0, count - len(corners)),), generator=generator).tolist()
    return torch.tensor(sorted(set(corners + extra)), dtype=torch.long)


def _check_fast_path(
    lm: LanguageModel, fast: AffineReadout, plane: Plane, grid: _Grid
) -> tuple[bool, float, str]:
    """Compare the fast path with final norm + unembedding on a few cells."""
    cells = _probe_cells(grid, FAST_PATH_PROBES)
    x, y = grid._xs[cells % grid.n], grid._ys[cells // grid.n]
    direct = readout(lm, plane.points(x, y, device=lm.device)).float()
    quick = fast.logits(x, y).to(direct.device)
    p_direct, p_quick = torch.softmax(direct, dim=-1), torch.softmax(quick, dim=-1)
    error = float((p_direct - p_quick).abs().max())
    logit_error = float((direct - quick).abs().max()) / max(1.0, float(direct.abs().max()))
    tolerance = 1e-4 if lm.dtype == torch.float32 else 2e-2
    if not (error <= tolerance and logit_error <= 10 * tolerance):
        return False, error, (
            f"fast path disagrees with the direct computation (max probability error {error:.3g}, "
            f"relative logit error {logit_error:.3g}); using the direct computation"
        )
    return True, error, ""


def _decode(lm: LanguageModel, ids: Sequence[int]) -> dict[str, str]:
    return {str(int(i)): lm.tokenizer.decode([int(i)]) for i in ids}


def run_grid(params: GridParams, lm: LanguageModel, progress: Progress = no_progress) -> Result:
    """Compute the token map; see the module docstring for the contract."""
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
    plane, plane_extra = _build_plane(params, lm)
    if plane.d_model != lm.d_model:
        raise ValueError(f"the plane has width {plane.d_model}, the model {lm.d_model}")
    context = None
    if context_ids is not None and params.layer < n_layers:  # at L no block reads the context
        progress(0.02, "computing the context's keys and values")
        context = compute_context(lm, context_ids, compute_dtype=compute_dtype)
    plane_seconds = time.perf_counter() - began

    grid = _Grid(params)
    k = min(params.top_k, lm.vocab_size)
    output = _Output(grid.cells, k)
    kind = _device_kind(lm)
    chunk_rows = CPU_CHUNK_ROWS if kind == "cpu" else None

    fast: AffineReadout | None = None
    fast_error: float | None = None
    fast_note = ""
    if params.layer == n_layers:
        fast = affine_readout(lm, plane.center, plane.u, plane.v)
        if fast is None:
            fast_note = "the final norm is not a plain RMSNorm or LayerNorm; using the direct computation"
        else:
            ok, fast_error, fast_note = _check_fast_path(lm, fast, plane, grid)
            if not ok:
                fast = None

    started = time.perf_counter()
    workers = _Workers(lm)
    local = threading.local()
    try:
        if fast is not None:
            piece = FAST_PIECE_ROWS if kind == "cpu" else None

            def fast_job(x: Tensor, y: Tensor, start: int) -> None:
                reducer = getattr(local, "reducer", None)
                if reducer is None:
                    reducer = local.reducer = _AffineReducer(fast)
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
            piece = _piece_cells(lm, context, workers.count) if kind == "cpu" else None

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

            first = _start_batch(lm, context) if kind == "cuda" else CPU_BATCH_CELLS
            stage = "cells"
        with torch.inference_mode():
            batch_sizes = _stream(grid.cells, first, compute, progress, stage, (0.05, 1.0), kind == "cuda")
    finally:
        workers.close()
    cell_seconds = time.perf_counter() - started

    n = grid.n
    top_ids = output.ids.reshape(n, n, k)
    arrays: dict[str, np.ndarray] = {
        "top_ids": top_ids,
        "top_probs": output.probs.reshape(n, n, k),
        "entropy": output.entropy.reshape(n, n),
        "xs": grid.xs.astype(np.float32),
        "ys": grid.ys.astype(np.float32),
    }
    center, u, v = plane.vectors_float32()
    arrays.update(plane_center=center, plane_u=u, plane_v=v)
    if params.plane == "through_states":
        coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float64)
        cells = [
            [cell_index(cx, n, params.center[0], params.spacing), cell_index(cy, n, params.center[1], params.spacing)]
            for cx, cy in coords
        ]
        cells = [c if min(c) >= 0 else [-1, -1] for c in cells]
        arrays["state_coords"] = coords.astype(np.float32)
        arrays["state_cells"] = np.asarray(cells, dtype=np.int32)

    top1 = top_ids[..., 0].reshape(-1)
    distinct, counts = np.unique(top1, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    tokens = _decode(lm, distinct.tolist())
    table = [
        {"id": int(distinct[i]), "token": tokens[str(int(distinct[i]))], "cells": int(counts[i]),
         "share": float(counts[i]) / grid.cells}
        for i in order[:TOKEN_TABLE_ROWS]
    ]
    others = np.setdiff1d(np.unique(output.ids), distinct)
    topk_complete = others.size <= MAX_TOPK_TOKENS
    topk_tokens = _decode(lm, others.tolist()) if topk_complete else {}

    summary: dict[str, Any] = {
        "layer": params.layer,
        "n_layers": n_layers,
        "d_model": lm.d_model,
        "vocab_size": lm.vocab_size,
        "plane": params.plane,
        "plane_info": {**plane.info, **plane_extra},
        "size": n,
        "top_k": k,
        "layout": "arrays are indexed [j, i] = the cell at (xs[i], ys[j])",
        "entropy_units": "nats",
        "fast_path": fast is not None,
        "fast_path_note": fast_note,
        "fast_path_check_error": fast_error,
        "dtype": "float32" if fast is not None else str(compute_dtype).removeprefix("torch."),
        "requested_dtype": params.dtype,
        "weights_dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "batch_sizes": batch_sizes,
        "position": 0 if context_ids is None else len(context_ids) - 1,
        "context_tokens": 0 if context_ids is None else len(context_ids),
        "tokens": tokens,
        "topk_tokens": topk_tokens,
        "topk_tokens_complete": topk_complete,
        "token_table": table,
        "distinct_top1": int(distinct.size),
        "seconds": {"plane": plane_seconds, "cells": cell_seconds},
        "cells_per_second": grid.cells / cell_seconds if cell_seconds > 0 else None,
        "config": params.model_dump(mode="json"),
    }
    progress(1.0, "done")
    return Result(arrays=arrays, summary=summary)
