"""The parameters of a ``grid`` run: one pydantic model with every bound a user can set.

Validated in the web process before anything is queued (with ``limits``,
``count_tokens`` and ``n_layers`` in the validation context when known) and
again by the worker; ``check_positions`` resolves the through-states plane's
(prompt, position) references against token counts for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from latent_atlas.analyses.validation import (
    CatalogueModel,
    MaxTokens,
    check_prompts,
    check_token_counts,
    context_get,
)

__all__ = ["DEFAULT_PROMPTS", "GridDtype", "GridParams", "PlaneKind", "StateRef", "check_positions"]

PlaneKind = Literal["direct", "replicated", "random_projection", "pca", "through_states"]
GridDtype = Literal["float32", "bfloat16"]

STATIC_MAX_GRID = 4096
STATIC_MAX_LAYER = 4096
MAX_TOP_K = 10

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
                check_positions(self.states, counts)
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


def check_positions(states: Sequence[StateRef], counts: Sequence[int]) -> list[tuple[int, int]]:
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
