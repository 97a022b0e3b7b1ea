"""Which catalogue models can be fetched, and the portal's "files not fetched" message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from latent_atlas.lm.fetch import FETCHABLE, fetch_model, missing_files
from latent_atlas.settings import (
    DEMO_MODEL_NAME,
    GEMMA3_GGUF_FILE,
    GEMMA3_MODEL_NAME,
    ModelEntry,
    Settings,
)


def test_the_default_catalogue_has_both_offline_models(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    gemma = settings.model_source(GEMMA3_MODEL_NAME)
    assert gemma.source == str(tmp_path.resolve() / "models" / "gemma3-270m")
    assert gemma.gguf_file == GEMMA3_GGUF_FILE
    assert set(FETCHABLE) == {DEMO_MODEL_NAME, GEMMA3_MODEL_NAME} <= set(settings.models)


def test_missing_files_names_the_path_and_the_command(tmp_path: Path) -> None:
    entry = ModelEntry(source=str(tmp_path / "gemma"), gguf_file=GEMMA3_GGUF_FILE)
    assert missing_files(GEMMA3_MODEL_NAME, entry) == (
        f"model 'gemma3-270m' is in the catalogue but its files are not on this machine ({tmp_path / 'gemma'} "
        "is missing); fetch them with `latent-atlas fetch-model gemma3-270m`")
    (tmp_path / "gemma").mkdir()
    assert f"({tmp_path / 'gemma' / GEMMA3_GGUF_FILE} is missing)" in missing_files(GEMMA3_MODEL_NAME, entry)
    (tmp_path / "gemma" / GEMMA3_GGUF_FILE).write_bytes(b"GGUF")
    assert missing_files(GEMMA3_MODEL_NAME, entry) is None
    other = missing_files("mine", ModelEntry(source=str(tmp_path / "absent")))
    assert other is not None and other.endswith("; the admin must put the model's files there")
    assert missing_files("gpt2", ModelEntry(source="openai-community/gpt2")) is None  # a hub id: not checked


def test_fetch_model_refuses_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="cannot be fetched here"):
        fetch_model("gpt2", ModelEntry(source=str(tmp_path)))


def test_fetch_model_cli_refusals(tmp_path: Path) -> None:
    env = {"ATLAS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    unknown = subprocess.run([sys.executable, "-m", "atlas_cli", "fetch-model", "gpt2"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert unknown.returncode == 2
    assert "model 'gpt2' cannot be fetched here (fetchable: gemma3-270m, smollm2-135m)" in unknown.stderr + unknown.stdout
    not_listed = subprocess.run([sys.executable, "-m", "atlas_cli", "fetch-model", GEMMA3_MODEL_NAME],
                                capture_output=True, text=True, timeout=300,
                                env={**env, "ATLAS_MODELS": '{"x": {"source": "gpt2"}}', "ATLAS_DEFAULT_MODEL": "x"})
    assert not_listed.returncode == 2
    assert "is not in this portal's catalogue" in not_listed.stderr + not_listed.stdout
