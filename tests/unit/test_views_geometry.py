"""The geometry figure functions on synthetic arrays (no Dash app, no database)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from webapp.views import geometry
from webapp.views.geometry import COMPONENT_SYMBOLS, layer_evolution_figure

COMPONENTS = ["attn_out", "resid_mid", "mlp_out", "resid_post"]


def synthetic(dims: int = 3, n_layers: int = 4, tokens=None, average: str = "none"):
    """Arrays laid out like the geometry analysis: layer-major, component, prompt, position."""
    tokens = tokens or [["The", " cat", "<script>"], ["A", " dog"]]
    prompt = np.concatenate([np.full(len(t), p) for p, t in enumerate(tokens)]).astype(np.int32)
    position = np.concatenate([np.arange(len(t)) for t in tokens]).astype(np.int32)
    per_block = len(prompt)
    n = n_layers * len(COMPONENTS) * per_block
    rng = np.random.default_rng(0)
    arrays = {
        "coords": rng.normal(size=(n, dims)).astype(np.float32),
        "layer": np.repeat(np.arange(n_layers), len(COMPONENTS) * per_block).astype(np.int16),
        "component": np.tile(np.repeat(np.arange(4), per_block), n_layers).astype(np.int8),
        "position": np.tile(position, n_layers * 4),
        "prompt_index": np.tile(prompt, n_layers * 4),
        "token_id": np.arange(n, dtype=np.int32),
        "norm": rng.random(n).astype(np.float32) * 10,
        "explained_variance_ratio": np.array([0.4123, 0.2, 0.1][:dims], dtype=np.float32),
        "layer_norm_mean": rng.random((n_layers, 4)).astype(np.float32),
    }
    summary = {
        "components": COMPONENTS, "n_layers": n_layers, "d_model": 16, "n_points": n,
        "dims": dims, "reduction": "pca", "tokens": tokens,
        "n_tokens": [len(t) for t in tokens], "hook_check_max_abs_error": 1e-6,
        "unit_normalise": False, "average": average,
    }
    return arrays, summary


def _points(fig: go.Figure) -> int:
    return sum(len(trace.x) for trace in fig.data)


def test_3d_figure_has_one_scatter3d_trace_per_component_and_every_point():
    arrays, summary = synthetic(dims=3)
    fig = layer_evolution_figure(arrays, summary)
    assert [type(t) for t in fig.data] == [go.Scatter3d] * 4
    assert [t.name for t in fig.data] == COMPONENTS
    assert _points(fig) == len(arrays["coords"])
    for trace in fig.data:
        assert len(trace.z) == len(trace.x)


def test_2d_figure_uses_scattergl_and_plain_axes():
    arrays, summary = synthetic(dims=2)
    fig = layer_evolution_figure(arrays, summary)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert _points(fig) == len(arrays["coords"])
    assert fig.layout.xaxis.title.text == "PC1 (41.2%)"
    assert fig.layout.yaxis.title.text == "PC2 (20.0%)"


def test_axis_titles_show_explained_variance_in_3d():
    arrays, summary = synthetic(dims=3)
    scene = layer_evolution_figure(arrays, summary).layout.scene
    assert scene.xaxis.title.text == "PC1 (41.2%)"
    assert scene.yaxis.title.text == "PC2 (20.0%)"
    assert scene.zaxis.title.text == "PC3 (10.0%)"


def test_colour_values_are_the_layers_on_one_colour_axis_titled_layer():
    arrays, summary = synthetic(n_layers=5)
    fig = layer_evolution_figure(arrays, summary)
    for comp, trace in enumerate(fig.data):
        expected = arrays["layer"][arrays["component"] == comp]
        assert list(trace.marker.color) == expected.tolist()
        assert trace.marker.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.colorbar.title.text == "layer"
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 4


def test_marker_symbols_follow_the_component():
    arrays, summary = synthetic()
    fig = layer_evolution_figure(arrays, summary)
    symbols = [t.marker.symbol for t in fig.data]
    assert symbols == [COMPONENT_SYMBOLS[c] for c in COMPONENTS]
    assert len(set(symbols)) == 4


def test_hover_text_escapes_token_strings():
    arrays, summary = synthetic(tokens=[["<script>", "&amp;", " ok"]])
    fig = layer_evolution_figure(arrays, summary)
    hover = [h for trace in fig.data for h in trace.hovertext]
    joined = "\n".join(hover)
    assert "<script>" not in joined
    assert "&lt;script&gt;" in joined
    assert "&amp;amp;" in joined  # the literal text "&amp;" stays literal
    first = fig.data[0].hovertext[0]
    assert "prompt 0" in first and "position 0" in first and "layer 0" in first
    assert "attn_out" in first and "norm" in first


def test_customdata_carries_the_point_index_and_raw_token():
    arrays, summary = synthetic(tokens=[["<b>x</b>", "y"]])
    fig = layer_evolution_figure(arrays, summary)
    row = fig.data[0].customdata[0]
    assert int(row[0]) == 0 and row[4] == "attn_out" and row[6] == "<b>x</b>"
    indices = sorted(int(r[0]) for t in fig.data for r in t.customdata)
    assert indices == list(range(len(arrays["coords"])))


def test_averaged_points_are_labelled_as_means():
    arrays, summary = synthetic(tokens=[["a", "b"], ["c", "d"]], average="samples")
    arrays["prompt_index"][:] = -1
    fig = layer_evolution_figure(arrays, summary)
    assert "mean over prompts at position 0" in fig.data[0].hovertext[0]
    assert "prompt mean" in fig.data[0].hovertext[0]
    assert geometry.token_text(summary, 1, -1) == "(mean over positions of prompt 1)"


def test_large_results_are_subsampled_reproducibly():
    arrays, summary = synthetic(n_layers=8)
    n = len(arrays["coords"])
    fig = layer_evolution_figure(arrays, summary, max_points=50)
    assert _points(fig) == 50
    again = layer_evolution_figure(arrays, summary, max_points=50)
    assert [list(t.x) for t in fig.data] == [list(t.x) for t in again.data]
    assert any("of" in a.text and str(n) in a.text.replace(",", "") for a in fig.layout.annotations)


def test_bad_coordinates_are_refused():
    arrays, summary = synthetic()
    arrays["coords"] = arrays["coords"][:, :1]
    with pytest.raises(ValueError, match="2 or 3 columns"):
        layer_evolution_figure(arrays, summary)


def test_umap_axes_have_no_variance():
    assert geometry.axis_titles({"reduction": "umap"}, None, 2) == ["UMAP1", "UMAP2"]


def test_summary_rows_and_point_details():
    arrays, summary = synthetic()
    summary["truncated"] = [True, False]
    rows = dict(geometry.summary_rows(summary, arrays))
    assert rows["tokens"] == "5 in 2 prompts (1 cut at max tokens)"
    assert rows["reduction"] == "PCA to 3D"
    assert rows["hook check error"] == "1.00e-06"
    details = geometry.point_details({"customdata": [3, 0, 2, 1, "mlp_out", 1.5, "<script>"]})
    assert "<script>" in str(details)  # a text child: React escapes it when rendering
    empty = geometry.point_details(None)
    assert "Click a point" in str(empty)


class _Run:
    def __init__(self, summary):
        self.summary = summary


def test_render_builds_namespaced_graph():
    arrays, summary = synthetic()
    layout = geometry.render(_Run(summary), arrays)
    text = str(layout)
    assert "geometry-layer-evolution" in text
    assert "geometry-point-details" in text
    missing = geometry.render(_Run(summary), {"coords": arrays["coords"]})
    assert "warning" in str(missing)
