"""Run kind 4, ``scan``: the run. Every token's state through the layers in one shared 3-D space.

Steps: tokenise A (and B) -> one forward pass of both prompts in one padded
batch (right padding, so the states at a real position never see a pad) ->
the frames' states (F, N, d) -> one projection over all of them -> logit lens
-> the A/B divergence (``diff`` mode). Invariants:

* frames: ``residual``: the embeddings (block input) and the residual after
  each block (F = n_layers + 1); ``all``: the embeddings then, per block,
  ``attn_out``, ``resid_mid``, ``mlp_out``, ``resid_post`` (F = 4 n_layers + 1).
  ``frame_layer`` is the block (-1 for the embeddings), ``frame_component`` the
  index in ``COMPONENTS`` (-1 for the embeddings);
* tokens: A's real tokens, then B's, the same N tokens in every frame
  (``token_prompt``, ``token_position``, ``token_id``); ``coords`` is (F, N, 3),
  every frame projected with the one basis (``latent_atlas.analyses.scan.basis``);
* both prompts run in one batch, so a position inside their shared token
  prefix is computed by the same arithmetic in A and in B: its states, and so
  its coordinates and distances, are identical (distance exactly 0) in a
  causal model;
* the hook points are checked against ``output_hidden_states`` on every run
  (``summary["hook_check_max_abs_error"]``);
* the logit lens (final norm + unembedding + the model's final logit
  soft-cap, if any: ``latent_atlas.lm.lens.lens_logits``) of each prompt's last token at
  every frame is computed over the whole vocabulary (for KL / JS); the hover
  lens (top-1 id and probability: ``lens_ids`` / ``lens_probs`` (F, N), -1 / 0
  where not computed) covers every point when there are at most
  ``lens_max_points`` (``LENS_CPU_MAX_POINTS`` on a CPU), else every frame of
  each prompt's last positions that fit the cap (``summary["lens"]`` says which);
* with ``basis_run`` the run's basis is read from that stored run (``runs``)
  and checked again against this model (a run of another model or width is
  refused); nothing is fitted then;
* arrays hold numbers only; token strings are in the summary.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.scan.basis import Basis, fit_pca, fit_umap
from latent_atlas.analyses.scan.diff import DIVERGENCE_FIELDS, divergence, first_crossing
from latent_atlas.analyses.scan.params import DIVERGENCE_METRICS, ScanParams, check_basis_run
from latent_atlas.lm.hooks import COMPONENTS, RESID_POST, capture_points, verify_capture
from latent_atlas.lm.lens import lens_logits
from latent_atlas.lm.loading import LanguageModel

__all__ = ["LENS_CPU_MAX_POINTS", "StoredRunsLike", "capture_frames", "frame_labels", "run_scan"]

LENS_CPU_MAX_POINTS = 4_096  # as geometry: on a CPU each decoded point costs a d_model x vocab product
LENS_CHUNK = 1_024


class StoredRunsLike(Protocol):
    def load(self, run_id: str, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    def info(self, run_id: str) -> dict[str, Any] | None: ...


def frame_labels(n_layers: int, points: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(frame_layer, frame_component, labels) of a scan's frames."""
    layers, comps, labels = [-1], [-1], ["embeddings"]
    for layer in range(n_layers):
        for comp in (range(len(COMPONENTS)) if points == "all" else [RESID_POST]):
            layers.append(layer)
            comps.append(comp)
            labels.append(f"block {layer}" if points == "residual" else f"block {layer} {COMPONENTS[comp]}")
    return np.array(layers, dtype=np.int16), np.array(comps, dtype=np.int8), labels


def _tokenise(lm: LanguageModel, params: ScanParams) -> list[list[int]]:
    rows = [list(map(int, ids)) for ids in lm.tokenizer(params.prompts)["input_ids"]]
    for name, row in zip("AB", rows, strict=False):
        if not row:
            raise ValueError(f"prompt {name} has no tokens")
        if len(row) > params.max_tokens:
            raise ValueError(f"prompt {name} has {len(row)} tokens; the limit is {params.max_tokens} (max_tokens)")
    return rows


def capture_frames(lm: LanguageModel, rows: list[list[int]], points: str) -> tuple[list[np.ndarray], float]:
    """Per prompt, its states (F, T, d) float32; and the hook check's max abs error.

    One forward pass of every prompt in one right-padded batch.
    """
    width = max(len(row) for row in rows)
    pad_id = lm.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    capture = capture_points(lm, input_ids, mask, hidden_states=True)
    error = verify_capture(lm, capture, mask)
    tensors = [capture.embeddings]
    for components in capture.points:
        tensors.extend(components if points == "all" else [components[RESID_POST]])
    with torch.inference_mode():
        stacked = torch.stack(tensors).float().cpu().numpy()  # (F, batch, width, d)
    return [np.ascontiguousarray(stacked[:, i, : len(row)]) for i, row in enumerate(rows)], error


def _log_probs(lm: LanguageModel, states: np.ndarray) -> np.ndarray:
    """Logit-lens log-probabilities (n, V) float32 of states (n, d) over the whole vocabulary.

    Through ``lens_logits``: the model's final soft-cap (Gemma 2) is applied, so
    at the last layer this is the model's own next-token distribution.
    """
    with torch.inference_mode():
        return torch.log_softmax(lens_logits(lm, torch.from_numpy(states)), dim=-1).cpu().numpy()


def _hover_lens(lm: LanguageModel, states: list[np.ndarray], cap: int,
                progress: Progress) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Top-1 lens id / probability (F, N) of the chosen points; see the module docstring."""
    frames = states[0].shape[0]
    n = sum(s.shape[1] for s in states)
    ids = np.full((frames, n), -1, dtype=np.int32)
    probs = np.zeros((frames, n), dtype=np.float16)
    if lm.device.type == "cpu":
        cap = min(cap, LENS_CPU_MAX_POINTS)
    per_prompt = min(max(s.shape[1] for s in states), cap // max(1, frames * len(states)))
    if per_prompt == 0:
        return ids, probs, {"computed": 0, "cap": cap, "positions": "none"}
    offset = 0
    for prompt_states in states:
        t = prompt_states.shape[1]
        first = max(0, t - per_prompt)
        block = prompt_states[:, first:].reshape(-1, prompt_states.shape[2])
        top_i, top_p = [], []
        with torch.inference_mode():
            for start in range(0, block.shape[0], LENS_CHUNK):
                progress(0.0, f"logit lens: {start:,} of {block.shape[0]:,} states")
                x = torch.from_numpy(block[start : start + LENS_CHUNK])
                p, i = torch.softmax(lens_logits(lm, x), dim=-1).max(dim=-1)
                top_i.append(i.cpu().numpy())
                top_p.append(p.cpu().numpy())
        ids[:, offset + first : offset + t] = np.concatenate(top_i).reshape(frames, t - first)
        probs[:, offset + first : offset + t] = np.concatenate(top_p).reshape(frames, t - first)
        offset += t
    computed = int((ids >= 0).sum())
    scope = "all" if computed == ids.size else f"the last {per_prompt} positions of each prompt"
    return ids, probs, {"computed": computed, "cap": cap, "positions": scope}


def _basis(params: ScanParams, lm: LanguageModel, runs: StoredRunsLike | None) -> Basis:
    if runs is None:
        raise ValueError("a basis run needs the stored runs (runs=...)")
    assert params.basis_run is not None
    try:
        check_basis_run(params, runs.info(params.basis_run), d_model=lm.d_model)
    except PydanticCustomError as exc:
        raise ValueError(str(exc)) from None
    summary, arrays = runs.load(params.basis_run, ("basis_mean", "basis_components"))
    if "basis_mean" not in arrays or "basis_components" not in arrays:
        raise ValueError(f"run {params.basis_run} stored no basis arrays")
    mean, components = arrays["basis_mean"], arrays["basis_components"]
    if mean.shape != (lm.d_model,) or components.shape != (3, lm.d_model):
        raise ValueError(f"run {params.basis_run}'s basis has shape {components.shape}; the model's width "
                         f"is {lm.d_model}")
    ratio = np.asarray((summary.get("basis") or {}).get("explained_variance_ratio") or [np.nan] * 3)
    return Basis(mean.astype(np.float64), components.astype(np.float64), params.unit_normalise, ratio)


def run_scan(params: ScanParams, lm: LanguageModel, progress: Progress = no_progress, *,
             runs: StoredRunsLike | None = None) -> Result:
    """Scan ``params.prompts`` through ``lm``; see the module docstring for the result's contract."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    progress(0.0, "tokenising")
    rows = _tokenise(lm, params)
    progress(0.05, "forward pass")
    states, hook_error = capture_frames(lm, rows, params.points)
    seconds["forward"] = time.perf_counter() - started
    frame_layer, frame_component, labels = frame_labels(lm.n_layers, params.points)
    frames, d = states[0].shape[0], states[0].shape[2]
    flat = np.concatenate([s.transpose(1, 0, 2) for s in states]).transpose(1, 0, 2)  # (F, N, d)
    token_prompt = np.concatenate([np.full(len(r), i, dtype=np.int8) for i, r in enumerate(rows)])
    token_position = np.concatenate([np.arange(len(r), dtype=np.int32) for r in rows])
    token_id = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])

    started = time.perf_counter()
    fit_mask = np.broadcast_to(token_position != 0 if params.exclude_position0 else True,
                               (frames, flat.shape[1])).reshape(-1)
    rows_2d = flat.reshape(-1, d)
    basis: Basis | None = None
    if params.basis_run is not None:
        progress(0.3, f"reading the basis of run {params.basis_run}")
        basis = _basis(params, lm, runs)
    elif params.reduction == "pca":
        progress(0.3, f"fitting PCA on {int(fit_mask.sum()):,} states")
        basis = fit_pca(rows_2d, fit_mask, params.unit_normalise)
    if basis is not None:
        coords = basis.project(flat)
    else:
        coords = fit_umap(rows_2d, fit_mask, params.unit_normalise, neighbors=params.umap_neighbors,
                          min_dist=params.umap_min_dist, fit_points=params.umap_fit_points, seed=params.seed,
                          progress=lambda f, s: progress(0.3 + 0.3 * f, s)).reshape(frames, -1, 3)
    seconds["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    arrays: dict[str, np.ndarray] = {
        "coords": coords.astype(np.float32), "frame_layer": frame_layer, "frame_component": frame_component,
        "token_prompt": token_prompt, "token_position": token_position, "token_id": token_id,
    }
    if basis is not None:
        arrays.update(basis.arrays())
    lens_summary: dict[str, Any] = {"enabled": params.lens, "computed": 0}
    if params.lens:
        ids, probs, lens_summary = _hover_lens(lm, states, params.lens_max_points,
                                               lambda f, s: progress(0.65, s))
        arrays["lens_ids"], arrays["lens_probs"] = ids, probs
        lens_summary["enabled"] = True
    last_log_probs = [_log_probs(lm, s[:, -1]) for s in states]  # (F, V) per prompt
    last_top = [lp.argmax(axis=-1).astype(np.int32) for lp in last_log_probs]
    arrays["last_top_ids"] = np.stack(last_top)  # (prompts, F)
    seconds["lens"] = time.perf_counter() - started

    summary: dict[str, Any] = {
        "mode": params.mode, "points": params.points, "n_layers": lm.n_layers, "d_model": d,
        "n_frames": frames, "frame_labels": labels,
        "n_tokens": [len(r) for r in rows],
        "tokens": [lm.tokenizer.batch_decode([[t] for t in r]) for r in rows],
        "hook_check_max_abs_error": hook_error,
        "basis": {
            "kind": "pca" if basis is not None else "umap", "stored": basis is not None,
            "source_run": params.basis_run, "unit_normalise": params.unit_normalise, "d_model": d,
            "exclude_position0": params.exclude_position0,
            "explained_variance_ratio": None if basis is None else
            [None if not np.isfinite(v) else float(v) for v in basis.explained_variance_ratio],
            "fit_states": 0 if params.basis_run else int(fit_mask.sum()),
        },
    }
    if basis is None:
        summary["basis"]["umap"] = {"n_neighbors": params.umap_neighbors, "min_dist": params.umap_min_dist,
                                    "fit_points": min(params.umap_fit_points, int(fit_mask.sum()))}
    if params.mode == "diff":
        progress(0.9, "divergence of A and B")
        div = divergence(states[0], states[1], last_log_probs[0], last_log_probs[1],
                         np.asarray(rows[0]), np.asarray(rows[1]))
        for name in DIVERGENCE_FIELDS:
            arrays[f"div_{name}"] = div.metric(name).astype(np.float64)
        arrays["div_heatmap"] = div.heatmap.astype(np.float32)
        crossing = first_crossing(div.metric(params.threshold_metric), params.threshold)
        summary["diff"] = {
            "metrics": DIVERGENCE_METRICS, "aligned": div.aligned, "shared_prefix": div.shared_prefix,
            "threshold_metric": params.threshold_metric, "threshold": params.threshold,
            "first_crossing": crossing, "first_crossing_label": None if crossing is None else labels[crossing],
        }
    lens_tokens = np.unique(np.concatenate([arrays["last_top_ids"].ravel(),
                                            arrays.get("lens_ids", np.zeros(0, np.int32)).ravel()]))
    lens_tokens = lens_tokens[lens_tokens >= 0]
    lens_summary["tokens"] = dict(zip((str(int(t)) for t in lens_tokens),
                                      lm.tokenizer.batch_decode([[int(t)] for t in lens_tokens]), strict=True))
    summary["lens"] = lens_summary
    summary["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    progress(1.0, "done")
    return Result(arrays=arrays, summary=summary)
