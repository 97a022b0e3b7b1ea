"""On-demand logit lens of chosen points (run kind ``geometry_lens``) and row reads from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from latent_atlas.analyses import get_kind
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.geometry.lens import MAX_LENS_ROWS, LensParams, run_lens
from latent_atlas.lm import LanguageModel
from models.store import ArtifactStore


class StoreBackedRuns:
    """The worker's ``StoredRuns`` contract (model + row reads) over a real ArtifactStore, no database."""

    def __init__(self, store: ArtifactStore, model: str, uri: str) -> None:
        self.store, self._model, self.uri = store, model, uri

    def model(self, run_id: str) -> str:
        return self._model

    def rows(self, run_id: str, name: str, rows: np.ndarray) -> np.ndarray:
        assert name == "states"
        return self.store.read_rows(self.uri, rows)


@pytest.fixture(scope="module")
def source(tiny_gpt2: LanguageModel, tmp_path_factory: pytest.TempPathFactory):
    params = GeometryParams(model=tiny_gpt2.name, prompts=["the cat sat", "a dog ran far away"])
    result = run_geometry(params, tiny_gpt2)
    store = ArtifactStore("file://" + str(tmp_path_factory.mktemp("store")))
    stored = store.write_array(result.arrays["states"])
    return result, StoreBackedRuns(store, tiny_gpt2.name, stored.uri)


def test_decodes_exactly_what_the_run_decoded(tiny_gpt2: LanguageModel, source) -> None:
    result, runs = source
    rows = [7, 0, len(result.arrays["layer"]) - 1, 42]
    out = run_lens(LensParams(source_run="R1", model=tiny_gpt2.name, rows=rows), tiny_gpt2, runs=runs)
    assert out.arrays["rows"].tolist() == rows
    # The run's own lens read the float32 activations, this one the float16-stored states:
    # top-1 agrees except at a near-tie, probabilities to 1e-2.
    same = out.arrays["lens_ids"][:, 0] == result.arrays["lens_ids"][rows, 0]
    assert same.mean() >= 0.75
    np.testing.assert_allclose(out.arrays["lens_probs"][:, 0].astype(np.float32),
                               result.arrays["lens_probs"][rows, 0].astype(np.float32), atol=1e-2)
    assert set(out.summary["tokens"]) == {str(int(t)) for t in np.unique(out.arrays["lens_ids"])}
    assert out.arrays["lens_ids"].dtype == np.int32 and out.arrays["lens_probs"].dtype == np.float16


def test_refuses_another_models_run(tiny_llama: LanguageModel, source) -> None:
    _, runs = source
    with pytest.raises(ValueError, match="used model 'tiny-gpt2', not 'tiny-llama'"):
        run_lens(LensParams(source_run="R1", model=tiny_llama.name, rows=[0]), tiny_llama, runs=runs)


@pytest.mark.parametrize("rows, message", [
    ([], "at least 1"), ([-1], "rows: point rows are >= 0"), ([3, 3], "each point at most once"),
    (list(range(MAX_LENS_ROWS + 1)), f"at most {MAX_LENS_ROWS}"),
])
def test_params_bounds(rows: list[int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LensParams(source_run="R1", model="m", rows=rows)
    with pytest.raises(ValidationError):
        LensParams(source_run="../x", model="m", rows=[0])


def test_registered_on_the_gpu_queue_reading_runs() -> None:
    kind = get_kind("geometry_lens")
    assert kind.queue == "gpu" and kind.needs_model and kind.reads_runs


def test_store_reads_only_the_asked_rows(tmp_path: Path) -> None:
    store = ArtifactStore("file://" + str(tmp_path))
    array = np.random.default_rng(0).normal(size=(300, 5, 2)).astype(np.float16)
    uri = store.write_array(array).uri
    rows = np.array([299, 0, 17, 17])
    np.testing.assert_array_equal(store.read_rows(uri, rows), array[rows])
    with pytest.raises(IndexError, match="0..299"):
        store.read_rows(uri, np.array([300]))
    assert store.read_rows(uri, np.array([], dtype=np.int64)).shape == (0, 5, 2)


def test_the_lens_run_page_shows_the_decoded_token_strings_escaped():
    """The page of a geometry_lens run: token strings from its summary (not '#id'), as text children."""
    from types import SimpleNamespace

    from webapp.views.geometry import lens as lens_view

    run = SimpleNamespace(summary={"source_run": "abcdefghijkl", "k": 2,
                                   "tokens": {"28": ",", "378": " <b>The</b>"}}, params={})
    arrays = {"rows": np.array([0, 5]), "lens_ids": np.array([[378, 28], [28, -1]], dtype=np.int32),
              "lens_probs": np.array([[0.9, 0.1], [1.0, 0.0]], dtype=np.float16)}
    texts: list[str] = []

    def collect(node) -> None:
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, list | tuple):
            for child in node:
                collect(child)
        elif getattr(node, "children", None) is not None:
            collect(node.children)

    collect(lens_view.render(run, arrays))
    assert "' <b>The</b>'" in texts and "','" in texts  # the strings, quoted, as text (React escapes them)
    assert not any(t.startswith("'#") for t in texts)
