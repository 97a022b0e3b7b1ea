"""The parameters of a ``scan`` run: one pydantic model with every bound and the pre-queue checks.

What is checked depends on the validation context (see
``latent_atlas.analyses.validation``):

* always: bounds and types, a non-empty prompt A, a non-empty prompt B in
  ``diff`` mode and no B in ``single`` mode, UMAP parameters in range, a
  well-formed ``basis_run`` id, and with a ``basis_run`` a PCA reduction (only
  a PCA basis can be reused: see ``latent_atlas.analyses.scan``);
* ``ctx["limits"]`` / ``ctx["models"]`` / ``ctx["count_tokens"]``: the portal's
  prompt bounds, catalogue and token budget (every prompt within ``max_tokens``);
* ``ctx["run_info"]`` (``run_id -> dict | None`` with ``kind``, ``status``,
  ``model`` and ``summary``): the basis run exists, is a succeeded ``scan`` run
  of the same model with a stored PCA basis of that model's width, fitted with
  the same ``unit_normalise``.

Invariant: a failed check is a ``PydanticCustomError`` whose message names the
field and the limit, never the prompt text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.validation import (
    CatalogueModel,
    MaxTokens,
    check_prompts,
    check_token_counts,
    context_get,
)

__all__ = ["DIVERGENCE_METRICS", "Metric", "ScanParams", "check_basis_run"]

RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Metric = Literal["cosine_last", "cosine_mean", "kl", "js", "cka"]
DIVERGENCE_METRICS: dict[str, str] = {
    "cosine_last": "cosine distance of the last token's states",
    "cosine_mean": "mean cosine distance over aligned positions",
    "kl": "logit-lens KL(A || B) of the last token (bits)",
    "js": "logit-lens Jensen-Shannon divergence of the last token (bits)",
    "cka": "1 - linear CKA over aligned positions",
}

RunInfo = Callable[[str], Mapping[str, Any] | None]


class ScanParams(BaseModel):
    """One prompt (``single``) or two (``diff``) scanned through every layer of ``model``."""

    model_config = ConfigDict(extra="forbid")

    model: CatalogueModel
    mode: Literal["single", "diff"] = "single"
    prompt_a: str
    prompt_b: str | None = None
    max_tokens: MaxTokens = 128
    points: Literal["residual", "all"] = "residual"  # "all": the four points of every block too
    reduction: Literal["pca", "umap"] = "pca"
    unit_normalise: StrictBool = False
    exclude_position0: StrictBool = False  # from the fit only (position 0 is still projected)
    basis_run: str | None = Field(None, pattern=RUN_ID_PATTERN)  # reuse that run's PCA basis
    umap_neighbors: StrictInt = Field(15, ge=2, le=200)
    umap_min_dist: float = Field(0.1, ge=0.0, le=1.0)
    umap_fit_points: StrictInt = Field(20_000, ge=100, le=100_000)
    lens: StrictBool = True  # logit-lens top token of every point (hover)
    lens_max_points: StrictInt = Field(200_000, ge=0, le=2_000_000)
    threshold_metric: Metric = "js"
    threshold: float = Field(0.1, gt=0.0, le=100.0)
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt_a] if self.mode == "single" else [self.prompt_a, self.prompt_b or ""]

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ScanParams:
        if self.mode == "diff":
            if self.prompt_b is None or not self.prompt_b.strip():
                raise PydanticCustomError("empty_prompt_b", "prompt B is empty; diff mode needs two prompts")
        elif self.prompt_b is not None:
            raise PydanticCustomError("prompt_b_single", "prompt B is only used in diff mode (mode is single)")
        if not self.prompt_a.strip():
            raise PydanticCustomError("empty_prompt_a", "prompt A is empty")
        check_prompts(self.prompts, context_get(info.context, "limits"))
        if self.basis_run is not None and self.reduction != "pca":
            raise PydanticCustomError(
                "basis_needs_pca", "a basis run gives a PCA basis; set reduction to pca (a UMAP "
                "embedding cannot be reused)")
        count_tokens = context_get(info.context, "count_tokens")
        if count_tokens is not None:
            check_token_counts(self.prompts, self.max_tokens, count_tokens)
        run_info = context_get(info.context, "run_info")
        if self.basis_run is not None and run_info is not None:
            check_basis_run(self, run_info(self.basis_run))
        return self


def check_basis_run(params: ScanParams, info: Mapping[str, Any] | None, d_model: int | None = None) -> None:
    """The basis run ``info`` (kind, status, model, summary) can serve ``params``; else a clear error.

    ``d_model`` (the model's width, when known) is compared with the basis' width.
    """
    run_id = params.basis_run
    if info is None:
        raise PydanticCustomError("basis_missing", "basis run {run} does not exist", {"run": run_id})
    if info.get("kind") != "scan":
        raise PydanticCustomError("basis_kind", "basis run {run} is a {kind} run, not a scan run",
                                  {"run": run_id, "kind": str(info.get("kind"))})
    if info.get("status") != "succeeded":
        raise PydanticCustomError("basis_status", "basis run {run} is {status}; only a succeeded run has a basis",
                                  {"run": run_id, "status": str(info.get("status"))})
    if info.get("model") != params.model:
        raise PydanticCustomError(
            "basis_model", "basis run {run} used model {other}, not {model}; a basis projects states of "
            "its own model only", {"run": run_id, "other": str(info.get("model")), "model": params.model})
    basis = (info.get("summary") or {}).get("basis") or {}
    if basis.get("kind") != "pca" or not basis.get("stored"):
        raise PydanticCustomError(
            "basis_not_pca", "basis run {run} has no stored PCA basis (it used {kind}); only PCA bases "
            "can be reused", {"run": run_id, "kind": str(basis.get("kind", "none"))})
    width = basis.get("d_model")
    if d_model is not None and width != d_model:
        raise PydanticCustomError("basis_width", "basis run {run} has hidden size {width}; the model has {d}",
                                  {"run": run_id, "width": str(width), "d": d_model})
    if bool(basis.get("unit_normalise")) != params.unit_normalise:
        raise PydanticCustomError(
            "basis_unit", "basis run {run} was fitted with unit_normalise={theirs}; set the same here",
            {"run": run_id, "theirs": str(bool(basis.get("unit_normalise")))})
