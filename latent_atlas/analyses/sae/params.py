"""The parameters of an ``sae`` harvest run, with every check made before queueing.

``SaeParams.corpus`` is one of (discriminated by ``kind``):

* ``{"kind": "prompts", "prompts": [...]}``: typed text, one sequence per prompt
  (cut at ``context_len`` tokens);
* ``{"kind": "tokens", "token_ids": [[...], ...], "info": CorpusInfo}``: sequences the
  web process sampled from an uploaded file, exactly as the geometry form does
  (``corpus.sample_sequences``); at most ``MAX_INLINE_TOKENS`` in all;
* ``{"kind": "hub", "dataset": ..., "config": ..., "split": ..., "text_field": ...}``:
  the first rows of a Hugging Face dataset split, streamed in the worker
  (``hub_corpus``), cut into windows of ``context_len`` tokens;
* ``{"kind": "demo"}``: the offline demo corpus (``corpus_demo``: Debian fortunes +
  Python docs, over 1.5M tokens), cut the same way.

Checks (pydantic, strict types, bounds): static bounds always; in the portal's
validation context (``ctx["models"]`` given) also the catalogue, ``ctx["limits"]``
(``Limits.max_sae_tokens``, ``ATLAS_LIMITS__MAX_SAE_TOKENS``; without limits ``PORTAL_MAX_TOKENS``),
and the SAE itself: its config is read (``source.sae_config``: ``cfg.json`` or the
hub) so an unknown SAE, an unreachable hub, an SAE whose ``d_in`` is not the model's
hidden size or whose hook names a layer the model lacks is refused with a clear
message before anything is queued (model shape from ``ctx["n_layers"]`` /
``ctx["d_model"]`` or the catalogue entry's config). An SAE of a ``sae_train`` run
is checked when ``ctx["sae_run_dir"]`` resolves run ids; the worker checks again
with the model and SAE loaded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.geometry.params import CorpusInfo
from latent_atlas.analyses.sae.source import SaeLoadError, SaeSource
from latent_atlas.analyses.validation import (
    STATIC_MAX_PROMPTS,
    CatalogueModel,
    StrictBool,
    StrictInt,
    check_prompts,
    context_get,
)

__all__ = [
    "DemoCorpus",
    "HubCorpus",
    "MAX_INLINE_TOKENS",
    "MAX_SAE_TOKENS",
    "PORTAL_MAX_TOKENS",
    "PromptsCorpus",
    "SaeParams",
    "TokensCorpus",
]

MAX_SAE_TOKENS = 100_000_000  # the static bound (a GPU harvests tens of millions)
PORTAL_MAX_TOKENS = 2_000_000  # the bound when the portal context has no limits (Limits' default)
MAX_INLINE_TOKENS = 2_000_000  # token ids carried in the params JSON


class PromptsCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["prompts"]
    prompts: list[str] = Field(min_length=1, max_length=STATIC_MAX_PROMPTS)

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, value: list[str], info: ValidationInfo) -> list[str]:
        check_prompts(value, context_get(info.context, "limits"))
        return value


class TokensCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["tokens"]
    token_ids: list[list[StrictInt]] = Field(min_length=1)
    info: CorpusInfo

    @field_validator("token_ids")
    @classmethod
    def _tokens_ok(cls, value: list[list[int]], info: ValidationInfo) -> list[list[int]]:
        total = 0
        vocab = context_get(info.context, "vocab_size")
        for index, row in enumerate(value, start=1):
            if not row:
                raise PydanticCustomError("empty_sequence", "sequence {index} has no tokens", {"index": index})
            if min(row) < 0 or (vocab is not None and max(row) >= vocab):
                raise PydanticCustomError("token_range", "sequence {index} has a token id outside the "
                                          "vocabulary", {"index": index})
            total += len(row)
        if total > MAX_INLINE_TOKENS:
            raise PydanticCustomError("too_many_inline_tokens", "the sampled corpus has {n} tokens; at most "
                                      "{limit} travel with a run (use a dataset for more)",
                                      {"n": total, "limit": MAX_INLINE_TOKENS})
        return value


class HubCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hub"]
    dataset: str = Field(min_length=1, max_length=200)
    config: str | None = Field(None, max_length=64)
    split: str = Field("train", min_length=1, max_length=64)
    text_field: str = Field("text", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _names_ok(self) -> HubCorpus:
        from latent_atlas.analyses.corpus import CorpusError
        from latent_atlas.analyses.hub_corpus import HubDataset

        try:
            HubDataset(self.dataset, self.config, self.split, self.text_field)
        except CorpusError as exc:
            raise PydanticCustomError("hub_dataset", "{message}", {"message": str(exc)}) from None
        return self


class DemoCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["demo"]


Corpus = Annotated[PromptsCorpus | TokensCorpus | HubCorpus | DemoCorpus, Field(discriminator="kind")]


class SaeParams(BaseModel):
    """A harvest of ``sae``'s latents over ``n_tokens`` tokens of ``corpus`` on ``model``."""

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    sae: SaeSource
    corpus: Corpus
    n_tokens: StrictInt = Field(100_000, ge=1, le=MAX_SAE_TOKENS)
    context_len: StrictInt = Field(128, ge=2, le=4096)
    skip_positions: StrictInt = Field(1, ge=0, le=64)  # not encoded: BOS / attention-sink positions
    top_k: StrictInt = Field(20, ge=1, le=100)
    window: StrictInt = Field(8, ge=0, le=64)
    interval_bins: StrictInt = Field(10, ge=1, le=20)
    interval_per_bin: StrictInt = Field(5, ge=1, le=20)
    hist_bins: StrictInt = Field(48, ge=4, le=256)
    edges_k: StrictInt = Field(10, ge=1, le=64)
    n_clusters: StrictInt = Field(0, ge=0, le=10_000)  # 0: about d_sae / 25, as Engels et al.
    umap_neighbors: StrictInt = Field(15, ge=2, le=200)
    batch_tokens: StrictInt = Field(4096, ge=16, le=262_144)  # tokens per forward pass
    cofire: StrictBool = True
    drop_outliers: StrictBool = True  # attention-sink rows (norm > 10x the batch median) are not encoded
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _portal_checks(self, info: ValidationInfo) -> SaeParams:
        if self.skip_positions >= self.context_len:
            raise PydanticCustomError("skip_positions", "skip_positions ({skip}) must be below context_len "
                                      "({n})", {"skip": self.skip_positions, "n": self.context_len})
        ctx = info.context
        limits = context_get(ctx, "limits")
        if context_get(ctx, "models") is None and limits is None:
            return self  # a notebook or the worker: static bounds only
        limit = PORTAL_MAX_TOKENS if limits is None else limits.max_sae_tokens
        if self.n_tokens > limit:
            raise PydanticCustomError("too_many_tokens", "n_tokens is {n}; this portal harvests at most "
                                      "{limit} tokens per run", {"n": self.n_tokens, "limit": limit})
        if context_get(ctx, "models") is not None:
            check_sae_against_model(self, ctx)
        return self


def _model_shape(name: str, ctx: Any) -> tuple[int | None, int | None]:
    """(n_layers, d_model) from the context, else from the catalogue entry's config (no weights)."""
    n_layers, d_model = context_get(ctx, "n_layers"), context_get(ctx, "d_model")
    if n_layers is not None and d_model is not None:
        return int(n_layers), int(d_model)
    try:
        from latent_atlas.lm.shape import model_shape
        from latent_atlas.settings import get_settings

        entry = get_settings().model_source(name)
        shape = model_shape(entry.source, gguf_file=entry.gguf_file, revision=getattr(entry, "revision", None))
    except Exception:  # noqa: BLE001 - unknown here: the worker checks with the model loaded
        return n_layers, d_model
    return (n_layers if n_layers is not None else shape.n_layers,
            d_model if d_model is not None else shape.d_model)


def check_sae_against_model(params: SaeParams, ctx: Any) -> None:
    """Read the SAE's config and check it against the model; ``PydanticCustomError`` when it does not fit."""
    from latent_atlas.analyses.sae.source import check_sae_fits, sae_config, sae_hook

    if params.sae.kind == "run" and context_get(ctx, "sae_run_dir") is None:
        return  # the worker resolves runs (it has the database)
    try:
        cfg = sae_config(params.sae, run_dir_resolver=context_get(ctx, "sae_run_dir"))
        hook = sae_hook(cfg)
        n_layers, d_model = _model_shape(params.model, ctx)
        check_sae_fits(int(cfg["d_in"]), hook.layer, d_model, n_layers, model_name=params.model)
    except (SaeLoadError, ValueError, KeyError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise PydanticCustomError("sae_mismatch", "sae: {message}", {"message": message}) from None
