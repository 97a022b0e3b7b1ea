"""The parameters of an ``anatomy`` run: one prompt and the bounds of each view.

Validated in the web process before anything is queued (validation context:
``limits``, ``models``, ``count_tokens``) and again by the worker. Invariants:

* the prompt is one non-empty text within the portal's character limit and at
  most ``max_tokens`` tokens (``max_tokens`` itself at most ``MAX_TOKENS``,
  512 by default: the run stores every attention pattern, L x H x T x T);
* ``target`` and ``foil`` (optional texts) must each be exactly one token of
  the vocabulary; with the validation context's ``count_tokens`` this is
  checked before queueing as ``count([text]) - count([""]) == 1`` (the
  special tokens the tokenizer adds are the same for both), and again by the
  run, which resolves them with ``add_special_tokens=False``;
* a foil needs a target or the predicted token to compare with (it is always
  one: without a target the predicted next token is the target);
* ``ig_steps`` (0 = no integrated gradients) and ``ig_batch`` are bounded so
  one run's cost is bounded;
* ``lens_positions`` (1..``MAX_TOKENS``): the logit lens decodes every point
  at the prompt's last ``lens_positions`` positions (the whole prompt when it
  is shorter); its cost grows with it (``lens.py`` says by how much).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.validation import (
    CatalogueModel,
    StrictBool,
    StrictInt,
    check_prompts,
    context_get,
)

__all__ = ["AnatomyParams", "DEFAULT_PROMPT", "LENS_POSITIONS", "MAX_IG_STEPS", "MAX_TOKENS", "Projection"]

MAX_TOKENS = 512
MAX_IG_STEPS = 256
MAX_IG_BATCH = 64
MAX_TOP_NEURONS = 32
MAX_VOCAB_SAMPLE = 20_000
MAX_NEIGHBOURS = 20
MAX_TARGET_CHARS = 100
LENS_POSITIONS = 32  # the page's lens window; each decoded state costs a vocabulary x width product

DEFAULT_PROMPT = "The capital of France is"

Projection = Literal["pca", "umap"]
TokenText = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_CHARS)]


def _one_token(value: str, field: str, info: ValidationInfo) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_in_token", "{field} may not contain NUL", {"field": field})
    count_tokens = context_get(info.context, "count_tokens")
    if count_tokens is not None:
        with_text, empty = count_tokens([value, ""])
        n = int(with_text) - int(empty)
        if n != 1:
            raise PydanticCustomError(
                "not_one_token",
                "{field} must be exactly one token of the model's vocabulary; it is {n} tokens",
                {"field": field, "n": n},
            )
    return value


class AnatomyParams(BaseModel):
    """Parameters of an anatomy run (see the module docstring for the checks)."""

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    prompt: str = Field(DEFAULT_PROMPT, min_length=1, description="the one text every view is computed for")
    max_tokens: StrictInt = Field(MAX_TOKENS, ge=1, le=MAX_TOKENS, description="token budget of the prompt")
    target: TokenText | None = Field(None, description="saliency target token (default: the predicted next token)")
    foil: TokenText | None = Field(None, description="contrastive saliency: score = logit(target) - logit(foil)")
    ig_steps: StrictInt = Field(32, ge=0, le=MAX_IG_STEPS, description="integrated-gradients steps (0: none)")
    ig_baseline: Literal["mean", "pad", "zero"] = Field("mean", description="integrated-gradients baseline embedding")
    ig_batch: StrictInt = Field(8, ge=1, le=MAX_IG_BATCH, description="interpolation points per forward")
    ig_keep_first: StrictBool = Field(True, description="integrated gradients: the first token (an attention "
                                      "sink) keeps its own embedding on the path and gets no attribution")
    top_neurons: StrictInt = Field(8, ge=1, le=MAX_TOP_NEURONS, description="MLP neurons kept per (layer, token)")
    vocab_sample: StrictInt = Field(2000, ge=0, le=MAX_VOCAB_SAMPLE, description="vocabulary rows projected with the prompt's")
    neighbours: StrictInt = Field(8, ge=1, le=MAX_NEIGHBOURS, description="nearest tokens by cosine per prompt token")
    projection: Projection = "pca"
    sublayer_lens: StrictBool = Field(True, description="logit lens also after each attention add")
    lens_positions: StrictInt = Field(LENS_POSITIONS, ge=1, le=MAX_TOKENS,
                                      description="the logit lens decodes every point at this many last positions")
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1, description="vocabulary sample and UMAP seed")

    @field_validator("prompt")
    @classmethod
    def _prompt_ok(cls, value: str, info: ValidationInfo) -> str:
        check_prompts([value], context_get(info.context, "limits"))
        return value

    @field_validator("target")
    @classmethod
    def _target_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _one_token(value, "target", info)

    @field_validator("foil")
    @classmethod
    def _foil_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _one_token(value, "foil", info)

    @model_validator(mode="after")
    def _prompt_tokens(self, info: ValidationInfo) -> AnatomyParams:
        count_tokens = context_get(info.context, "count_tokens")
        if count_tokens is not None:
            (count,) = count_tokens([self.prompt])
            if count > self.max_tokens:
                raise PydanticCustomError(
                    "too_many_tokens",
                    "the prompt has {count} tokens; the limit is {limit} (max_tokens)",
                    {"count": int(count), "limit": self.max_tokens},
                )
            if count < 1:
                raise PydanticCustomError("no_tokens", "the prompt has no tokens")
        if self.target is not None and self.foil is not None and self.target == self.foil:
            raise PydanticCustomError("foil_is_target", "the foil must differ from the target")
        return self
