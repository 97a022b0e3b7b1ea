"""The parameters of a ``sae_train`` run: every bound a user can set, checked before queueing.

With ``n_layers`` in the validation context (read by the web process from the
model's config or GGUF header, never its weights) the layer is checked against
the model; the run checks it again with the model loaded. A corpus file must be
a plain name under ``{data_dir}/corpora`` (the demo corpus or an upload the
portal saved there), never a path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.validation import CatalogueModel, StrictInt, context_get

__all__ = ["MAX_TRAINING_TOKENS", "SaeTrainParams", "TrainCorpus"]

MAX_TRAINING_TOKENS = 50_000_000
MAX_EVAL_TOKENS = 2_000_000
_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$"
_HUB_ID = r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$"
_HUB_PART = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class TrainCorpus(BaseModel):
    """Text to train on: ``demo`` (the offline demo corpus), ``file`` (a file under
    ``{data_dir}/corpora``, e.g. an upload) or ``hub`` (a Hugging Face dataset, streamed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["demo", "file", "hub"] = "demo"
    file: str | None = Field(None, pattern=_FILE_NAME)
    format: Literal["lines", "text", "jsonl"] | None = None
    dataset: str | None = Field(None, pattern=_HUB_ID)
    config: str | None = Field(None, pattern=_HUB_PART)
    split: str = Field("train", pattern=_HUB_PART)
    text_field: str = Field("text", pattern=_HUB_PART)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TrainCorpus:
        if self.kind == "file" and (self.file is None or ".." in self.file):
            raise ValueError("a corpus file needs a plain file name (no path)")
        if self.kind == "hub" and (self.dataset is None or ".." in self.dataset):
            raise ValueError("a hub corpus needs a dataset id like 'owner/name'")
        if self.kind != "file" and self.file is not None:
            raise ValueError(f"a {self.kind} corpus takes no file")
        if self.kind != "hub" and self.dataset is not None:
            raise ValueError(f"a {self.kind} corpus takes no dataset")
        return self

    def describe(self) -> str:
        if self.kind == "demo":
            return "the demo corpus (fortunes + Python documentation)"
        if self.kind == "file":
            return f"corpus file {self.file}"
        return f"Hugging Face dataset {self.dataset}" + (f" ({self.config})" if self.config else "") + f", split {self.split}"


class SaeTrainParams(BaseModel):
    """A TopK or BatchTopK SAE on the residual stream at ``layer`` of ``model``.

    ``point`` ``resid_post`` reads the residual after block ``layer``
    (sae-lens hook ``blocks.{layer}.hook_resid_post``), ``resid_pre`` the one
    entering it. ``k`` is the number of latents that fire per token (TopK) or
    on average over a batch (BatchTopK). Tokens at position 0 of every sequence
    are left out of training and evaluation (the attention-sink position).
    """

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    layer: StrictInt = Field(ge=0, le=1000)
    point: Literal["resid_post", "resid_pre"] = "resid_post"
    architecture: Literal["topk", "batchtopk"] = "topk"
    d_sae: StrictInt = Field(1024, ge=16, le=131_072)
    k: StrictInt = Field(32, ge=1, le=512)
    training_tokens: StrictInt = Field(150_000, ge=1_000, le=MAX_TRAINING_TOKENS)
    eval_tokens: StrictInt = Field(20_000, ge=500, le=MAX_EVAL_TOKENS)
    context_len: StrictInt = Field(128, ge=8, le=2048)
    batch_size: StrictInt = Field(1024, ge=32, le=16_384)
    lr: float = Field(1e-3, ge=1e-6, le=1e-1, allow_inf_nan=False, strict=True)
    corpus: TrainCorpus = Field(default_factory=TrainCorpus)
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> SaeTrainParams:
        if self.k > self.d_sae:
            raise PydanticCustomError("k_too_large", "k ({k}) cannot exceed the number of latents d_sae ({d})",
                                      {"k": self.k, "d": self.d_sae})
        if self.batch_size > self.training_tokens:
            raise PydanticCustomError("batch_too_large",
                                      "batch_size ({b}) cannot exceed training_tokens ({t})",
                                      {"b": self.batch_size, "t": self.training_tokens})
        n_layers = context_get(info.context, "n_layers")
        if n_layers is not None:
            check_layer(self.layer, int(n_layers), self.model)
        return self

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.point}"


def check_layer(layer: int, n_layers: int, model: str) -> None:
    """The one layer check, before queueing and in the run."""
    if not 0 <= layer < n_layers:
        raise PydanticCustomError(
            "layer_out_of_range", "layer {layer} is out of range: model {model} has {n} layers (0..{last})",
            {"layer": layer, "model": model, "n": n_layers, "last": n_layers - 1},
        )
