"""Shared set-up for the portal benchmarks: a live portal on the demo model."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Portal, make_backend  # noqa: E402
from latent_atlas.lm import fetch_demo_model  # noqa: E402
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME  # noqa: E402

DEMO_DIR = ROOT / ".atlas" / "models" / "smollm2"


def demo_portal(backend: str = "sqlite") -> Portal:
    """Start a portal whose catalogue holds the demo model (fetched if missing)."""
    fetch_demo_model(DEMO_DIR)
    data_dir = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    models = {DEMO_MODEL_NAME: {"source": str(DEMO_DIR), "gguf_file": DEMO_GGUF_FILE}}
    portal = Portal(data_dir, make_backend(backend, data_dir), models, DEMO_MODEL_NAME,
                    {"ATLAS_LIMITS__MAX_PROMPTS": "512"})
    return portal.start()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
