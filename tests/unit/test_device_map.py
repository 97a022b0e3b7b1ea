"""Models too large for one GPU: the memory estimate, the fit check, and loading through a device map.

This machine has no GPU, so the device-map tests place every block explicitly
on ``"cpu"`` (an accelerate-format dict): they prove the loading path (the map
is passed to ``from_pretrained`` and recorded, the model is not moved
afterwards) and that hooks, injection, readout and the lens give exactly what
the plain load gives. The moves at device boundaries (``to_module``) are
no-ops here; only a machine with two devices exercises them for real. The fit
check is a pure function given the available bytes; ``available_memory`` on
the CPU reads the real RAM (CUDA's ``mem_get_info`` path is not run here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from latent_atlas.lm import capture_points, check_hook_points, load_model
from latent_atlas.lm.inject import compute_context, readout, resid_from_layer, run_from_layer
from latent_atlas.lm.lens import logit_lens
from latent_atlas.lm.loading import LanguageModel
from latent_atlas.lm.memory import (
    GB,
    ModelTooLarge,
    available_memory,
    check_model_fits,
    fit_error,
    needed_memory_gb,
    parameter_count,
    ram_available,
)
from latent_atlas.settings import ModelEntry
from tiny_models import build_tiny_model

PROMPT = "The quick brown fox jumps"
CONTEXT = "a context longer than the window"


# --------------------------------------------------------------------------- the fit check (pure)


def test_fit_error_fits_and_refuses_with_needed_and_available() -> None:
    assert fit_error("m", 10.0, {"cuda:0": int(10.5 * GB)}) is None
    assert fit_error("m", 10.0, {"cuda:0": int(10 * GB)}) is None  # exactly enough fits
    message = fit_error("big-model", 54.0, {"cuda:0": int(22.3 * GB)})
    assert message == ("model 'big-model' needs about 54.0 GB but only cuda:0 22.3 GB free; use a smaller "
                       "dtype, or set device_map \"auto\" in the catalogue to spread it over the node's GPUs")
    on_cpu = fit_error("m", 8.0, {"cpu": int(2 * GB)})
    assert on_cpu == "model 'm' needs about 8.0 GB but only cpu 2.0 GB free; use a smaller dtype"


def test_fit_error_sums_the_gpus_of_a_device_map() -> None:
    four = {f"cuda:{i}": int(40 * GB) for i in range(4)}
    assert fit_error("m", 150.0, four) is None  # no GPU holds it, the four together do
    message = fit_error("m", 170.0, four)
    assert message is not None
    assert "needs about 170.0 GB but only the 4 devices have 160.0 GB free together" in message
    assert "cuda:3 40.0 GB" in message


def test_needed_memory_is_weights_times_dtype_bytes_plus_headroom() -> None:
    assert needed_memory_gb(1_000_000_000, "float32", headroom=0.0) == pytest.approx(4.0)
    assert needed_memory_gb(1_000_000_000, "bfloat16", headroom=0.0) == pytest.approx(2.0)
    assert needed_memory_gb(1_000_000_000, "float16") == pytest.approx(2.4)  # default headroom 20%
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        needed_memory_gb(10, "int8")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_parameter_count_from_the_config_equals_the_loaded_model(tmp_path: Path, family: str) -> None:
    """Counted on the meta device (tied embeddings once, as ``parameters()`` counts them)."""
    path = build_tiny_model(tmp_path / family, family)
    lm = load_model(str(path))
    assert parameter_count(str(path)) == sum(p.numel() for p in lm.model.parameters())


@pytest.mark.demo_model
def test_parameter_count_of_a_gguf_file_is_its_tensor_table(demo_model_dir: Path) -> None:
    from transformers import AutoConfig

    from latent_atlas.lm.memory import meta_model
    from latent_atlas.settings import DEMO_GGUF_FILE

    counted = parameter_count(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE)
    config = AutoConfig.from_pretrained(str(demo_model_dir), gguf_file=DEMO_GGUF_FILE)
    assert counted == sum(p.numel() for p in meta_model(config).parameters()) == 134_515_008


def test_available_memory_on_the_cpu_is_the_available_ram() -> None:
    free = available_memory(torch.device("cpu"))
    assert list(free) == ["cpu"]
    assert 0 < free["cpu"] <= _mem_total()
    assert abs(free["cpu"] - ram_available()) < 2 * GB  # two reads a moment apart


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def test_check_model_fits_refuses_before_loading(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "llama", "llama")
    n = parameter_count(str(path))
    needed = needed_memory_gb(n, "float32")
    common = {"source": str(path), "device": torch.device("cpu")}
    with pytest.raises(ModelTooLarge, match=rf"model 'tiny' needs about {needed:.1f} GB but only cpu 0.0 GB"):
        check_model_fits("tiny", **common, available={"cpu": int(needed * GB) - 1})
    report = check_model_fits("tiny", **common, available={"cpu": int(needed * GB) + 1})
    assert report["needed_gb"] == pytest.approx(needed)
    # The catalogue's memory_gb wins over the estimate.
    with pytest.raises(ModelTooLarge, match="needs about 500.0 GB"):
        check_model_fits("tiny", **common, memory_gb=500.0, available={"cpu": int(64 * GB)})
    # Measured for real on this machine: a tiny model fits the RAM.
    assert check_model_fits("tiny", **common)["available"]["cpu"] > 0
    # A model whose config cannot be read is not refused here (the load reports what is wrong).
    assert check_model_fits("x", source=str(tmp_path / "absent"), device=torch.device("cpu"),
                            available={"cpu": 0}) == {"needed_gb": None, "available": None}


def test_catalogue_entry_validates_device_map_and_memory() -> None:
    entry = ModelEntry(source="x", device_map="auto", memory_gb=54.5, dtype="bfloat16")
    assert (entry.device_map, entry.memory_gb) == ("auto", 54.5)
    assert ModelEntry(source="x").device_map is None and ModelEntry(source="x").memory_gb is None
    with pytest.raises(ValidationError, match="device_map"):
        ModelEntry(source="x", device_map="balanced")
    with pytest.raises(ValidationError, match="memory_gb"):
        ModelEntry(source="x", memory_gb=0)
    with pytest.raises(ValidationError, match="dtype"):
        ModelEntry(source="x", dtype="int4")
    with pytest.raises(ValidationError, match="device_mapp"):
        ModelEntry(source="x", device_mapp="auto")  # a typo is an error, not silently ignored


# --------------------------------------------------------------------------- loading through a device map


def _explicit_map(lm: LanguageModel) -> dict[str, str]:
    """Every block and every other top-level part of the model, each named on its own, on "cpu"."""
    blocks = lm.adapter.blocks
    base_path, _, blocks_name = blocks.rpartition(".")
    placement = {f"{blocks}.{i}": "cpu" for i in range(lm.n_layers)}
    base = lm.model.get_submodule(base_path)
    for name, _child in base.named_children():
        if name != blocks_name:
            placement[f"{base_path}.{name}"] = "cpu"
    for name, _child in lm.model.named_children():
        if name != base_path.split(".")[0]:
            placement[name] = "cpu"
    return placement


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2", "gpt_neox"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[LanguageModel, LanguageModel]:
    family = str(request.param)
    path = build_tiny_model(tmp_path_factory.mktemp(f"dm-{family}"), family)
    plain = load_model(str(path), name=f"tiny-{family}")
    mapped = load_model(str(path), name=f"tiny-{family}", device_map=_explicit_map(plain))
    return plain, mapped


def test_the_map_is_recorded(pair: tuple[LanguageModel, LanguageModel]) -> None:
    plain, mapped = pair
    assert plain.device_map is None and plain.environment()["device_map"] is None
    assert mapped.device_map == _explicit_map(plain)
    assert mapped.environment()["device_map"] == mapped.device_map
    assert mapped.device == torch.device("cpu")  # the token embedding's device


def test_hooks_equal_the_plain_load(pair: tuple[LanguageModel, LanguageModel]) -> None:
    plain, mapped = pair
    ids = torch.tensor([plain.tokenizer(PROMPT)["input_ids"]])
    assert check_hook_points(mapped, ids) < 1e-4
    a, b = capture_points(plain, ids), capture_points(mapped, ids)
    torch.testing.assert_close(a.stacked(), b.stacked(), rtol=0, atol=0)


def test_injection_and_readout_equal_the_plain_load(pair: tuple[LanguageModel, LanguageModel]) -> None:
    plain, mapped = pair
    ids = torch.tensor([plain.tokenizer(PROMPT)["input_ids"]])
    capture = capture_points(plain, ids)
    with torch.inference_mode():
        expected = plain.model(input_ids=ids).logits[:, -1].float()
    context = compute_context(mapped, plain.tokenizer(CONTEXT)["input_ids"])
    for layer in (0, 1, plain.n_layers):
        state = capture.resid_pre(layer) if layer < plain.n_layers else capture.points[-1][3]
        got = run_from_layer(mapped, layer, state[:, -1]).float()
        torch.testing.assert_close(got, run_from_layer(plain, layer, state[:, -1]).float(), rtol=0, atol=0)
        both = resid_from_layer(mapped, layer, state[:, -1], shortcut=False)
        torch.testing.assert_close(both, resid_from_layer(plain, layer, state[:, -1], shortcut=False),
                                   rtol=0, atol=0)
        with_context = run_from_layer(mapped, layer, state[:, -1], prefix=context.prefix)
        reference = run_from_layer(plain, layer, state[:, -1], prefix=context.prefix)
        torch.testing.assert_close(with_context, reference, rtol=0, atol=0)
    # Readout and lens of the last block's output through the map are the model's own logits.
    last = capture_points(mapped, ids)
    torch.testing.assert_close(readout(mapped, last.points[-1][3][:, -1]).float(), expected,
                               rtol=1e-4, atol=1e-5)
    top_ids, _ = logit_lens(mapped, last.points[-1][3][0, -1:], k=1)
    assert int(top_ids[0, 0]) == int(expected.argmax())


def test_auto_on_a_cpu_device_is_a_plain_load(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "llama", "llama")
    lm = load_model(str(path), device="cpu", device_map="auto")
    assert lm.device_map is None and lm.device == torch.device("cpu")
