"""The geometry figure functions on synthetic arrays (no Dash app, no database).

Each of the six views: trace types, colours, labels, escaping, the highlight trace that linked
selection patches, downsampling notes; plus the details panel, selection parsing, the summary
table, the run view's layout, and the form (typed prompts and corpus files).
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest

from latent_atlas.settings import Limits
from webapp.views import FormError, geometry
from webapp.views.geometry import callbacks as geometry_callbacks
from webapp.views.geometry import figures as gf
from webapp.views.geometry import form as geometry_form
from webapp.views.geometry import page as geometry_page

COMPONENTS = ["attn_out", "resid_mid", "mlp_out", "resid_post"]



def _rows(trace) -> list[int]:
    """The point rows of a trace: the first column of its customdata."""
    return np.asarray(trace.customdata)[:, 0].astype(int).tolist()


def _hover(trace, k: int) -> str:
    """Point ``k``'s hover label as Plotly writes it from the trace's template."""
    custom = np.asarray(trace.customdata)[k]

    def field(match: re.Match) -> str:
        name, fmt = match.group(1), match.group(2)
        if name == "text":
            return trace.text[k]
        value = float(custom[int(re.fullmatch(r"customdata\[(\d)\]", name).group(1))])
        return format(value, fmt[1:]) if fmt else f"{value:g}"

    return re.sub(r"%\{([^}:]+)(:[^}]*)?\}", field, trace.hovertemplate).replace("<extra></extra>", "")

def synthetic(dims: int = 3, n_layers: int = 4, tokens=None, average: str = "none", lens: bool = True):
    """Arrays laid out like the geometry analysis: layer-major, component, prompt, position."""
    tokens = tokens or [["The", " cat", "<script>"], ["A", " dog"]]
    prompt = np.concatenate([np.full(len(t), p) for p, t in enumerate(tokens)]).astype(np.int32)
    position = np.concatenate([np.arange(len(t)) for t in tokens]).astype(np.int32)
    per_block = len(prompt)
    n = n_layers * len(COMPONENTS) * per_block
    rng = np.random.default_rng(0)
    component = np.tile(np.repeat(np.arange(4), per_block), n_layers).astype(np.int8)
    layer = np.repeat(np.arange(n_layers), len(COMPONENTS) * per_block).astype(np.int16)
    positions = np.tile(position, n_layers * 4)
    norm = (rng.random(n) + 1.0) * (layer + 1) * np.where(positions == 0, 10.0, 1.0)
    arrays = {
        "coords": rng.normal(size=(n, dims)).astype(np.float32),
        "layer": layer,
        "component": component,
        "position": positions,
        "prompt_index": np.tile(prompt, n_layers * 4),
        "token_id": np.arange(n, dtype=np.int32),
        "norm": norm.astype(np.float32),
        "explained_variance_ratio": np.array([0.4123, 0.2, 0.1][:dims], dtype=np.float32),
        "layer_norm_mean": rng.random((n_layers, 4)).astype(np.float32),
        "attn_mlp_coords": rng.normal(size=(int(np.isin(component, [0, 2]).sum()), 2)).astype(np.float32),
        "attn_mlp_explained": np.array([0.5, 0.25], dtype=np.float32),
        "positional_coords": rng.normal(size=(6, 3)).astype(np.float32),
        "positional_position": np.arange(6, dtype=np.int32),
        "positional_count": np.zeros(6, dtype=np.int32),
        "positional_explained": np.array([0.5, 0.3, 0.1], dtype=np.float32),
    }
    summary = {
        "components": COMPONENTS, "n_layers": n_layers, "d_model": 16, "n_points": n,
        "dims": dims, "reduction": "pca", "tokens": tokens, "model": "tiny", "n_prompts": len(tokens),
        "n_tokens": [len(t) for t in tokens], "hook_check_max_abs_error": 1e-6,
        "unit_normalise": False, "average": average,
        "separation": {"layers": list(range(n_layers)), "lda_accuracy": [0.9] * n_layers,
                       "silhouette_2d": [0.4] * n_layers, "overall_lda_accuracy": 0.91,
                       "overall_silhouette_2d": 0.42},
        "positional": {"kind": "learned", "layer": None, "reason": "GPT-2 learns <positions>"},
        "norm_stats": {"growth": {"resid_post": {"spearman": 0.95, "last_over_first": 4.0, "grows": True}},
                       "position0_ratio_overall": 8.0},
        "states": {"stored": True},
        "lens": {"enabled": True, "computed": n, "points": n, "tokens": {"7": "<b>Paris</b>", "8": " x"}},
    }
    if lens:
        arrays["lens_ids"] = np.tile(np.array([7, 8, 8, 8, 8], dtype=np.int32), (n, 1))
        arrays["lens_probs"] = np.tile(np.array([0.6, 0.1, 0.1, 0.1, 0.1], dtype=np.float16), (n, 1))
    return arrays, summary


def _points(fig: go.Figure) -> int:
    return sum(len(t.x) for t in fig.data if t.name != gf.HIGHLIGHT_NAME and t.x is not None)


def _highlight(fig: go.Figure):
    index = fig.layout.meta["highlight_trace"]
    trace = fig.data[index]
    assert trace.name == gf.HIGHLIGHT_NAME and len(trace.x) == 0
    return trace


# --------------------------------------------------------------------------- 1. layer evolution


def test_3d_layer_evolution_has_one_trace_per_component_and_every_point():
    arrays, summary = synthetic(dims=3)
    fig = gf.layer_evolution_figure(arrays, summary)
    assert [type(t) for t in fig.data] == [go.Scatter3d] * 5
    assert [t.name for t in fig.data[:4]] == COMPONENTS
    assert _points(fig) == len(arrays["coords"])
    _highlight(fig)
    scene = fig.layout.scene
    assert (scene.xaxis.title.text, scene.yaxis.title.text, scene.zaxis.title.text) == \
        ("PC1 (41.2%)", "PC2 (20.0%)", "PC3 (10.0%)")
    assert fig.layout.meta["view"] == "layer_evolution"


def test_2d_layer_evolution_uses_webgl_and_plain_axes():
    arrays, summary = synthetic(dims=2)
    fig = gf.layer_evolution_figure(arrays, summary)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert fig.layout.xaxis.title.text == "PC1 (41.2%)" and fig.layout.yaxis.title.text == "PC2 (20.0%)"


def test_colour_is_depth_on_one_axis_and_symbols_follow_the_component():
    arrays, summary = synthetic(n_layers=5)
    fig = gf.layer_evolution_figure(arrays, summary)
    for comp, trace in enumerate(fig.data[:4]):
        assert list(trace.marker.color) == arrays["layer"][arrays["component"] == comp].tolist()
        assert trace.marker.coloraxis == "coloraxis"
        assert trace.marker.symbol == gf.COMPONENT_SYMBOLS[COMPONENTS[comp]]
    assert fig.layout.coloraxis.colorbar.title.text == "layer"
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 4
    assert fig.layout.coloraxis.colorscale[0][1] == "#440154"  # Viridis: a gradient


def test_other_colourings_and_the_layer_filter():
    arrays, summary = synthetic(n_layers=5)
    by_comp = gf.layer_evolution_figure(arrays, summary, color_by="component")
    assert [t.marker.color for t in by_comp.data[:4]] == [gf.COMPONENT_COLOURS[c] for c in COMPONENTS]
    by_norm = gf.layer_evolution_figure(arrays, summary, color_by="norm")
    assert by_norm.layout.coloraxis.colorbar.title.text == "norm (log10)"
    some = gf.layer_evolution_figure(arrays, summary, layers=(1, 2))
    shown = [int(i) for t in some.data[:4] for i in _rows(t)]
    assert sorted(shown) == np.flatnonzero((arrays["layer"] >= 1) & (arrays["layer"] <= 2)).tolist()
    with pytest.raises(ValueError, match="colour mode"):
        gf.layer_evolution_figure(arrays, summary, color_by="bogus")


def test_hover_text_escapes_token_strings_and_shows_the_lens():
    arrays, summary = synthetic(tokens=[["<script>", "&amp;", " ok"]])
    fig = gf.layer_evolution_figure(arrays, summary)
    joined = "\n".join(_hover(t, k) for t in fig.data[:4] for k in range(len(t.x)))
    assert "<script>" not in joined and "&lt;script&gt;" in joined
    assert "&amp;amp;" in joined  # the literal text "&amp;" stays literal
    assert "<b>Paris" not in joined and "&lt;b&gt;Paris" in joined
    first = _hover(fig.data[0], 0)
    assert first.startswith("prompt 0 · position 0<br>token '&lt;script&gt;'<br>lens → ")
    row = int(_rows(fig.data[0])[0])
    assert first.endswith(f"<br>layer 0 · attn_out<br>norm {float(arrays['norm'][row]):.4g}")


def test_customdata_is_the_point_row():
    arrays, summary = synthetic()
    fig = gf.layer_evolution_figure(arrays, summary)
    rows = sorted(int(i) for t in fig.data[:4] for i in _rows(t))
    assert rows == list(range(len(arrays["coords"])))


def test_large_results_are_subsampled_reproducibly_with_a_note():
    arrays, summary = synthetic(n_layers=8)
    n = len(arrays["coords"])
    fig = gf.layer_evolution_figure(arrays, summary, max_points=50)
    assert _points(fig) == 50
    again = gf.layer_evolution_figure(arrays, summary, max_points=50)
    assert [list(t.x) for t in fig.data] == [list(t.x) for t in again.data]
    assert any(str(n) in a.text.replace(",", "") and "WebGL" in a.text for a in fig.layout.annotations)


def test_bad_coordinates_are_refused():
    arrays, summary = synthetic()
    arrays["coords"] = arrays["coords"][:, :1]
    with pytest.raises(ValueError, match="2 or 3 columns"):
        gf.layer_evolution_figure(arrays, summary)


def test_averaged_points_are_labelled_as_means():
    arrays, summary = synthetic(tokens=[["a", "b"], ["c", "d"]], average="samples")
    arrays["prompt_index"][:] = -1
    fig = gf.layer_evolution_figure(arrays, summary)
    assert _hover(fig.data[0], 0).startswith("prompt mean · position 0<br>token (mean over prompts at position 0)")
    assert gf.token_text(summary, 1, -1) == "(mean over positions of prompt 1)"
    assert gf.axis_titles({"reduction": "umap"}, None, 2) == ["UMAP1", "UMAP2"]


# --------------------------------------------------------------------------- 2. attention vs MLP


def test_attention_is_blue_mlp_red_with_the_separation_score():
    arrays, summary = synthetic(dims=3)
    fig = gf.attention_mlp_figure(arrays, summary)
    attn, mlp = fig.data[0], fig.data[1]
    assert isinstance(attn, go.Scattergl) and attn.marker.color == gf.ATTN_COLOUR == "#1f77b4"
    assert mlp.marker.color == gf.MLP_COLOUR == "#d62728"
    rows = gf.attn_mlp_index(arrays)
    assert len(attn.x) + len(mlp.x) == len(rows) == len(arrays["attn_mlp_coords"])
    assert all(arrays["component"][int(i)] == 0 for i in _rows(attn))
    assert all(arrays["component"][int(i)] == 2 for i in _rows(mlp))
    assert "linear accuracy 0.910" in fig.layout.title.text and "silhouette 0.420" in fig.layout.title.text
    names = [t.name for t in fig.data]
    assert "held-out linear accuracy" in names and "silhouette (2D)" in names
    assert fig.layout.xaxis.title.text == "PC1 (50.0%)"
    _highlight(fig)


def test_attention_view_without_both_components_says_so():
    arrays, summary = synthetic()
    del arrays["attn_mlp_coords"]
    summary["separation"] = {}
    fig = gf.attention_mlp_figure(arrays, summary)
    assert any("no attention and MLP" in a.text for a in fig.layout.annotations)
    assert gf.separation_text(summary) == "separation: not available"


# --------------------------------------------------------------------------- 3. position-0 norm


def test_position0_figure_shows_both_groups_and_states_the_ratio():
    arrays, summary = synthetic()
    fig = gf.position0_figure(arrays, summary)
    names = [t.name for t in fig.data]
    for comp in COMPONENTS:
        assert f"{comp} · position 0" in names and f"{comp} · positions ≥ 1" in names
    # Position 0 was made 10x larger: the stated ratio is near 10.
    title = fig.layout.title.text
    assert "position 0 / rest" in title and "resid_post median" in title
    ratio_trace = next(t for t in fig.data if t.name == "resid_post · ratio")
    assert all(7 < v < 14 for v in ratio_trace.y)
    assert fig.layout.yaxis.type == "log"
    _highlight(fig)


# --------------------------------------------------------------------------- 4. positional structure


def test_positional_figure_is_3d_coloured_by_position_and_titled_by_kind():
    arrays, summary = synthetic()
    fig = gf.positional_figure(arrays, summary)
    trace = fig.data[0]
    assert isinstance(trace, go.Scatter3d) and trace.mode == "lines+markers"
    assert list(trace.marker.color) == list(range(6))
    assert fig.layout.title.text == "learned position embeddings (PCA to 3D)"
    summary["positional"] = {"kind": "mean_state", "layer": 15, "component": "resid_post"}
    assert "layer 15" in gf.positional_figure(arrays, summary).layout.title.text
    del arrays["positional_coords"]
    summary["positional"] = {"kind": "none", "reason": "too short"}
    empty = gf.positional_figure(arrays, summary)
    assert any("too short" in a.text for a in empty.layout.annotations)


# --------------------------------------------------------------------------- 5. layer norms


def test_layer_norm_bars_per_layer_and_component():
    arrays, summary = synthetic(n_layers=3)
    fig = gf.layer_norms_figure(arrays, summary)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [b.name for b in bars] == COMPONENTS and fig.layout.barmode == "group"
    assert [b.marker.color for b in bars] == [gf.COMPONENT_COLOURS[c] for c in COMPONENTS]
    expected = arrays["norm"][(arrays["layer"] == 2) & (arrays["component"] == 3)].mean()
    assert bars[3].y[2] == pytest.approx(expected, rel=1e-6)
    assert "grows with depth" in fig.layout.title.text and fig.layout.xaxis.title.text == "layer"


# --------------------------------------------------------------------------- 6. animation


@pytest.mark.parametrize("dims", [2, 3])
def test_animation_has_a_frame_per_layer_fixed_axes_and_controls(dims):
    arrays, summary = synthetic(dims=dims, n_layers=4)
    fig = gf.animation_figure(arrays, summary)
    assert [f.name for f in fig.frames] == ["0", "1", "2", "3"]
    for frame in fig.frames:
        rows = [int(i) for t in frame.data for i in _rows(t)]
        assert set(arrays["layer"][rows].tolist()) == {int(frame.name)}
        assert list(frame.traces) == [0, 1, 2, 3]  # the highlight trace is not animated
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["▶ play", "❚❚ pause"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "2", "3"]
    axis = fig.layout.scene.xaxis if dims == 3 else fig.layout.xaxis
    assert axis.autorange is False and len(axis.range) == 2
    _highlight(fig)


# --------------------------------------------------------------------------- linked selection


def test_highlight_positions_per_view():
    arrays, summary = synthetic(dims=3)
    rows = [0, 25, 26]
    coords = gf.highlight("layer_evolution", arrays, summary, rows)
    np.testing.assert_allclose(coords["z"], arrays["coords"][rows, 2], rtol=1e-6)
    am = gf.highlight("attention_mlp", arrays, summary, rows)
    am_rows = gf.attn_mlp_index(arrays)
    keep = [r for r in rows if r in am_rows]
    np.testing.assert_allclose(am["x"], arrays["attn_mlp_coords"][np.searchsorted(am_rows, keep), 0])
    norms = gf.highlight("layer_norms", arrays, summary, rows)
    assert norms["x"] == arrays["layer"][rows].tolist()
    positional = gf.highlight("positional", arrays, summary, rows)
    assert len(positional["x"]) == len(set(arrays["position"][rows].tolist()))
    assert gf.highlight("animation", arrays, summary, [10**9]) == {"x": [], "y": [], "z": []}
    with pytest.raises(ValueError):
        gf.highlight("nope", arrays, summary, rows)


def test_selection_from_click_box_and_lasso_events():
    assert geometry_page.selection_from_event({"points": [{"customdata": 5}, {"customdata": [7]},
                                                         {"customdata": 5}, {"x": 1}]}) == [5, 7]
    assert geometry_page.selection_from_event({"points": [{"customdata": [9, 3, 12.5, 0, 2]}]}) == [9]
    assert geometry_page.selection_from_event(None) == []
    many = {"points": [{"customdata": i} for i in range(5000)]}
    assert len(geometry_page.selection_from_event(many)) == geometry_page.MAX_SELECTED


def test_details_panel_shows_prompt_token_layer_component_norm_and_lens():
    arrays, summary = synthetic(tokens=[["<b>x</b>", "y"]])
    text = str(geometry_page.point_details(arrays, summary, [1, 2, 3]))
    for needed in ("<b>x</b>y", "'y'", "attn_out", "norm", "logit lens",
                   "<b>Paris</b>", "0.600", "3 points selected"):
        assert needed in text, needed
    empty = str(geometry_page.point_details(arrays, summary, []))
    assert "Click a point" in empty
    arrays["lens_ids"][1, :] = -1
    assert "seeded sample" in str(geometry_page.point_details(arrays, summary, [1]))
    del arrays["lens_ids"]
    assert "not computed" in str(geometry_page.point_details(arrays, summary, [1]))


def test_summary_rows():
    arrays, summary = synthetic()
    summary["truncated"] = [True, False]
    rows = dict(geometry_page.summary_rows(summary, arrays))
    assert rows["tokens"] == "5 in 2 prompts (1 cut at max tokens)"
    assert rows["reduction"] == "PCA to 3D" and rows["hook check error"] == "1.00e-06"
    assert rows["attn/MLP separation"].startswith("0.910") and rows["position-0 norm ratio"] == "8.00×"


class _Run:
    def __init__(self, summary, run_id="RUN1"):
        self.summary = summary
        self.id = run_id


def test_the_page_says_when_one_direction_dominates():
    arrays, summary = synthetic()
    assert geometry_page.dominance_note(summary, arrays) is None  # PC1 41 %
    assert "geometry-dominance-note" not in str(geometry.render(_Run(summary), arrays))
    arrays["explained_variance_ratio"] = np.array([0.995, 0.003, 0.001], dtype=np.float32)
    note = geometry_page.dominance_note(summary, arrays)
    assert note.startswith("One direction dominates: PC1 explains 99.5 % of the variance")
    assert "position 0 are 8× the norm" in note
    assert "with “unit-normalise” and “fit without position 0”" in note
    text = str(geometry.render(_Run(summary), arrays))
    assert "geometry-dominance-note" in text and "99.5 %" in text
    summary.update(unit_normalise=True, exclude_position0=True)
    assert "already unit-normalised" in geometry_page.dominance_note(summary, arrays)
    summary.update(unit_normalise=False)
    assert "with “unit-normalise”, or" in geometry_page.dominance_note(summary, arrays)
    summary["reduction"] = "umap"  # UMAP axes have no explained variance
    assert geometry_page.dominance_note(summary, arrays) is None


def test_render_builds_six_namespaced_graphs_and_the_panels():
    arrays, summary = synthetic()
    text = str(geometry.render(_Run(summary), arrays))
    for view in geometry_page.FIGURES:
        assert view.id in text and view.id.startswith("geometry-")
    for needed in ("geometry-point-details", "geometry-download-html", "geometry-rp-submit",
                   "geometry-separation-table", "GPT-2 learns <positions>", "geometry-anim-next"):
        assert needed in text, needed
    missing = geometry.render(_Run(summary), {"coords": arrays["coords"]})
    assert "warning" in str(missing)
    summary["states"] = {"stored": False}
    assert "cannot be re-projected" in str(geometry.render(_Run(summary), arrays))


def test_export_figures_and_reproject_params():
    arrays, summary = synthetic()
    exported = geometry_page.export_figures(arrays, summary)
    assert [slug for slug, *_ in exported] == [v.slug for v in geometry_page.FIGURES]
    assert dict((s, d) for s, _, d, _ in exported)["positional-structure"] == "GPT-2 learns <positions>"
    raw = geometry_callbacks.reproject_params("SRC", "m", "umap", "2", True, False, ["attn_out"], 1, "", "none")
    assert raw == {"source_run": "SRC", "model": "m", "reduction": "umap", "dims": 2, "unit_normalise": True,
                   "exclude_position0": False, "components": ["attn_out"], "layer_start": 1,
                   "layer_stop": None, "average": "none"}
    with pytest.raises(ValueError, match="component"):
        geometry_callbacks.reproject_params("SRC", "m", "pca", 3, False, False, [], 0, None, "none")


# --------------------------------------------------------------------------- form


def _upload(name: str, data: bytes) -> str:
    return json.dumps({"name": name, "contents": "data:text/plain;base64," + base64.b64encode(data).decode()})


def test_form_options_reach_the_params():
    values = {"prompts": "a\nb", "max_tokens": 8, "reduction": "umap", "dims": 2,
              "components": ["mlp_out", "attn_out"], "layer_start": 1, "layer_stop": 3,
              "exclude_position0": True}
    params = geometry.params_from_form("m", values, Limits())
    assert params["reduction"] == "umap" and params["components"] == ["attn_out", "mlp_out"]
    assert (params["layer_start"], params["layer_stop"], params["exclude_position0"]) == (1, 3, True)
    with pytest.raises(FormError, match="layers: stop"):
        geometry.params_from_form("m", {**values, "layer_stop": 1}, Limits())
    with pytest.raises(FormError, match="components"):
        geometry.params_from_form("m", {**values, "components": []}, Limits())


def test_corpus_upload_samples_exact_sequences(monkeypatch):
    from tiny_models import build_tiny_tokenizer

    monkeypatch.setattr(geometry_form, "_tokenizer", lambda model: build_tiny_tokenizer())
    values = {"source": "corpus", "corpus_file": _upload("c.txt", b"abcdefgh\nijklmnop\n"),
              "corpus_sequences": 2, "corpus_tokens": 4, "seed": 3, "corpus_format": "auto"}
    params = geometry.params_from_form("m", values, Limits())
    assert len(params["token_ids"]) == 2 and all(len(ids) == 4 for ids in params["token_ids"])
    assert params["max_tokens"] == 4 and params["corpus"]["source"] == "c.txt"
    assert params["prompts"] == [build_tiny_tokenizer().decode(ids) for ids in params["token_ids"]]
    from latent_atlas.analyses.geometry import GeometryParams

    GeometryParams.model_validate(params)
    empty = {**values, "corpus_file": _upload("e.txt", b"")}
    with pytest.raises(FormError, match="is empty"):
        geometry.params_from_form("m", empty, Limits())
    with pytest.raises(FormError, match="attach a text or JSONL file"):
        geometry.params_from_form("m", {**values, "corpus_file": None}, Limits())
    bad_json = {**values, "corpus_file": _upload("c.jsonl", b"{oops\n")}
    with pytest.raises(FormError, match="line 1 is not valid JSON"):
        geometry.params_from_form("m", bad_json, Limits())


def test_hub_dataset_source_in_the_form(monkeypatch):
    import huggingface_hub

    from latent_atlas.analyses.geometry import GeometryParams
    from tiny_models import build_tiny_tokenizer

    monkeypatch.setattr(geometry_form, "_tokenizer", lambda model: build_tiny_tokenizer())
    values = {"source": "hub", "hub_name": "", "hub_split": "train", "hub_field": "text",
              "corpus_sequences": 2, "corpus_tokens": 4, "seed": 0}
    with pytest.raises(FormError, match="name a dataset on the Hugging Face hub"):
        geometry.params_from_form("m", values, Limits())
    with pytest.raises(FormError, match="hub id like"):
        geometry.params_from_form("m", {**values, "hub_name": "../x"}, Limits())
    # The real client, offline: one clear error in the form, nothing submitted.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FormError, match="not reachable from this portal"):
        geometry.params_from_form("m", {**values, "hub_name": "Salesforce/wikitext"}, Limits())
    # Reachable (the hub stood in for by documents): sampled exactly like a file, provenance kept.
    seen = []
    monkeypatch.setattr(geometry_form, "read_hub_dataset",
                        lambda hub, max_chars: seen.append((hub, max_chars)) or ["abcdefgh", "ijklmnop"])
    params = geometry.params_from_form("m", {**values, "hub_name": "Salesforce/wikitext",
                                             "hub_config": "wikitext-2-raw-v1"}, Limits())
    assert seen[0][0].config == "wikitext-2-raw-v1" and seen[0][1] == 64 * 2 * 4
    assert params["corpus"]["source"] == "hf://datasets/Salesforce/wikitext (wikitext-2-raw-v1) train:text"
    assert params["corpus"]["format"] == "hub" and len(params["token_ids"]) == 2
    GeometryParams.model_validate(params)
    assert geometry_form._toggle_source("hub") == ({"display": "none"}, {}, {"display": "none"},
                                              {"display": "none"}, {})


def test_upload_callback_reports_bad_files():
    ok_value, ok_status = geometry_form._uploaded("data:text/plain;base64," + base64.b64encode(b"a\nb").decode(),
                                             "x.txt")
    assert json.loads(ok_value)["name"] == "x.txt" and "2 documents" in str(ok_status)
    value, status = geometry_form._uploaded("data:text/plain;base64,", "empty.txt")
    assert value is None and "empty" in str(status)


def test_hiding_position0_leaves_out_those_points():
    arrays, summary = synthetic()
    fig = gf.layer_evolution_figure(arrays, summary, hide_position0=True)
    rows = [int(i) for t in fig.data[:4] for i in _rows(t)]
    assert rows and all(arrays["position"][r] != 0 for r in rows)
    assert any(a.text == "position 0 hidden" for a in fig.layout.annotations)
    attn = gf.attention_mlp_figure(arrays, summary, hide_position0=True)
    assert all(arrays["position"][int(r)] != 0 for t in attn.data[:2] for r in _rows(t))
