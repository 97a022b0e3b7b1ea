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


def demo_portal(backend: str = "sqlite", extra_env: dict[str, str] | None = None,
                worker_queues: tuple[str, ...] | None = None) -> Portal:
    """Start a portal whose catalogue holds the demo model (fetched if missing).

    ``worker_queues``: one worker per entry (e.g. ``("gpu,cpu", "interactive")``);
    None: the harness's default worker. The dequantised model and tokenizer
    caches of the repository's ``.atlas`` are shared (read-only use: keyed by the
    GGUF's hash), so a worker does not convert the GGUF again in each portal.
    """
    fetch_demo_model(DEMO_DIR)
    data_dir = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    for cache in ("converted", "tokenizers"):
        shared = ROOT / ".atlas" / cache
        if shared.is_dir():
            (data_dir / cache).symlink_to(shared, target_is_directory=True)
    models = {DEMO_MODEL_NAME: {"source": str(DEMO_DIR), "gguf_file": DEMO_GGUF_FILE}}
    portal = Portal(data_dir, make_backend(backend, data_dir), models, DEMO_MODEL_NAME,
                    {"ATLAS_LIMITS__MAX_PROMPTS": "512", **(extra_env or {})})
    if worker_queues is None:
        return portal.start()
    # Portal.start with the workers started while the web boots, and a longer wait for it (on a loaded
    # 2-core machine the web's first answer took over 90 s).
    portal.cli("db", "upgrade")
    for queues in worker_queues:
        portal.start_worker(queues)
    portal.web = portal._spawn("web", "web", "--port", str(portal.port), "--workers", "2")
    portal.wait_healthy(timeout=300)
    return portal


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
