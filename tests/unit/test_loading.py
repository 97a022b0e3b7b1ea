"""Loading local models and tokenizers, errors, revision and environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latent_atlas.lm import (
    DeviceError,
    LanguageModel,
    ModelLoadError,
    load_model,
    load_tokenizer,
    resolve_device,
)
from tiny_models import build_tiny_model


def test_loaded_model_invariants(tiny_llama: LanguageModel, tiny_llama_dir: Path) -> None:
    lm = tiny_llama
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.pad_token is not None
    assert lm.tokenizer.padding_side == "right"
    assert (lm.n_layers, lm.d_model, lm.vocab_size) == (3, 64, 258)
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert lm.name == "tiny-llama" and lm.source == str(tiny_llama_dir)
    assert lm.gguf_file is None
    assert lm.revision is not None and len(lm.revision) == 64


def test_revision_is_a_weights_hash(tmp_path: Path, tiny_gpt2: LanguageModel) -> None:
    again = load_model(str(build_tiny_model(tmp_path / "same", "gpt2", seed=0)))
    other = load_model(str(build_tiny_model(tmp_path / "other", "gpt2", seed=1)))
    assert again.revision == tiny_gpt2.revision
    assert other.revision != tiny_gpt2.revision


def test_environment_is_json_safe(tiny_gpt2: LanguageModel) -> None:
    env = tiny_gpt2.environment()
    assert json.loads(json.dumps(env)) == env
    for key in ("model", "source", "gguf_file", "revision", "dtype", "device", "torch",
                "transformers", "numpy", "python", "architecture"):
        assert key in env
    assert env["dtype"] == "float32" and env["architecture"] == "GPT2LMHeadModel"


def test_bfloat16(tiny_gpt2_dir: Path) -> None:
    lm = load_model(str(tiny_gpt2_dir), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.environment()["dtype"] == "bfloat16"


def test_missing_local_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=rf"could not load model '{missing}': local directory .* does not exist"):
        load_model(str(missing))


def test_bad_dtype(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"dtype 'float64' is not supported \(choose float32, bfloat16, float16\)"):
        load_model(str(tiny_gpt2_dir), dtype="float64", name="tiny")


def test_missing_gguf_file(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"GGUF file missing\.gguf not found"):
        load_model(str(tiny_gpt2_dir), gguf_file="missing.gguf")


def test_not_a_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"could not load model 'empty': "):
        load_model(str(tmp_path), name="empty")


def test_load_tokenizer(tiny_gpt2_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_gpt2_dir))
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"
    assert len(tokenizer("héllo")["input_ids"]) == 6  # byte level: one token per UTF-8 byte
    with pytest.raises(ModelLoadError, match="could not load the tokenizer"):
        load_tokenizer(str(tiny_gpt2_dir / "missing"))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_unreachable_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode makes the hub path fail at once instead of after retries; the code path is the real one.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"^could not load model 'hub-model': "):
        load_model("no-such-org/no-such-model", name="hub-model")
