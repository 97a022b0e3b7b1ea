"""The scan view's pure parts on a real tiny-model run: figures, escaping, form, exports."""

from __future__ import annotations

import io
import json

import numpy as np
import plotly.io as pio
import pytest
from PIL import Image

from latent_atlas.analyses.scan import ScanParams, run_scan
from latent_atlas.settings import Limits
from webapp.views import FormError, get_view
from webapp.views.scan import (
    ScanData,
    animation_figure,
    animation_gif,
    animation_html,
    density_values,
    divergence_figure,
    gif_frames,
    heatmap_figure,
    hover_safe,
    params_from_form,
)

A = "The capital of France is"
B = "The capital of <b>Spain</b> is"


@pytest.fixture(scope="module")
def diff_data(tiny_gpt2) -> ScanData:
    result = run_scan(ScanParams(model="tiny", mode="diff", prompt_a=A, prompt_b=B), tiny_gpt2)
    return ScanData.from_arrays("RUN1", result.summary, result.arrays)


def test_registered_view():
    view = get_view("scan")
    assert view is not None and callable(view.render) and callable(view.params_from_form)


def test_animation_frames_share_axes_and_update_the_point_traces(diff_data):
    figure = animation_figure(diff_data, trails="all")
    assert len(figure.frames) == diff_data.n_frames == 4
    assert [frame.name for frame in figure.frames] == ["0", "1", "2", "3"]
    assert all(tuple(frame.traces) == (0, 1) for frame in figure.frames)
    scene = figure.layout.scene
    flat = diff_data.coords.reshape(-1, 3)
    for i, axis in enumerate((scene.xaxis, scene.yaxis, scene.zaxis)):
        assert axis.autorange is False
        assert axis.range[0] <= flat[:, i].min() and axis.range[1] >= flat[:, i].max()
    # Frame f's points are exactly the stored coordinates of frame f, for A and for B.
    for f, frame in enumerate(figure.frames):
        for prompt, trace in enumerate(frame.data):
            expected = diff_data.coords[f, diff_data.token_prompt == prompt]
            np.testing.assert_array_equal(np.asarray(trace.x), expected[:, 0])
            assert diff_data.labels[f] in trace.hovertemplate
    assert [s.label for s in figure.layout.sliders[0].steps] == diff_data.labels
    assert len(figure.data) == 4  # A, B and two trails
    assert figure.layout.meta["labels"] == diff_data.labels


def test_hover_escapes_model_and_user_text(diff_data):
    figure = animation_figure(diff_data)
    tokens_b = [row[1] for row in figure.data[1].customdata]
    assert "&lt;" in tokens_b and "<" not in "".join(tokens_b)
    assert hover_safe("<script>\n") == "&lt;script&gt;\\n"
    assert len(hover_safe("x" * 100)) == 40
    document = pio.to_json(figure)
    assert "<b>Spain" not in document


def test_colour_render_and_density(diff_data):
    by_token = animation_figure(diff_data, colour="token", trails="none")
    assert len(by_token.data) == 2 and isinstance(by_token.data[0].marker.color, tuple)
    dense = animation_figure(diff_data, render="density", start=2)
    assert dense.layout.sliders[0].active == 2 and dense.layout.meta["render"] == "density"
    np.testing.assert_array_equal(np.asarray(dense.data[0].x), diff_data.coords[2, diff_data.token_prompt == 0, 0])
    assert all(frame.data[0].marker.color is not None for frame in dense.frames)
    points = np.array([[0, 0, 0], [0.01, 0, 0], [1, 1, 1]], dtype=np.float32)
    values = density_values(points, np.zeros(3), np.ones(3), bins=4)
    np.testing.assert_allclose(values, np.log1p([2, 2, 1]))


def test_divergence_curve_and_heatmap(diff_data):
    curve = divergence_figure(diff_data)
    names = [trace.name for trace in curve.data]
    assert len(names) == 5 and any("JS" in n for n in names)
    assert all(list(trace.customdata) == list(range(diff_data.n_frames)) for trace in curve.data)
    assert curve.layout.shapes[0].x0 == 0  # the current-layer line the page script moves
    heat = heatmap_figure(diff_data)
    z = np.asarray(heat.data[0].z)
    assert z.shape == (len(A), diff_data.n_frames)
    assert np.all(z[: len("The capital of ")] == 0)


def test_exports(diff_data):
    html = animation_html(diff_data, "Run <title> & more")
    assert "Run &lt;title&gt; &amp; more" in html and "Run <title>" not in html
    assert "Plotly.animate" in html and "atlas-steps" in html and "'['" in html
    gif = animation_gif(diff_data, limit=3)
    image = Image.open(io.BytesIO(gif))
    assert image.format == "GIF" and image.n_frames == 3
    assert gif_frames(100, 5) == [0, 25, 50, 74, 99] and gif_frames(4, 10) == [0, 1, 2, 3]


def test_form_to_params():
    limits = Limits()
    params = params_from_form("tiny", {"mode": "diff", "prompt_a": " a ", "prompt_b": "b", "max_tokens": 16,
                                       "threshold": "0.2", "threshold_metric": "kl", "seed": 3,
                                       "basis_run": "http://x/runs/AbC_12"}, limits)
    assert params["prompt_a"] == "a" and params["prompt_b"] == "b" and params["threshold"] == 0.2
    assert params["basis_run"] == "AbC_12" and params["seed"] == 3 and params["max_tokens"] == 16
    ScanParams.model_validate(params)
    with pytest.raises(FormError) as info:
        params_from_form(None, {"mode": "diff", "prompt_a": "", "max_tokens": 10**6, "seed": 0}, limits)
    text = " | ".join(info.value.messages)
    assert "choose a model" in text and "prompt A" in text and "prompt B" in text and "max_tokens" in text
    umap = params_from_form("tiny", {"prompt_a": "a", "max_tokens": 8, "seed": 0, "reduction": "umap",
                                     "umap_neighbors": 5, "umap_min_dist": 0, "umap_fit_points": 500}, limits)
    assert ScanParams.model_validate_json(json.dumps(umap), strict=True).umap_min_dist == 0.0
