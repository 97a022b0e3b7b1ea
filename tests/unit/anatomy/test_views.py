"""The anatomy view: row reads of one head, index checks (URL and inputs), the form, the rendered page."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import plotly.io as pio
import pytest

from latent_atlas.analyses.anatomy import AnatomyParams, run_anatomy
from latent_atlas.settings import Limits
from models.store import ArtifactStore
from webapp.views import FormError
from webapp.views.anatomy import data as ad
from webapp.views.anatomy import form, page, parts

PROMPT = "One <b>two</b> & three"


@pytest.fixture(scope="module")
def stored(tiny_llama, tmp_path_factory):
    result = run_anatomy(AnatomyParams(model="tiny-llama", prompt=PROMPT, ig_steps=8, vocab_sample=40), tiny_llama)
    root = str(tmp_path_factory.mktemp("store"))
    store = ArtifactStore(root)
    artifacts = [SimpleNamespace(name=name, uri=store.write_array(array).uri) for name, array in result.arrays.items()]
    run = SimpleNamespace(id="r1", kind="anatomy", summary=result.summary, artifacts=artifacts)
    arrays = {k: v for k, v in result.arrays.items() if k in ad.ARRAYS}
    return result, ad.from_run(run, arrays, root), run, root


def test_page_arrays_leave_the_large_ones_on_disk(stored) -> None:
    result, data, _, _ = stored
    assert set(ad.LARGE) & set(ad.ARRAYS) == set()
    assert set(result.arrays) - set(ad.ARRAYS) == set(ad.LARGE)
    assert "attention" not in data.arrays


def test_one_head_and_one_rollout_layer_are_read_alone(stored) -> None:
    result, data, _, _ = stored
    heads = data.n_heads
    for layer, head in [(0, 0), (2, 3), (1, 2)]:
        np.testing.assert_array_equal(ad.head_pattern(data, layer, head),
                                      result.arrays["attention"][layer * heads + head].astype(np.float32))
    np.testing.assert_array_equal(ad.rollout_layer(data, 2), result.arrays["rollout"][2].astype(np.float32))
    with pytest.raises(ValueError, match=r"head 4 is out of range for this model \(0..3\)"):
        ad.head_pattern(data, 0, 4)
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        ad.rollout_layer(data, -1)


@pytest.mark.parametrize(("search", "expected"), [
    ("?layer=2&head=1", (2, 1, [])),
    ("", (None, None, [])),
    ("?layer=3", (None, None, ["URL: layer 3 is out of range for this model (0..2)"])),
    ("?head=x&layer=1", (1, None, ["URL: head must be a whole number from 0 to 3"])),
    ("?layer=1.5", (None, None, ["URL: layer must be a whole number from 0 to 2"])),
    ("?layer=" + "9" * 400, (None, None, ["URL: layer 99999999999999999999 is out of range for this model (0..2)"])),
])
def test_parse_query(search: str, expected: tuple) -> None:
    assert ad.parse_query(search, 3, 4) == expected


def test_render_and_callbacks(stored) -> None:
    _, data, run, root = stored
    component = page.render(run, data.arrays, root)
    text = json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json() if hasattr(o, "to_plotly_json") else str(o))
    assert "anatomy-architecture" in text and "anatomy-sheet" in text and "anatomy-sal-method" in text
    # drawn at load without a callback: the flat diagram and head 0 of layer 0; a hidden tab's graph is not
    assert '"name": "blocks"' in text and "Attention, layer 0, head 0" in text
    assert "anatomy-resid-box" in text and '"id": "anatomy-resid"' not in text
    neurons = parts.neuron_table(data, 1, 3)
    assert "Layer 1, token 3" in json.dumps(neurons.to_plotly_json(), default=str)
    sal = parts.saliency_text(data.tokens, data.arrays["saliency_ig"])
    spans = sal.children
    assert len(spans) == len(PROMPT) and spans[0].children == "O"
    assert float(getattr(spans[0], "data-score")) == pytest.approx(float(data.arrays["saliency_ig"][0]), rel=1e-6)
    info = dict(parts.saliency_info(data.summary, data.vocab))
    assert "IG completeness error" in info
    fig = json.loads(pio.to_json(parts_lens(data)))
    assert fig["data"][0]["type"] == "heatmap"


def parts_lens(data: ad.AnatomyData):
    from latent_atlas.analyses.anatomy import figures

    return figures.lens_figure(data.arrays["lens_ids"], data.arrays["lens_probs"], data.summary["lens_labels"],
                               data.tokens, data.summary["vocab"])


def test_form() -> None:
    limits = Limits()
    values = {"prompt": "Hi", "max_tokens": 512, "ig_steps": 0, "ig_batch": 8, "top_neurons": 8,
              "vocab_sample": 100, "neighbours": 5, "target": " Paris", "projection": "pca", "sublayer_lens": False,
              "lens_positions": 64}
    params = form.params_from_form("m", values, limits)
    assert params["target"] == " Paris" and params["sublayer_lens"] is False and "foil" not in params
    assert params["lens_positions"] == 64
    AnatomyParams.model_validate(params)
    with pytest.raises(FormError) as info:
        form.params_from_form(None, {**values, "prompt": "  ", "ig_steps": 257, "max_tokens": 513,
                                     "projection": "tsne", "lens_positions": 0}, limits)
    messages = info.value.messages
    assert "model: choose a model" in messages and "prompt: give a prompt" in messages
    assert any(m.startswith("ig_steps:") and "0 to 256" in m for m in messages)
    assert any(m.startswith("max_tokens:") and "1 to 512" in m for m in messages)
    assert "projection: must be pca or umap" in messages
    assert any(m.startswith("lens_positions:") and "1 to 512" in m for m in messages)


def test_static_export(stored) -> None:
    import io
    import zipfile

    from webapp.views.anatomy.export import export_figures, html_bundle_zip

    _, data, _, _ = stored
    views = export_figures(data, 2, 3)
    slugs = [v[0] for v in views]
    assert "attention-head" in slugs and "saliency-ig" in slugs and len(set(slugs)) == len(slugs)
    assert views[3][1] == "Attention, layer 2, head 3"
    archive = zipfile.ZipFile(io.BytesIO(html_bundle_zip(data, 2, 3)))
    names = archive.namelist()
    assert "latent-atlas-r1/index.html" in names and "latent-atlas-r1/attention-head.html" in names
    page = archive.read("latent-atlas-r1/saliency.html").decode()
    assert "<b>two" not in page  # the prompt's markup is escaped in the figure's labels


def test_parameter_tree_draws_identical_blocks_once():
    from webapp.views.anatomy.parts import group_repeats, parameter_tree

    def block(name):
        return {"name": name, "count": 10, "share": 0.2,
                "children": [{"name": f"{name}.mlp", "count": 10, "share": 0.2, "params": {"w": [2, 5]}}]}

    root = {"name": "model", "count": 50, "share": 1.0,
            "children": [block(f"layers.{i}") for i in range(4)]
            + [{"name": "norm", "count": 10, "share": 0.2, "params": {"w": [10]}}]}
    groups = group_repeats(root["children"])
    assert [(g["name"], n) for g, n in groups] == [("layers.0", 4), ("norm", 1)]
    text = str(parameter_tree(root))
    assert "layers.0 … layers.3" in text and "× 4 = 40" in text and "80.00%" in text
    assert "layers.1" not in text  # drawn once, not four times


def test_first_view_figures_are_built_once_per_run(stored) -> None:
    from webapp.views.anatomy import first_view

    _, data, _, _ = stored
    first = first_view.first_figures(data)
    assert first_view.first_figures(data) is first  # cached: a run's data never changes
    diagram, sheet, head = first
    assert [t["name"] for t in diagram["data"]][-2:] == ["blocks", "heads"]
    assert sheet["data"][0]["type"] == "image" and head["layout"]["title"]["text"].startswith("Attention, layer 0, head 0")
    other = ad.AnatomyData("another", data.summary, data.arrays, data.uris, data.store_url)
    assert first_view.first_figures(other) is not first
    first_view.warm_up()  # builds and serialises a tiny figure of each kind without error
