"""Checks shared by every run kind that takes prompts or a catalogue model name.

Params models call these from pydantic validators. What is checked depends on
the validation context (``Params.model_validate(raw, context=ctx)``):

* always: static bounds (at least one prompt, none empty: a prompt needs a
  character that is neither whitespace nor a control/format character, so a
  lone NUL byte is empty; no prompt may contain NUL, which PostgreSQL text
  cannot hold);
* ``ctx["limits"]`` (a ``latent_atlas.settings.Limits``): the portal's bounds
  on prompt count, prompt length in characters and tokens per prompt;
* ``ctx["models"]`` (a collection of names): the model must be one of them;
* ``ctx["count_tokens"]`` (``list[str] -> list[int]``): no prompt may have
  more tokens than the run's budget.

Invariant: every message names the offending prompt by its 1-based index and
the limit it broke, and never echoes the prompt text (it may be long or odd).
Messages are ``PydanticCustomError`` so pydantic shows them verbatim.

Numbers and switches of the params models are strict (``StrictInt``,
``StrictBool``, ``MaxTokens``): JSON ``true`` is not the integer 1 and ``1`` is
not a switch. The web process also validates whole params in pydantic's strict
JSON mode (``webapp.runs_service.validate_params``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field, Strict, ValidationInfo
from pydantic_core import PydanticCustomError

from latent_atlas.settings import Limits

__all__ = [
    "CatalogueModel",
    "MaxTokens",
    "STATIC_MAX_PROMPT_CHARS",
    "STATIC_MAX_PROMPTS",
    "StrictBool",
    "StrictInt",
    "TokenCounter",
    "check_max_tokens",
    "check_model_name",
    "check_prompts",
    "check_token_counts",
    "context_get",
    "token_counter",
]

STATIC_MAX_PROMPTS = 100_000
STATIC_MAX_PROMPT_CHARS = 1_000_000

TokenCounter = Callable[[list[str]], list[int]]

# Shared strict field types: ``StrictInt`` refuses bools and numeric strings, ``StrictBool``
# refuses 0/1 and "true". Bounds go in ``Field`` as usual: ``seed: StrictInt = Field(0, ge=0)``.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]

# Characters that do not make a prompt non-empty: control, format, surrogate, unassigned.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn"})


def is_blank(text: str) -> bool:
    """True when ``text`` has no character but whitespace and control/format characters."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in text)


def context_get(context: Any, key: str) -> Any:
    """``context[key]`` when the validation context is a mapping that has it, else ``None``."""
    if isinstance(context, Mapping):
        return context.get(key)
    return None


def check_prompts(prompts: Sequence[str], limits: Limits | None = None) -> None:
    """Non-empty prompts, within the static bounds and, when given, the portal's limits."""
    max_prompts = STATIC_MAX_PROMPTS if limits is None else min(STATIC_MAX_PROMPTS, limits.max_prompts)
    max_chars = STATIC_MAX_PROMPT_CHARS if limits is None else min(
        STATIC_MAX_PROMPT_CHARS, limits.max_prompt_chars
    )
    if not prompts:
        raise PydanticCustomError("no_prompts", "give at least one prompt")
    if len(prompts) > max_prompts:
        raise PydanticCustomError(
            "too_many_prompts",
            "too many prompts: {count} given; the limit is {limit}",
            {"count": len(prompts), "limit": max_prompts},
        )
    for index, prompt in enumerate(prompts, start=1):
        if is_blank(prompt):
            raise PydanticCustomError("empty_prompt", "prompt {index} is empty", {"index": index})
        if "\x00" in prompt:
            raise PydanticCustomError(
                "nul_in_prompt", "prompt {index} contains a NUL character", {"index": index})
        if len(prompt) > max_chars:
            raise PydanticCustomError(
                "prompt_too_long",
                "prompt {index} has {chars} characters; the limit is {limit}",
                {"index": index, "chars": len(prompt), "limit": max_chars},
            )


def check_max_tokens(max_tokens: int, limits: Limits | None, field: str = "max_tokens") -> None:
    """``max_tokens`` within the portal's ``max_tokens_per_prompt`` (when limits are given)."""
    if limits is not None and max_tokens > limits.max_tokens_per_prompt:
        raise PydanticCustomError(
            "max_tokens_too_large",
            "{field} is {value}; this portal allows at most {limit} tokens per prompt",
            {"field": field, "value": max_tokens, "limit": limits.max_tokens_per_prompt},
        )


def check_token_counts(
    prompts: Sequence[str], max_tokens: int, count_tokens: TokenCounter, field: str = "max_tokens"
) -> None:
    """Every prompt has at most ``max_tokens`` tokens according to ``count_tokens``."""
    counts = list(count_tokens(list(prompts)))
    if len(counts) != len(prompts):
        raise ValueError(f"the token counter returned {len(counts)} counts for {len(prompts)} prompts")
    for index, count in enumerate(counts, start=1):
        if count > max_tokens:
            raise PydanticCustomError(
                "too_many_tokens",
                "prompt {index} has {count} tokens; the limit is {limit} ({field})",
                {"index": index, "count": int(count), "limit": max_tokens, "field": field},
            )
        if count < 1:
            raise PydanticCustomError("no_tokens", "prompt {index} has no tokens", {"index": index})


def check_model_name(name: str, models: Collection[str] | None) -> None:
    """``name`` is in the catalogue ``models`` (when given)."""
    if models is not None and name not in models:
        raise PydanticCustomError(
            "model_not_allowed",
            "model '{model}' is not in this portal's catalogue (allowed: {allowed})",
            {"model": name, "allowed": ", ".join(sorted(models))},
        )


def _catalogue_model(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise PydanticCustomError("model_blank", "model must not be blank")
    check_model_name(value, context_get(info.context, "models"))
    return value


# The ``model`` field of every run kind: 1-200 characters, not blank, in ``ctx["models"]`` when given.
CatalogueModel = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_catalogue_model)]


def _portal_max_tokens(value: int, info: ValidationInfo) -> int:
    check_max_tokens(value, context_get(info.context, "limits"))
    return value


# A ``max_tokens`` field: 1-4096, and within ``ctx["limits"].max_tokens_per_prompt`` when given.
MaxTokens = Annotated[int, Strict(), Field(ge=1, le=4096), AfterValidator(_portal_max_tokens)]


def token_counter(tokenizer: Any) -> TokenCounter:
    """A ``count_tokens`` for the validation context that counts as the analyses tokenise.

    ``tokenizer`` is a transformers tokenizer; counts include the special
    tokens it adds by default, exactly like the run's own tokenisation.
    """

    def count(prompts: list[str]) -> list[int]:
        if not prompts:
            return []
        return [len(ids) for ids in tokenizer(prompts)["input_ids"]]

    return count
