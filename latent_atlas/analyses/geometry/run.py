"""Run kind 1, ``geometry``: the run. Latent-space geometry of the four points of every block.

After Ning, Rangaraju & Kuo (2025). For each prompt (typed, or a sequence
sampled from a corpus: ``token_ids``) and each real token, the four points
(``COMPONENTS``) of the chosen blocks are captured, optionally averaged (over
prompts per position, or over positions per prompt) and stored once as raw
states; ``latent_atlas.analyses.geometry.points.describe`` then reduces them
(PCA or UMAP, 2D or 3D, optionally unit-normalised, optionally fitted without
position 0) and computes the statistics the views show. Invariants:

* padding never counts: padded positions are not stored, not averaged and not
  part of any fit; a prompt's states do not depend on its batch mates;
* order of operations per point: average (if any) -> record the L2 ``norm`` ->
  store the raw state -> divide by the norm (if ``unit_normalise``) -> fit;
* memory: one batch of activations on the device plus the stored states
  (``states_dtype``, float16 by default: 2 bytes per value; a run whose values
  exceed float16's range switches to float32, said in the summary). Without
  averaging nothing else of size (points x d_model) is ever held: each
  (layer, component) block of a batch goes straight into the buffer, and the
  reduction reads it back in chunks of ``geometry_points.CHUNK`` rows;
* the hook points are checked on the first batch of every run
  (``summary["hook_check_max_abs_error"]``), a mismatch fails the run;
* points are ordered layer-major, then component, then prompt, then position
  (or position / prompt alone when averaged); component indices are global
  (``COMPONENTS``) and layers absolute, also when only some are captured;
* ``Result.arrays`` names are a contract with the views and the re-projection
  kind: ``coords``, ``layer``, ``component``, ``position``, ``prompt_index``,
  ``token_id``, ``norm``, ``explained_variance_ratio``, ``layer_norm_mean``
  (n_layers, 4; NaN for what was not captured), ``states`` (if stored),
  ``attn_mlp_coords`` / ``attn_mlp_explained`` (when both are captured),
  ``lens_ids`` / ``lens_probs`` (P, 5; -1 / 0 where the lens was not computed),
  ``positional_coords`` / ``positional_position`` / ``positional_count`` /
  ``positional_explained``; -1 marks a field that averaging removed;
* the logit lens (final norm + unembedding, top 5) is computed in the worker
  for every point when there are at most ``lens_max_points`` (at most
  ``LENS_CPU_MAX_POINTS`` on a CPU), else for a seeded sample of that many
  (``summary["lens"]`` says which and the cap); its token strings are in
  ``summary["lens"]["tokens"]`` keyed by id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic_core import PydanticCustomError
from torch import Tensor

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.geometry.params import GeometryParams, check_token_ids
from latent_atlas.analyses.geometry.points import Points, describe
from latent_atlas.lm.hooks import COMPONENTS, capture_points, verify_capture
from latent_atlas.lm.lens import logit_lens
from latent_atlas.lm.loading import LanguageModel
from latent_atlas.reduce import PCAAccumulator, pca_fit

__all__ = ["LENS_K", "capture", "describe_run", "plan", "run_geometry"]

CAPTURE_SHARE = 0.75  # fraction of the progress bar spent capturing
LENS_K = 5
LENS_CPU_MAX_POINTS = 4_096  # on a CPU the lens costs ~1-2 ms a point (d_model x vocab products); more on demand
FLOAT16_MAX = 65_000.0  # a little below float16's 65504
POSITIONAL_COMPONENT = "resid_post"


def _tokenise(lm: LanguageModel, params: GeometryParams) -> tuple[list[list[int]], list[bool]]:
    if params.token_ids is not None:
        check_token_ids(params.token_ids, lm.vocab_size)
        return [list(map(int, row)) for row in params.token_ids], [False] * len(params.token_ids)
    full = lm.tokenizer(params.prompts)["input_ids"]
    ids = [list(map(int, row[: params.max_tokens])) for row in full]
    truncated = [len(row) > params.max_tokens for row in full]
    for index, row in enumerate(ids, start=1):
        if not row:
            raise ValueError(f"prompt {index} has no tokens")
    return ids, truncated


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


class _Lens:
    """Top-k of the logit lens for the chosen points, written into (P, k) arrays."""

    def __init__(self, lm: LanguageModel, n_points: int, cap: int, enabled: bool, seed: int) -> None:
        self.lm = lm
        if lm.device.type == "cpu":
            cap = min(cap, LENS_CPU_MAX_POINTS)
        self.cap = cap
        self.enabled = enabled and cap > 0
        self.n_points = n_points
        self.ids = np.full((n_points, LENS_K), -1, dtype=np.int32)
        self.probs = np.zeros((n_points, LENS_K), dtype=np.float16)
        self.mask: np.ndarray | None = None  # None: every point
        self.sampled = False
        if self.enabled and n_points > cap:
            rng = np.random.default_rng(seed)
            self.mask = np.zeros(n_points, dtype=bool)
            self.mask[rng.choice(n_points, size=cap, replace=False)] = True
            self.sampled = True

    def add(self, states: Tensor, index: np.ndarray) -> None:
        """``states`` (n, d) raw, on any device; ``index`` (n,) their point indices."""
        if not self.enabled:
            return
        if self.mask is not None:
            keep = self.mask[index]
            if not keep.any():
                return
            states = states[torch.from_numpy(keep).to(states.device)]
            index = index[keep]
        top_ids, top_probs = logit_lens(self.lm, states, k=LENS_K)
        k = top_ids.shape[-1]
        self.ids[index, :k] = top_ids.numpy().astype(np.int32)
        self.probs[index, :k] = top_probs.numpy().astype(np.float16)

    def summary(self) -> dict[str, Any]:
        computed = int((self.ids[:, 0] >= 0).sum())
        unique = np.unique(self.ids[self.ids >= 0])
        tokens = self.lm.tokenizer.batch_decode([[int(t)] for t in unique]) if len(unique) else []
        return {
            "k": LENS_K,
            "enabled": self.enabled,
            "computed": computed,
            "points": self.n_points,
            "sampled": self.sampled,
            "max_points": self.cap,
            "method": "final norm + unembedding of the raw state, softmax over the vocabulary",
            "tokens": {str(int(t)): s for t, s in zip(unique, tokens, strict=True)},
        }


class _States:
    """The (P, d) buffer of raw states in the storage dtype; upgrades to float32 if needed."""

    def __init__(self, n_points: int, d_model: int, dtype: str) -> None:
        self.array = np.empty((n_points, d_model), dtype=np.float16 if dtype == "float16" else np.float32)
        self.upgraded = False

    def write(self, index: slice | np.ndarray, values: Tensor) -> None:
        if (self.array.dtype == np.float16 and values.numel()
                and max(float(values.max()), -float(values.min())) > FLOAT16_MAX):  # no temporary copy
            self.array = self.array.astype(np.float32)
            self.upgraded = True
        target = torch.from_numpy(self.array)
        values = values.to(device="cpu", dtype=target.dtype)
        if isinstance(index, slice):
            target[index].copy_(values)
        else:
            target[torch.from_numpy(index)] = values


class _Capture:
    """Runs the batches and keeps what the averaging mode needs."""

    def __init__(self, params: GeometryParams, lm: LanguageModel, ids: list[list[int]],
                 layers: range, comps: list[int], *, first_token: int = 0, all_tokens: int | None = None,
                 width: int | None = None) -> None:
        """``ids``: the prompts to capture; for a shard (a slice of the run's prompts),
        ``first_token`` is the run's token index of its first token, ``all_tokens``
        the run's token count and ``width`` its longest prompt, so the logit lens
        samples the run's points and position sums have the run's width."""
        self.params, self.lm, self.ids = params, lm, ids
        self.layers, self.comps = layers, comps
        self.n_tokens = [len(row) for row in ids]
        self.total = sum(self.n_tokens)
        self.first_token = first_token
        self.all_tokens = self.total if all_tokens is None else all_tokens
        self.d_model = lm.d_model
        self.device = lm.device
        self.blocks = len(layers) * len(comps)
        if params.average == "none":
            self.states = _States(self.blocks * self.total, self.d_model, params.states_dtype)
            self.norms = np.empty(self.blocks * self.total, dtype=np.float32)
            self.lens = _Lens(lm, self.blocks * self.all_tokens, params.lens_max_points, params.logit_lens,
                              params.seed)
            self.offset = 0
        elif params.average == "samples":
            self.sums = torch.zeros((len(layers), len(comps), width or max(self.n_tokens), self.d_model),
                                    dtype=torch.float64, device=self.device)
        else:
            self.means = torch.zeros((len(layers), len(comps), len(ids), self.d_model),
                                     dtype=torch.float64, device=self.device)
        self.positional: _PositionalMeans | None = None

    def add(self, capture: Any, mask: Tensor, prompt_start: int) -> None:
        mask = mask.to(self.device)
        if self.positional is not None:
            self.positional.add(capture, mask)
        if self.params.average == "none":
            # Block by block (layer, component): nothing beyond the model's own activations and
            # one (tokens, d_model) block is held; each block's rows are contiguous in the buffer.
            keep = mask.bool()
            n = int(keep.sum())
            for li, layer in enumerate(self.layers):
                for ci, comp in enumerate(self.comps):
                    block = capture.points[layer][comp][keep].float()  # (n, D), batch then position
                    start = (li * len(self.comps) + ci) * self.total + self.offset
                    self.states.write(slice(start, start + n), block)
                    self.norms[start : start + n] = torch.linalg.vector_norm(block, dim=-1).cpu().numpy()
                    point = (li * len(self.comps) + ci) * self.all_tokens + self.first_token + self.offset
                    self.lens.add(block, np.arange(point, point + n))
            self.offset += n
            return
        weights = mask.to(torch.float64).unsqueeze(-1)  # (B, S, 1)
        counts = weights.sum(dim=1)  # (B, 1)
        for li, layer in enumerate(self.layers):
            for ci, comp in enumerate(self.comps):
                tensor = capture.points[layer][comp]
                masked = tensor.to(torch.float64) * weights
                if self.params.average == "samples":
                    self.sums[li, ci, : tensor.shape[1]] += masked.sum(dim=0)
                else:
                    rows = slice(prompt_start, prompt_start + tensor.shape[0])
                    self.means[li, ci, rows] = masked.sum(dim=1) / counts

    def finish(self) -> tuple[np.ndarray, np.ndarray, _Lens, bool]:
        """States (P, d) in the storage dtype, norms (P,), the lens, whether float16 overflowed."""
        if self.params.average == "none":
            return self.states.array, self.norms, self.lens, self.states.upgraded
        if self.params.average == "samples":
            per_position = np.bincount(
                np.concatenate([np.arange(n) for n in self.n_tokens]), minlength=max(self.n_tokens)
            )
            counts = torch.as_tensor(per_position, dtype=torch.float64, device=self.device)
            means = (self.sums / counts[:, None]).float()
        else:
            means = self.means.float()
        flat = means.reshape(-1, self.d_model)
        norms = torch.linalg.vector_norm(flat, dim=-1).cpu().numpy().astype(np.float32)
        states = _States(flat.shape[0], self.d_model, self.params.states_dtype)
        states.write(slice(None), flat)
        lens = _Lens(self.lm, flat.shape[0], self.params.lens_max_points, self.params.logit_lens,
                     self.params.seed)
        lens.add(flat, np.arange(flat.shape[0]))
        return states.array, norms, lens, states.upgraded


class _PositionalMeans:
    """Sum of the ``resid_post`` state per position at one layer, over prompts (float64)."""

    def __init__(self, layer: int, max_len: int, d_model: int, device: torch.device) -> None:
        self.layer = layer
        self.sums = torch.zeros((max_len, d_model), dtype=torch.float64, device=device)
        self.counts = torch.zeros(max_len, dtype=torch.float64, device=device)

    def add(self, capture: Any, mask: Tensor) -> None:
        tensor = capture.points[self.layer][COMPONENTS.index(POSITIONAL_COMPONENT)]
        weights = mask.to(torch.float64)
        width = tensor.shape[1]
        self.sums[:width] += (tensor.to(torch.float64) * weights.unsqueeze(-1)).sum(dim=0)
        self.counts[:width] += weights.sum(dim=0)


def _positional(lm: LanguageModel, means: _PositionalMeans | None,
                average: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The positional-structure view: learned position embeddings, or mean states per position."""
    embedding = lm.adapter.position_embedding_of(lm.model)
    if embedding is not None:
        weights = embedding.weight.detach().float().cpu().numpy()
        fit = pca_fit(weights, min(3, weights.shape[1]))
        coords = fit.transform(weights)
        return (
            {"positional_coords": coords, "positional_position": np.arange(len(weights), dtype=np.int32),
             "positional_count": np.zeros(len(weights), dtype=np.int32),
             "positional_explained": fit.explained_variance_ratio.astype(np.float32)},
            {"kind": "learned", "layer": None, "n_positions": int(len(weights)),
             "reason": f"{lm.adapter.family} learns a position embedding: its {len(weights)} rows "
                       "(one per position) projected to 3D by PCA; GPT-2's form a helix."},
        )
    assert means is not None
    counts = means.counts.cpu().numpy()
    positions = np.flatnonzero(counts > 0)
    positions = positions[positions > 0]  # position 0's state is an outlier (attention sink)
    if len(positions) < 4:
        return {}, {"kind": "none", "layer": means.layer,
                    "reason": "rotary model: the mean state per position needs prompts of at least "
                              "5 tokens (position 0 is left out); these prompts are shorter."}
    mean = (means.sums[positions] / means.counts[positions, None]).float().cpu().numpy()
    fit = pca_fit(mean, min(3, mean.shape[1]))
    why = (f"{lm.adapter.family} encodes positions by rotary embeddings inside attention, so there "
           "is no position-embedding table: shown is the mean {comp} state per position across "
           f"prompts at layer {means.layer}, projected to 3D by PCA; position 0 (an outlier, the "
           "attention sink) is left out.").replace("{comp}", POSITIONAL_COMPONENT)
    if average != "none":
        why += " Computed from the unaveraged states."
    return (
        {"positional_coords": fit.transform(mean), "positional_position": positions.astype(np.int32),
         "positional_count": counts[positions].astype(np.int32),
         "positional_explained": fit.explained_variance_ratio.astype(np.float32)},
        {"kind": "mean_state", "layer": means.layer, "component": POSITIONAL_COMPONENT,
         "n_positions": int(len(positions)), "reason": why},
    )


def _metadata(params: GeometryParams, layers: range, comps: list[int],
              ids: list[list[int]]) -> dict[str, np.ndarray]:
    n_tokens = [len(row) for row in ids]
    if params.average == "none":
        position = np.concatenate([np.arange(n) for n in n_tokens]).astype(np.int32)
        prompt = np.repeat(np.arange(len(ids)), n_tokens).astype(np.int32)
        token = np.concatenate([np.asarray(row) for row in ids]).astype(np.int32)
    elif params.average == "samples":
        position = np.arange(max(n_tokens), dtype=np.int32)
        prompt = np.full_like(position, -1)
        token = np.full_like(position, -1)
    else:
        prompt = np.arange(len(ids), dtype=np.int32)
        position = np.full_like(prompt, -1)
        token = np.full_like(prompt, -1)
    per_block = position.shape[0]
    blocks = len(layers) * len(comps)
    return {
        "layer": np.repeat(np.asarray(list(layers)), len(comps) * per_block).astype(np.int16),
        "component": np.tile(np.repeat(np.asarray(comps), per_block), len(layers)).astype(np.int8),
        "position": np.tile(position, blocks),
        "prompt_index": np.tile(prompt, blocks),
        "token_id": np.tile(token, blocks),
    }


def plan(params: GeometryParams, lm: LanguageModel) -> tuple[range, list[int], list[list[int]], list[bool]]:
    """The captured layers, component indices, every prompt's token ids and which were truncated."""
    try:
        layers = params.layer_range(lm.n_layers)
    except PydanticCustomError as exc:
        raise ValueError(str(exc)) from None
    comps = [COMPONENTS.index(c) for c in params.components]
    ids, truncated = _tokenise(lm, params)
    if lm.tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token")
    return layers, comps, ids, truncated


def capture(params: GeometryParams, lm: LanguageModel, ids: list[list[int]], layers: range, comps: list[int],
            begin: int, end: int, progress: Progress, share: float) -> tuple[_Capture, float]:
    """Capture prompts ``begin:end`` of ``ids`` (batches of ``batch_size`` from ``begin``).

    Returns the capture state and the hook check's error (first batch); progress
    runs from 0 to ``share``.
    """
    n_tokens = [len(row) for row in ids]
    pad_id = lm.tokenizer.pad_token_id
    part = ids[begin:end]
    starts = list(range(0, len(part), params.batch_size))
    capture_state = _Capture(params, lm, part, layers, comps, first_token=sum(n_tokens[:begin]),
                             all_tokens=sum(n_tokens), width=max(n_tokens))
    positional_layer = params.positional_layer if params.positional_layer is not None else lm.n_layers // 2
    if lm.adapter.position_embedding is None:
        capture_state.positional = _PositionalMeans(positional_layer, max(n_tokens), lm.d_model, lm.device)
    hook_error = 0.0
    for number, start in enumerate(starts, start=1):
        progress(share * (number - 1) / len(starts), f"capturing batch {number}/{len(starts)}")
        input_ids, mask = _pad(part[start : start + params.batch_size], pad_id)
        first = number == 1
        captured = capture_points(lm, input_ids, mask, hidden_states=first)
        if first:
            hook_error = verify_capture(lm, captured, mask)
            captured.hidden_states = None
        capture_state.add(captured, mask, start)
        del captured
    return capture_state, hook_error


def run_geometry(params: GeometryParams, lm: LanguageModel, progress: Progress = no_progress) -> Result:
    """Capture, average, store, reduce and describe; see the module docstring for the contract."""
    layers, comps, ids, truncated = plan(params, lm)
    capture_state, hook_error = capture(params, lm, ids, layers, comps, 0, len(ids), progress, CAPTURE_SHARE)
    progress(CAPTURE_SHARE, "logit lens and positional structure")
    states, norms, lens, upgraded = capture_state.finish()
    positional_means = capture_state.positional
    del capture_state
    return describe_run(params, lm, ids, truncated, layers, comps, states, norms, lens, upgraded,
                        positional_means, hook_error, progress)


def describe_run(params: GeometryParams, lm: LanguageModel, ids: list[list[int]], truncated: list[bool],
                 layers: range, comps: list[int], states: np.ndarray, norms: np.ndarray, lens: _Lens,
                 upgraded: bool, positional_means: _PositionalMeans | None, hook_error: float,
                 progress: Progress, fits: dict[str, PCAAccumulator] | None = None) -> Result:
    """Reduce and describe captured states: the run's ``Result`` (``fits``: see ``points.describe``)."""
    n_tokens = [len(row) for row in ids]
    meta = _metadata(params, layers, comps, ids)
    points = Points(states=states, norm=norms, **meta)
    reduced, described = describe(
        points, params.reduce_options(), lm.n_layers, device=lm.device,
        progress=lambda f, s: progress(CAPTURE_SHARE + (1 - CAPTURE_SHARE) * 0.95 * f, s), fits=fits,
    )
    positional_arrays, positional_summary = _positional(lm, positional_means, params.average)
    arrays: dict[str, np.ndarray] = {**meta, **reduced, "norm": norms, **positional_arrays}
    if lens.enabled:
        arrays["lens_ids"], arrays["lens_probs"] = lens.ids, lens.probs
    if params.store_states:
        arrays["states"] = states
    tokens = [lm.tokenizer.batch_decode([[token] for token in row]) for row in ids]
    summary: dict[str, Any] = {
        "model": lm.name,
        "components": list(COMPONENTS),
        "included_components": list(params.components),
        "layers": [layers.start, layers.stop],
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "n_prompts": len(ids),
        "average": params.average,
        "max_tokens": params.max_tokens,
        "tokens": tokens,
        "n_tokens": n_tokens,
        "truncated": truncated,
        "corpus": params.corpus.model_dump() if params.corpus is not None else None,
        "hook_check_max_abs_error": float(hook_error),
        **described,
        "lens": lens.summary(),
        "positional": positional_summary,
        "states": {
            "stored": params.store_states,
            "dtype": str(states.dtype),
            "bytes": int(states.nbytes),
            "float16_overflow": upgraded,
        },
    }
    return Result(arrays=arrays, summary=summary)
