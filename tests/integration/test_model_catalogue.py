"""The catalogue's model files and memory, through the real API and a real worker.

* A catalogue model whose files were never fetched (here the default
  ``gemma3-270m`` entry in an empty data directory) is refused before anything
  is queued, with the missing path and the command that fetches it.
* A model whose expected memory (the catalogue's ``memory_gb``) exceeds what
  the worker's device has is refused by the worker before it loads anything:
  the run fails with a message naming needed and available memory (this
  machine has no GPU, so the device is the CPU and the RAM is measured), and
  the worker goes on serving.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from harness import Portal, started_portal
from latent_atlas.settings import GEMMA3_GGUF_FILE, GEMMA3_MODEL_NAME

pytestmark = pytest.mark.integration

PARAMS = {"prompts": ["ab ab", "cd"], "max_tokens": 16}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-catalogue")
    models = {
        "tiny": {"source": str(tiny_gpt2_dir)},
        "huge": {"source": str(tiny_gpt2_dir), "memory_gb": 90000},
        GEMMA3_MODEL_NAME: {"source": "{data_dir}/models/gemma3-270m", "gguf_file": GEMMA3_GGUF_FILE},
    }
    with started_portal(data_dir, "sqlite", models, "tiny", {"ATLAS_DEVICE": "cpu"}) as live:
        yield live


def _runs(portal: Portal) -> int:
    with create_engine(portal.backend.database_url).connect() as conn:
        return conn.execute(text("SELECT count(*) FROM runs")).scalar_one()


def test_a_model_whose_files_are_not_fetched_is_refused_before_queueing(portal):
    response = portal.api("POST", "/api/runs", portal.alice,
                          json={"kind": "geometry", "params": {"model": GEMMA3_MODEL_NAME, **PARAMS}})
    assert response.status_code == 400, response.text
    expected_path = portal.data_dir.resolve() / "models" / "gemma3-270m"
    assert response.json()["messages"] == [
        f"model '{GEMMA3_MODEL_NAME}' is in the catalogue but its files are not on this machine "
        f"({expected_path} is missing); fetch them with `latent-atlas fetch-model {GEMMA3_MODEL_NAME}`"
    ]
    assert _runs(portal) == 0


def test_a_model_that_cannot_fit_is_refused_by_the_worker(portal):
    run = portal.submit(portal.alice, {"model": "huge", **PARAMS})
    failed = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})
    assert failed["status"] == "failed"
    assert failed["error"].startswith("model 'huge' needs about 90000.0 GB but only cpu "), failed["error"]
    assert failed["error"].endswith(" GB free; use a smaller dtype")
    assert "load_model_s" not in (failed.get("timings") or {})  # nothing was loaded
    ok = portal.submit(portal.alice, {"model": "tiny", **PARAMS})
    assert portal.wait_for(ok["id"], portal.alice, {"succeeded", "failed"})["status"] == "succeeded"
