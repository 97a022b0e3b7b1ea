"""Run kind 1, ``geometry``: latent-space geometry of the four points of every block.

After Ning, Rangaraju & Kuo (2025). For each prompt and each real token, the
four points (``COMPONENTS``) of every block are captured, optionally averaged
(over prompts per position, or over positions per prompt), optionally scaled to
unit norm, and reduced jointly (one PCA across all layers and components) to
2 or 3 dimensions. Invariants:

* padding never counts: padded positions are not stored, not averaged and not
  part of the PCA fit; a prompt's states do not depend on its batch mates;
* order of operations per point: average (if any) -> record the L2 ``norm`` ->
  divide by it (if ``unit_normalise``) -> PCA;
* the hook points are checked on the first batch of every run
  (``summary["hook_check_max_abs_error"]``), a mismatch fails the run;
* only valid states leave the device, as float32, batch by batch;
* the joint PCA is exact from the covariance (``latent_atlas.reduce``); without
  averaging it is accumulated batch by batch on the model's device, with
  float64 Gram products on a GPU and float32 products (float64 accumulation)
  on a CPU;
* points are ordered layer-major, then component, then prompt, then position
  (or position / prompt alone when averaged); ``Result.arrays`` names are a
  contract with the views: ``coords``, ``layer``, ``component``, ``position``,
  ``prompt_index``, ``token_id``, ``norm``, ``explained_variance_ratio``,
  ``layer_norm_mean``; -1 marks a field that averaging removed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import Tensor

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.validation import (
    STATIC_MAX_PROMPTS,
    check_max_tokens,
    check_model_name,
    check_prompts,
    check_token_counts,
    context_get,
)
from latent_atlas.lm.hooks import COMPONENTS, capture_points, verify_capture
from latent_atlas.lm.loading import LanguageModel
from latent_atlas.reduce import PCAAccumulator, PCAFit, pca_fit

__all__ = ["Average", "GeometryParams", "Reduction", "run_geometry"]

Average = Literal["none", "samples", "positions"]
Reduction = Literal["pca"]  # umap arrives later: add it here and in _reduce
CAPTURE_SHARE = 0.9  # fraction of the progress bar spent capturing


class GeometryParams(BaseModel):
    """Parameters of a geometry run; see ``latent_atlas.analyses.validation`` for context checks."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    prompts: list[str] = Field(min_length=1, max_length=STATIC_MAX_PROMPTS)
    max_tokens: int = Field(32, ge=1, le=4096)
    unit_normalise: bool = False
    average: Average = "none"
    reduction: Reduction = "pca"
    dims: Literal[2, 3] = 3
    batch_size: int = Field(8, ge=1, le=256)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("model")
    @classmethod
    def _model_allowed(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("model must not be blank")
        check_model_name(value, context_get(info.context, "models"))
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, value: list[str], info: ValidationInfo) -> list[str]:
        check_prompts(value, context_get(info.context, "limits"))
        return value

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_ok(cls, value: int, info: ValidationInfo) -> int:
        check_max_tokens(value, context_get(info.context, "limits"))
        return value

    @model_validator(mode="after")
    def _token_budget(self, info: ValidationInfo) -> GeometryParams:
        count_tokens = context_get(info.context, "count_tokens")
        if count_tokens is not None:
            check_token_counts(self.prompts, self.max_tokens, count_tokens)
        return self


def _tokenise(lm: LanguageModel, prompts: list[str], max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    full = lm.tokenizer(prompts)["input_ids"]
    ids = [list(map(int, row[:max_tokens])) for row in full]
    truncated = [len(row) > max_tokens for row in full]
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


def _unit(vectors: Tensor | np.ndarray, norms: Tensor | np.ndarray) -> Any:
    """``vectors / norms`` with zero vectors left at zero."""
    if isinstance(vectors, Tensor):
        return vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny).unsqueeze(-1)
    return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)[..., None]


class _Collector:
    """Receives each batch's capture and keeps only what the averaging mode needs."""

    def __init__(self, params: GeometryParams, lm: LanguageModel, n_tokens: list[int]) -> None:
        self.params = params
        self.n_layers, self.d_model = lm.n_layers, lm.d_model
        self.device = lm.device
        self.n_tokens = n_tokens
        shape = (self.n_layers, len(COMPONENTS))
        if params.average == "none":
            total = sum(n_tokens)
            self.states = np.empty((*shape, total, self.d_model), dtype=np.float32)
            self.norms = np.empty((*shape, total), dtype=np.float32)
            # A GPU does float64 Gram products at no cost; a CPU would spend half a forward on them.
            self.pca = PCAAccumulator(products="float64" if self.device.type == "cuda" else "float32")
            self.offset = 0
        elif params.average == "samples":
            self.sums = torch.zeros((*shape, max(n_tokens), self.d_model), dtype=torch.float64, device=self.device)
        else:
            self.means = np.empty((*shape, len(n_tokens), self.d_model), dtype=np.float32)

    def add(self, capture: Any, mask: Tensor, prompt_start: int) -> None:
        mask = mask.to(self.device)
        if self.params.average == "none":
            valid = capture.gather(mask.bool()).float()  # (L, 4, n, D)
            norms = torch.linalg.vector_norm(valid, dim=-1)
            if self.params.unit_normalise:
                valid = _unit(valid, norms)
            self.pca.update(valid.reshape(-1, self.d_model))
            n = valid.shape[2]
            stop = self.offset + n
            torch.from_numpy(self.states)[:, :, self.offset : stop].copy_(valid)
            torch.from_numpy(self.norms)[:, :, self.offset : stop].copy_(norms)
            self.offset = stop
            return
        weights = mask.to(torch.float64).unsqueeze(-1)  # (B, S, 1)
        counts = weights.sum(dim=1)  # (B, 1)
        for layer, components in enumerate(capture.points):
            for component, tensor in enumerate(components):
                masked = tensor.to(torch.float64) * weights
                if self.params.average == "samples":
                    self.sums[layer, component, : tensor.shape[1]] += masked.sum(dim=0)
                else:
                    rows = slice(prompt_start, prompt_start + tensor.shape[0])
                    self.means[layer, component, rows] = (masked.sum(dim=1) / counts).float().cpu().numpy()

    def finish(self) -> tuple[np.ndarray, np.ndarray, PCAAccumulator | None]:
        """Points (P, D) float32, their norms (P,), and the PCA accumulator if one was kept."""
        if self.params.average == "none":
            return self.states.reshape(-1, self.d_model), self.norms.reshape(-1), self.pca
        if self.params.average == "samples":
            per_position = np.bincount(
                np.concatenate([np.arange(n) for n in self.n_tokens]), minlength=max(self.n_tokens)
            )
            counts = torch.as_tensor(per_position, dtype=torch.float64, device=self.device)
            states = (self.sums / counts[:, None]).float().cpu().numpy()
        else:
            states = self.means
        states = states.reshape(-1, self.d_model)
        norms = np.linalg.norm(states, axis=-1).astype(np.float32)
        if self.params.unit_normalise:
            states = _unit(states, norms).astype(np.float32)
        return states, norms, None


def _metadata(
    params: GeometryParams, n_layers: int, ids: list[list[int]]
) -> dict[str, np.ndarray]:
    n_components = len(COMPONENTS)
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
    per_layer = position.shape[0] * n_components
    return {
        "layer": np.repeat(np.arange(n_layers), per_layer).astype(np.int16),
        "component": np.tile(np.repeat(np.arange(n_components), position.shape[0]), n_layers).astype(np.int8),
        "position": np.tile(position, n_layers * n_components),
        "prompt_index": np.tile(prompt, n_layers * n_components),
        "token_id": np.tile(token, n_layers * n_components),
    }


def _reduce(params: GeometryParams, states: np.ndarray, accumulator: PCAAccumulator | None) -> PCAFit:
    if params.reduction == "pca":
        return accumulator.finalize(params.dims) if accumulator is not None else pca_fit(states, params.dims)
    raise ValueError(f"unknown reduction {params.reduction!r}")


def run_geometry(params: GeometryParams, lm: LanguageModel, progress: Progress = no_progress) -> Result:
    """Capture, average, normalise and reduce; see the module docstring for the contract."""
    ids, truncated = _tokenise(lm, params.prompts, params.max_tokens)
    n_tokens = [len(row) for row in ids]
    pad_id = lm.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    starts = list(range(0, len(ids), params.batch_size))
    collector = _Collector(params, lm, n_tokens)
    hook_error = 0.0
    for number, start in enumerate(starts, start=1):
        progress(CAPTURE_SHARE * (number - 1) / len(starts), f"capturing batch {number}/{len(starts)}")
        input_ids, mask = _pad(ids[start : start + params.batch_size], pad_id)
        first = number == 1
        capture = capture_points(lm, input_ids, mask, hidden_states=first)
        if first:
            hook_error = verify_capture(lm, capture, mask)
            capture.hidden_states = None
        collector.add(capture, mask, start)
        del capture
    progress(CAPTURE_SHARE, f"reducing ({params.reduction}, {params.dims}D)")
    states, norms, accumulator = collector.finish()
    fit = _reduce(params, states, accumulator)
    coords = fit.transform(states)
    del collector, states
    arrays = _metadata(params, lm.n_layers, ids)
    arrays.update(
        coords=coords.astype(np.float32, copy=False),
        norm=norms.astype(np.float32, copy=False),
        explained_variance_ratio=fit.explained_variance_ratio.astype(np.float32),
        layer_norm_mean=norms.reshape(lm.n_layers, len(COMPONENTS), -1).mean(axis=-1).astype(np.float32),
    )
    tokens = [lm.tokenizer.batch_decode([[token] for token in row]) for row in ids]
    summary: dict[str, Any] = {
        "model": lm.name,
        "components": list(COMPONENTS),
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "n_prompts": len(ids),
        "n_points": int(coords.shape[0]),
        "dims": params.dims,
        "reduction": params.reduction,
        "average": params.average,
        "unit_normalise": params.unit_normalise,
        "max_tokens": params.max_tokens,
        "tokens": tokens,
        "n_tokens": n_tokens,
        "truncated": truncated,
        "hook_check_max_abs_error": float(hook_error),
        "explained_variance_ratio": [float(v) for v in fit.explained_variance_ratio],
    }
    return Result(arrays=arrays, summary=summary)
