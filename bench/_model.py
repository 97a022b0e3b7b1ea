"""The model a benchmark runs on: the demo model by default, or any local model directory.

``--model-dir DIR`` takes a Hugging Face model directory (``config.json`` +
weights + tokenizer) or a directory holding the demo GGUF file. On a machine
the demo GGUF cannot reach (the GPU machine), ``python bench/_model.py --like
DIR --out DIR`` builds a model of the demo's exact shape (its ``config.json``:
30 Llama blocks, width 576, vocabulary 49,152) with seeded random weights and
the demo's tokenizer; its timings and memory are the demo's, its tokens are not.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from latent_atlas.lm import LanguageModel, fetch_demo_model, load_model
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def load_bench_model(model_dir: Path | None, device: torch.device | str = "auto",
                     dtype: str | None = None) -> LanguageModel:
    """The demo model (fetched if missing) or the model in ``model_dir``."""
    extra = {"dtype": dtype} if dtype else {}
    if model_dir is None or (Path(model_dir) / DEMO_GGUF_FILE).exists():
        directory = Path(model_dir) if model_dir else fetch_demo_model(REPO_ROOT / ".atlas" / "models" / "smollm2")
        return load_model(str(directory), gguf_file=DEMO_GGUF_FILE, device=device, name=DEMO_MODEL_NAME,
                          tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers",
                          gguf_cache_dir=REPO_ROOT / ".atlas" / "converted", **extra)
    return load_model(str(model_dir), device=device, name=Path(model_dir).name, **extra)


def build_random_like(like: Path, out: Path, seed: int = 0) -> Path:
    """A model with ``like/config.json``'s shape, seeded random weights, and ``like``'s tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(like)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", type=Path, required=True, help="a directory with config.json and tokenizer files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(f"random model of {args.like}'s shape in {build_random_like(args.like, args.out)}")
