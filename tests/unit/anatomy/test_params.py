"""AnatomyParams: bounds and the one-token checks before queueing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from latent_atlas.analyses.anatomy import MAX_IG_STEPS, MAX_TOKENS, AnatomyParams
from latent_atlas.analyses.validation import token_counter
from latent_atlas.settings import Limits
from tiny_models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def context() -> dict:
    return {"limits": Limits(), "models": {"m"}, "count_tokens": token_counter(build_tiny_tokenizer())}


def _errors(raw: dict, context: dict) -> str:
    with pytest.raises(ValidationError) as info:
        AnatomyParams.model_validate_json(__import__("json").dumps(raw), strict=True, context=context)
    return str(info.value)


def test_defaults_and_512_tokens(context: dict) -> None:
    params = AnatomyParams.model_validate({"model": "m", "prompt": "a" * 512}, context=context)
    assert params.max_tokens == MAX_TOKENS == 512 and params.target is None and params.ig_baseline == "mean"


@pytest.mark.parametrize(("raw", "message"), [
    ({"prompt": "a" * 513}, "513 tokens; the limit is 512"),
    ({"prompt": "abc", "max_tokens": 2}, "3 tokens; the limit is 2"),
    ({"prompt": "  \n\t"}, "is empty"),
    ({"prompt": ""}, "at least 1 character"),
    ({"prompt": "abc", "ig_steps": MAX_IG_STEPS + 1}, "less than or equal to 256"),
    ({"prompt": "abc", "ig_batch": 0}, "greater than or equal to 1"),
    ({"prompt": "abc", "max_tokens": 513}, "less than or equal to 512"),
    ({"prompt": "abc", "target": "ab"}, "target must be exactly one token"),
    ({"prompt": "abc", "foil": "é"}, "foil must be exactly one token"),  # two UTF-8 bytes
    ({"prompt": "abc", "target": "a", "foil": "a"}, "foil must differ"),
    ({"prompt": "abc", "ig_steps": True}, "valid integer"),
    ({"prompt": "abc", "projection": "tsne"}, "'pca' or 'umap'"),
    ({"prompt": "abc", "lens_positions": 0}, "greater than or equal to 1"),
    ({"prompt": "abc", "lens_positions": 513}, "less than or equal to 512"),
    ({"prompt": "abc", "lens_positions": 3.0}, "valid integer"),
    ({"prompt": "abc", "model": "other"}, "not in this portal's catalogue"),
    ({"prompt": "abc", "surprise": 1}, "Extra inputs are not permitted"),
])
def test_bad_input_is_refused(context: dict, raw: dict, message: str) -> None:
    assert message in _errors({"model": "m", **raw}, context)


def test_prompt_character_limit(context: dict) -> None:
    small = {**context, "limits": Limits(max_prompt_chars=10)}
    assert "11 characters; the limit is 10" in _errors({"model": "m", "prompt": "a" * 11}, small)
