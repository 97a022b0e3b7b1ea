"""The parameters of a ``geometry`` run: one pydantic model, bounds and layer checks.

Invariants: every bound a user can set is here (the web process validates with
this model before anything is queued, with ``n_layers``, ``vocab_size`` and
``count_tokens`` in the validation context when it knows them, read from the
model's config or GGUF header without weights); ``check_layers`` (layer range
and ``positional_layer``) and ``check_token_ids`` (exact sequences against the
vocabulary) are the one check of each against a model, used before queueing
and again by the run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.geometry.points import ReduceOptions
from latent_atlas.analyses.validation import (
    STATIC_MAX_PROMPTS,
    CatalogueModel,
    MaxTokens,
    check_prompts,
    check_token_counts,
    context_get,
)
from latent_atlas.lm.hooks import COMPONENTS

__all__ = ["Average", "Component", "CorpusInfo", "GeometryParams", "Reduction", "check_layers", "check_token_ids"]

Average = Literal["none", "samples", "positions"]
Reduction = Literal["pca", "umap"]
Component = Literal["attn_out", "resid_mid", "mlp_out", "resid_post"]


class CorpusInfo(BaseModel):
    """Where sampled sequences came from (provenance; the sequences are ``token_ids``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=300)
    format: str = Field(max_length=20)
    documents: int = Field(ge=0)
    sequences: int = Field(ge=1)
    tokens_per_sequence: int = Field(ge=1)
    seed: int = Field(0, ge=0)


class GeometryParams(BaseModel):
    """Parameters of a geometry run; see ``latent_atlas.analyses.validation`` for context checks."""

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    prompts: list[str] = Field(min_length=1, max_length=STATIC_MAX_PROMPTS)
    token_ids: list[list[int]] | None = None  # exact sequences (a sampled corpus); prompts show them
    corpus: CorpusInfo | None = None
    max_tokens: MaxTokens = 32
    # Defaults show structure: raw states of most models are dominated by position 0 (one direction,
    # PC1 > 99 % on the demo model); unit-normalised and fitted without it, PC1 is ~21 %.
    unit_normalise: bool = True
    average: Average = "none"
    reduction: Reduction = "pca"
    dims: Literal[2, 3] = 3
    components: list[Component] = Field(default_factory=lambda: list(COMPONENTS), min_length=1)
    layer_start: int = Field(0, ge=0, le=4096)
    layer_stop: int | None = Field(None, ge=1, le=4096)  # exclusive; None: through the last layer
    exclude_position0: bool = True  # from the fit (the points are still projected and shown)
    logit_lens: bool = True
    lens_max_points: int = Field(200_000, ge=0, le=2_000_000)
    store_states: bool = True
    states_dtype: Literal["float16", "float32"] = "float16"
    positional_layer: int | None = Field(None, ge=0, le=4096)
    umap_neighbors: int = Field(15, ge=2, le=200)
    umap_min_dist: float = Field(0.1, ge=0.0, le=1.0)
    umap_fit_points: int = Field(20_000, ge=100, le=200_000)
    batch_size: int = Field(8, ge=1, le=256)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, value: list[str], info: ValidationInfo) -> list[str]:
        check_prompts(value, context_get(info.context, "limits"))
        return value

    @field_validator("components")
    @classmethod
    def _components_ok(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate_component", "components: each component at most once")
        return [c for c in COMPONENTS if c in value]  # canonical order

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> GeometryParams:
        if self.layer_stop is not None and self.layer_stop <= self.layer_start:
            raise PydanticCustomError(
                "empty_layer_range", "the layer range {start}..{stop} is empty (stop is exclusive)",
                {"start": self.layer_start, "stop": self.layer_stop})
        n_layers = context_get(info.context, "n_layers")
        if n_layers is not None:
            check_layers(self, int(n_layers))
        if self.token_ids is not None:
            if len(self.token_ids) != len(self.prompts):
                raise PydanticCustomError(
                    "token_ids_mismatch", "token_ids has {n} sequences for {p} prompts",
                    {"n": len(self.token_ids), "p": len(self.prompts)})
            for index, row in enumerate(self.token_ids, start=1):
                if not 1 <= len(row) <= self.max_tokens:
                    raise PydanticCustomError(
                        "sequence_length", "sequence {index} has {n} tokens; allowed 1 to {limit}",
                        {"index": index, "n": len(row), "limit": self.max_tokens})
                if min(row) < 0:
                    raise PydanticCustomError("negative_token", "sequence {index} has a negative token id",
                                              {"index": index})
            vocab_size = context_get(info.context, "vocab_size")
            if vocab_size is not None:
                check_token_ids(self.token_ids, int(vocab_size))
            return self
        count_tokens = context_get(info.context, "count_tokens")
        if count_tokens is not None:
            check_token_counts(self.prompts, self.max_tokens, count_tokens)
        return self

    def layer_range(self, n_layers: int) -> range:
        check_layers(self, n_layers)
        return range(self.layer_start, n_layers if self.layer_stop is None else self.layer_stop)

    def reduce_options(self) -> ReduceOptions:
        return ReduceOptions(reduction=self.reduction, dims=self.dims, unit_normalise=self.unit_normalise,
                             exclude_position0=self.exclude_position0, seed=self.seed,
                             umap_neighbors=self.umap_neighbors, umap_min_dist=self.umap_min_dist,
                             umap_fit_points=self.umap_fit_points)


def check_layers(params: Any, n_layers: int) -> None:
    stop = n_layers if params.layer_stop is None else params.layer_stop
    if stop > n_layers or params.layer_start >= n_layers:
        raise PydanticCustomError(
            "layer_range", "the layer range {start}..{stop} does not fit a model of {n} layers (0..{n})",
            {"start": params.layer_start, "stop": stop, "n": n_layers})
    positional = getattr(params, "positional_layer", None)
    if positional is not None and positional >= n_layers:
        raise PydanticCustomError(
            "positional_layer", "positional_layer is {layer}; the model has layers 0..{last}",
            {"layer": positional, "last": n_layers - 1})


def check_token_ids(token_ids: list[list[int]], vocab_size: int) -> None:
    """Every id of every sequence is a row of the model's vocabulary (``0 <= id < vocab_size``)."""
    for index, row in enumerate(token_ids, start=1):
        low, high = min(row), max(row)
        if low < 0 or high >= vocab_size:
            raise PydanticCustomError(
                "token_id_out_of_range",
                "sequence {index} has token id {token}; the model's vocabulary is 0..{last}",
                {"index": index, "token": low if low < 0 else high, "last": vocab_size - 1})
