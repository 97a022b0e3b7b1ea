"""The real demo model (SmolLM2-135M, GGUF): hook points proven, " Paris", tokenizer cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.lm import (
    LanguageModel,
    capture_points,
    check_hook_points,
    load_model,
    load_tokenizer,
    logit_lens,
)
from latent_atlas.lm.loading import sha256_file
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.demo_model

PROMPT = "The capital of France is"


def test_demo_model_shape(demo_lm: LanguageModel, demo_model_dir: Path) -> None:
    assert type(demo_lm.model).__name__ == "LlamaForCausalLM"
    assert (demo_lm.n_layers, demo_lm.d_model, demo_lm.vocab_size) == (30, 576, 49152)
    assert demo_lm.revision == sha256_file(demo_model_dir / DEMO_GGUF_FILE)
    assert demo_lm.environment()["gguf_file"] == DEMO_GGUF_FILE


def test_hook_points_hold_on_every_layer(demo_lm: LanguageModel) -> None:
    encoded = demo_lm.tokenizer([PROMPT, "Hello", "Layer by layer, the residual stream grows."],
                                padding=True, return_tensors="pt")
    error = check_hook_points(demo_lm, encoded["input_ids"], encoded["attention_mask"])
    assert error < 1e-3


def test_paris_via_model_and_logit_lens(demo_lm: LanguageModel) -> None:
    encoded = demo_lm.tokenizer([PROMPT], return_tensors="pt")
    capture = capture_points(demo_lm, encoded["input_ids"], logits=True)
    assert capture.logits is not None
    predicted = int(capture.logits[0, -1].argmax())
    assert demo_lm.tokenizer.decode([predicted]) == " Paris"
    top_ids, top_probs = logit_lens(demo_lm, capture.points[-1][3][0, -1], k=5)
    assert int(top_ids[0]) == predicted
    torch.testing.assert_close(
        top_probs, torch.softmax(capture.logits[0, -1].float(), -1).topk(5).values, rtol=1e-4, atol=1e-6
    )


def test_gguf_tokenizer_cache(demo_model_dir: Path, tmp_path: Path) -> None:
    first = load_tokenizer(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE, cache_dir=tmp_path)
    second = load_tokenizer(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE, cache_dir=tmp_path)
    (cached,) = tmp_path.iterdir()  # one directory, no temporary left behind
    assert Path(second.name_or_path) == cached  # the second load read the converted copy
    assert cached.name.startswith(Path(DEMO_GGUF_FILE).stem) and not cached.name.startswith(".")
    assert cached.stat().st_mode & 0o055 == 0o055  # readable by the web process too
    texts = [PROMPT, "naïve café – 東京 🙂", "  spaces\nand\ttabs"]
    assert first(texts)["input_ids"] == second(texts)["input_ids"]
    assert second.pad_token == first.pad_token and second.padding_side == "right"


def test_geometry_on_demo_model(demo_lm: LanguageModel) -> None:
    result = run_geometry(
        GeometryParams(model="smollm2-135m", prompts=[PROMPT, "Hello there"], dims=3), demo_lm
    )
    n_tokens = result.summary["n_tokens"]
    assert result.arrays["coords"].shape == (sum(n_tokens) * 30 * 4, 3)
    assert result.summary["tokens"][0] == ["The", " capital", " of", " France", " is"]
    assert np.all(np.isfinite(result.arrays["coords"]))


def test_converted_gguf_copy_matches_the_gguf_itself(demo_lm: LanguageModel, demo_model_dir: Path) -> None:
    """``demo_lm`` comes from the dequantised cache; a direct GGUF load must agree exactly."""
    direct = load_model(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE, name=DEMO_MODEL_NAME,
                        tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers")
    assert direct.revision == demo_lm.revision  # the GGUF file's sha256 either way
    ids = demo_lm.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        cached = demo_lm.model(**ids).logits
        reference = direct.model(**ids).logits
    assert torch.equal(cached, reference)
