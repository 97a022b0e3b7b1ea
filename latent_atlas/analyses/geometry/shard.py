"""A sharded geometry capture: prompt batches, merged by concatenation and sums; PCA from covariance sums.

``GEOMETRY_SHARDS`` implements ``latent_atlas.analyses.shards.ShardableKind``
for ``geometry`` runs. Invariants:

* work units are prompts; a shard is ``{"index", "count", "prompt_begin",
  "prompt_end"}``, whole batches of ``batch_size`` prompts from the first, so
  every batch (and its padding) is the unsharded run's;
* a shard captures its prompts exactly as ``run_geometry`` does (same
  ``geometry.run.capture``) and returns what the run's averaging mode keeps:
  ``none``: its raw ``states`` and ``norms`` as (blocks, its tokens, ...) in the
  storage dtype, its points' logit lens (the run's seeded sample of points, so
  a sampled lens picks the unsharded run's points) and the float64 covariance
  sums (``PCAAccumulator``: n, shift, sum, X^T X) of each PCA fit set
  (``points.fit_sums``: the main fit, the attention/MLP fit) over its rows;
  ``samples``: the float64 per-position sums; ``positions``: the float64 mean
  of each of its prompts; plus, for rotary models, the positional-structure
  sums and counts (float64);
* ``merge`` concatenates states, norms, lens and means along the token (or
  prompt) axis and adds sums; covariance sums are re-centred on the first
  part's shift and added (``PCAAccumulator.merge``); the run's states switch
  to float32 when any shard's overflowed float16 (the other shards' rows keep
  their float16 rounding, as an unsharded run's rows written before its switch
  do); associative exactly for arrays that are concatenated, up to float64
  rounding for sums;
* ``finish`` is ``geometry.run.describe_run`` on the merged states; without
  averaging the PCA fits come from the merged covariance sums instead of a
  pass over the states. Tolerance against the unsharded ``run_geometry`` (same
  machine): stored states, norms, metadata, lens and the norm statistics are
  equal (``samples`` means up to float64 summation order: at most one unit in
  the last place of the stored dtype); PCA ``coords`` and explained variance
  agree to about 1e-5 of the coordinates' scale (the unsharded run on a CPU
  forms X^T X in float32 chunks, the shards in float64); UMAP coordinates
  then follow their (seeded) fit of those PCA inputs; the hook check's error
  is the largest of every shard's first batch (the unsharded run checks one
  batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.geometry.params import GeometryParams
from latent_atlas.analyses.geometry.points import Points, fit_sums
from latent_atlas.analyses.geometry.run import (
    LENS_K,
    _Capture,
    _Lens,
    _metadata,
    _PositionalMeans,
    capture,
    describe_run,
    plan,
)
from latent_atlas.analyses.shard_base import ShardResult, check_parts, check_spec, even_ranges
from latent_atlas.reduce import PCAAccumulator

__all__ = ["GEOMETRY_SHARDS", "GeometryShards"]

CAPTURE_SHARE = 0.9
FIT_PREFIX = "fit."
CONCAT_AXIS = {"states": 1, "norms": 1, "lens_ids": 1, "lens_probs": 1, "means": 2}
SUMMED = ("sums", "positional_sums", "positional_counts")


def _fit_arrays(fits: dict[str, PCAAccumulator]) -> dict[str, np.ndarray]:
    return {f"{FIT_PREFIX}{name}.{key}": array for name, acc in fits.items()
            for key, array in acc.to_arrays().items()}


def _fits_of(arrays: dict[str, np.ndarray]) -> dict[str, PCAAccumulator]:
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        if key.startswith(FIT_PREFIX):
            name, field = key[len(FIT_PREFIX):].rsplit(".", 1)
            grouped.setdefault(name, {})[field] = array
    return {name: PCAAccumulator.from_arrays(fields) for name, fields in grouped.items()}


class GeometryShards:
    name = "geometry"
    min_units_per_shard = 64  # prompts; a smaller run captures in seconds on one worker

    def work_units(self, params: GeometryParams) -> int:
        return len(params.token_ids) if params.token_ids is not None else len(params.prompts)

    def split(self, params: GeometryParams, n: int) -> list[dict[str, Any]]:
        prompts = self.work_units(params)
        batches = -(-prompts // params.batch_size)
        ranges = even_ranges(batches, n)
        return [
            {"index": i, "count": len(ranges), "prompt_begin": first * params.batch_size,
             "prompt_end": min(prompts, last * params.batch_size)}
            for i, (first, last) in enumerate(ranges)
        ]

    def run_shard(self, params: GeometryParams, shard: dict[str, Any], lm: Any, progress: Progress = no_progress,
                  **kw: Any) -> ShardResult:
        check_spec(shard, ("prompt_begin", "prompt_end"))
        begin, end = shard["prompt_begin"], shard["prompt_end"]
        layers, comps, ids, _ = plan(params, lm)
        if not 0 <= begin < end <= len(ids):
            raise ValueError(f"prompts {begin}..{end} are outside the run's {len(ids)} prompts")
        state, hook_error = capture(params, lm, ids, layers, comps, begin, end, progress, CAPTURE_SHARE)
        arrays: dict[str, np.ndarray] = {}
        blocks = len(layers) * len(comps)
        summary: dict[str, Any] = {"prompt_begin": begin, "prompt_end": end, "hook_error": float(hook_error),
                                   "upgraded": False}
        if params.average == "none":
            progress(CAPTURE_SHARE, "covariance sums")
            tokens = state.total
            arrays["states"] = state.states.array.reshape(blocks, tokens, -1)
            arrays["norms"] = state.norms.reshape(blocks, tokens)
            summary["upgraded"] = state.states.upgraded
            index = (np.arange(blocks)[:, None] * state.all_tokens + state.first_token
                     + np.arange(tokens)[None, :])
            arrays["lens_ids"] = state.lens.ids[index]
            arrays["lens_probs"] = state.lens.probs[index]
            meta = _metadata(params, layers, comps, ids[begin:end])
            points = Points(states=state.states.array, norm=state.norms, **meta)
            arrays.update(_fit_arrays(fit_sums(points, params.reduce_options(), lm.device)))
        elif params.average == "samples":
            arrays["sums"] = state.sums.cpu().numpy()
        else:
            arrays["means"] = state.means.cpu().numpy()
        if state.positional is not None:
            arrays["positional_sums"] = state.positional.sums.cpu().numpy()
            arrays["positional_counts"] = state.positional.counts.cpu().numpy()
        progress(1.0, f"prompts {begin}..{end} captured")
        return ShardResult(arrays=arrays, summary=summary)

    def merge(self, params: GeometryParams, parts: list[ShardResult]) -> ShardResult:
        check_parts(parts, "prompt_begin", "prompt_end")
        first = parts[0]
        for part in parts[1:]:
            if set(part.arrays) != set(first.arrays):
                raise ValueError("geometry shards hold different arrays (other params or model?)")
        arrays: dict[str, np.ndarray] = {}
        for name, axis in CONCAT_AXIS.items():
            if name in first.arrays:
                pieces = [p.arrays[name] for p in parts]
                dtype = np.result_type(*pieces)
                arrays[name] = np.concatenate([piece.astype(dtype, copy=False) for piece in pieces], axis=axis)
        for name in SUMMED:
            if name in first.arrays:
                total = first.arrays[name].copy()
                for part in parts[1:]:
                    total += part.arrays[name]
                arrays[name] = total
        fits = _fits_of(first.arrays)
        for part in parts[1:]:
            for name, other in _fits_of(part.arrays).items():
                fits[name].merge(other)
        arrays.update(_fit_arrays(fits))
        summary = {"prompt_begin": first.summary["prompt_begin"], "prompt_end": parts[-1].summary["prompt_end"],
                   "hook_error": max(float(p.summary["hook_error"]) for p in parts),
                   "upgraded": any(bool(p.summary["upgraded"]) for p in parts)}
        return ShardResult(arrays=arrays, summary=summary)

    def finish(self, params: GeometryParams, merged: ShardResult, lm: Any, progress: Progress = no_progress,
               **kw: Any) -> Result:
        layers, comps, ids, truncated = plan(params, lm)
        if merged.summary["prompt_begin"] != 0 or merged.summary["prompt_end"] != len(ids):
            raise ValueError(f"the merged shards cover prompts {merged.summary['prompt_begin']}.."
                             f"{merged.summary['prompt_end']}, not the run's 0..{len(ids)}")
        arrays = merged.arrays
        fits = None
        upgraded = bool(merged.summary["upgraded"])
        if params.average == "none":
            d = arrays["states"].shape[-1]
            states = arrays["states"].reshape(-1, d)
            norms = arrays["norms"].reshape(-1)
            lens = _Lens(lm, len(norms), params.lens_max_points, params.logit_lens, params.seed)
            lens.ids[...] = arrays["lens_ids"].reshape(-1, LENS_K)
            lens.probs[...] = arrays["lens_probs"].reshape(-1, LENS_K)
            fits = _fits_of(arrays)
        else:
            state = _Capture(params, lm, ids, layers, comps)
            if params.average == "samples":
                state.sums = torch.from_numpy(arrays["sums"].copy()).to(lm.device)
            else:
                state.means = torch.from_numpy(arrays["means"].copy()).to(lm.device)
            states, norms, lens, upgraded = state.finish()
        positional = None
        if "positional_sums" in arrays:
            width, d_model = arrays["positional_sums"].shape
            layer = params.positional_layer if params.positional_layer is not None else lm.n_layers // 2
            positional = _PositionalMeans(layer, width, d_model, lm.device)
            positional.sums = torch.from_numpy(arrays["positional_sums"].copy()).to(lm.device)
            positional.counts = torch.from_numpy(arrays["positional_counts"].copy()).to(lm.device)
        return describe_run(params, lm, ids, truncated, layers, comps, states, norms, lens, upgraded,
                            positional, float(merged.summary["hook_error"]), progress, fits=fits)


GEOMETRY_SHARDS = GeometryShards()
