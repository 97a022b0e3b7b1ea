"""The grid view on synthetic arrays: colours, modes, hover, legend, text window, PNG, JSON, form."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from latent_atlas.analyses.grid import GridParams
from latent_atlas.settings import Limits
from webapp.views import FormError
from webapp.views import grid as gv
from webapp.views.grid import GridData

EVIL = "<script>alert(1)</script>"


def synthetic(n: int = 8, k: int = 3, *, tokens: dict[int, str] | None = None, plane: str = "direct",
              seed: int = 0, run_id: str = "run-a") -> tuple[GridData, dict[str, np.ndarray]]:
    """Quadrants of four top-1 ids (10, 11, 12, 13); id 13 decodes to a script tag."""
    rng = np.random.default_rng(seed)
    top_ids = rng.integers(20, 40, size=(n, n, k)).astype(np.int32)
    half = n // 2
    quadrant = np.zeros((n, n), dtype=np.int32)
    quadrant[:half, half:] = 1
    quadrant[half:, :half] = 2
    quadrant[half:, half:] = 3
    top_ids[..., 0] = 10 + quadrant
    probs = np.sort(rng.random((n, n, k)).astype(np.float32), axis=-1)[..., ::-1] / k
    entropy = (rng.random((n, n)) * 4).astype(np.float32)
    xs = (np.arange(n) - half).astype(np.float32) * 0.5
    ys = (np.arange(n) - half).astype(np.float32) * 0.5 + 3.0
    names = {i: f"t{i}" for i in range(10, 40)}
    names[13] = EVIL
    names.update(tokens or {})
    summary = {
        "layer": 2, "n_layers": 3, "plane": plane, "size": n, "top_k": k,
        "tokens": {str(i): names[i] for i in range(10, 14)},
        "topk_tokens": {str(i): names[i] for i in range(20, 40)},
        "plane_info": {"seed": 7} if plane == "random_projection" else {},
    }
    arrays = {"top_ids": top_ids, "top_probs": probs.copy(), "entropy": entropy, "xs": xs, "ys": ys,
              "plane_center": np.zeros(4, np.float32), "plane_u": np.eye(4, dtype=np.float32)[0],
              "plane_v": np.eye(4, dtype=np.float32)[1]}
    params = {"model": "tiny", "layer": 2, "size": n, "plane": plane}
    return GridData.from_arrays(run_id, summary, params, arrays), arrays


def heatmap(fig: go.Figure) -> go.Heatmap:
    assert isinstance(fig.data[0], go.Heatmap)
    return fig.data[0]


# --------------------------------------------------------------------------- colours


def test_token_colours_are_stable_per_id_across_calls_modes_and_exports():
    data, _ = synthetic()
    z1 = np.asarray(heatmap(gv.token_map_figure(data)).z)
    z2 = np.asarray(heatmap(gv.token_map_figure(data, window={"x": [0, 1], "y": None})).z)
    assert np.array_equal(z1, z2)
    for token in range(10, 14):  # one colour per token: map, legend and image agree
        slots = set(z1[data.top1 == token].tolist())
        assert len(slots) == 1
        colour = gv.PALETTE[slots.pop()]
        assert data.colour(token) == colour
        legend = {e["id"]: e["colour"] for e in gv.legend_entries(data)}
        assert legend[token] == colour
        rgb = gv.cell_rgb(data, "token")[data.top1 == token]
        assert (rgb == gv.PALETTE_RGB[gv.PALETTE.index(colour)]).all()
    again, _ = synthetic()
    assert np.array_equal(np.asarray(heatmap(gv.token_map_figure(again)).z), z1)
    assert np.array_equal(gv.token_palette_index(np.arange(1000)), gv.token_palette_index(np.arange(1000)))
    assert len(set(gv.token_palette_index(np.arange(5000)).tolist())) == len(gv.PALETTE)


def test_distinct_tokens_get_distinct_colours():
    counts = {1: 5, 900: 9, 77: 1, 4: 3}
    slots = gv.assign_colour_slots(counts)
    assert sorted(slots.values()) == [0, 1, 2, 3]  # the four most distinct colours
    assert slots[900] == 0  # the most frequent first
    assert gv.assign_colour_slots(counts) == slots
    many = gv.assign_colour_slots({t: 1 for t in range(len(gv.PALETTE))})
    assert sorted(many.values()) == list(range(len(gv.PALETTE)))


def test_maps_shown_together_share_one_colour_per_token():
    a, _ = synthetic(seed=0, run_id="a")
    b, _ = synthetic(n=12, seed=5, run_id="b")
    b.top_ids[..., 0] = np.where(b.top_ids[..., 0] == 13, 14, b.top_ids[..., 0])  # b has 14, not 13
    b.summary["tokens"]["14"] = "t14"
    ja, jb = a.in_context([b]), b.in_context([a])
    for token in (10, 11, 12):
        assert ja.colour(token) == jb.colour(token)
    colours = {ja.colour(t) for t in (10, 11, 12, 13)} | {jb.colour(14)}
    assert len(colours) == 5


def test_discrete_colorscale_maps_each_slot_to_its_colour():
    scale = gv.discrete_colorscale()
    p = len(gv.PALETTE)
    assert len(scale) == 2 * p and scale[0][0] == 0 and scale[-1][0] == 1
    slot = 5
    centre = (slot + 0.5) / p  # z = slot with zmin = -0.5, zmax = p - 0.5
    below = [c for stop, c in scale if stop <= centre][-1]
    assert below == gv.PALETTE[slot]


def test_probability_and_entropy_modes():
    data, _ = synthetic()
    token = heatmap(gv.token_map_figure(data, "token"))
    assert token.showscale is False
    prob = heatmap(gv.token_map_figure(data, "probability"))
    assert np.allclose(np.asarray(prob.z), data.top_probs[..., 0])
    assert (prob.zmin, prob.zmax) == (0.0, 1.0) and prob.showscale
    assert "probability" in prob.colorbar.title.text
    ent = heatmap(gv.token_map_figure(data, "entropy"))
    assert np.allclose(np.asarray(ent.z), data.entropy)
    assert (ent.zmin, ent.zmax) == (pytest.approx(float(data.entropy.min())), pytest.approx(float(data.entropy.max())))
    assert "entropy" in ent.colorbar.title.text
    with pytest.raises(ValueError, match="colour mode"):
        gv.token_map_figure(data, "bogus")


def test_mode_patch_replaces_the_heatmap_colours():
    data, _ = synthetic()
    patch = gv.map_patch(data, "entropy", None, colours=True).to_plotly_json()
    ops = {tuple(op["location"]): op["params"]["value"] for op in patch["operations"]}
    assert np.allclose(np.asarray(ops[("data", 0, "z")]), data.entropy)
    assert ops[("data", 0, "showscale")] is True
    scale = ops[("data", 0, "colorscale")]  # explicit [position, colour] stops: plotly.js needs them
    assert scale[0] == [0.0, gv.SCALES["entropy"][0]] and scale[-1][0] == 1.0


# --------------------------------------------------------------------------- hover and text


def test_hover_text_is_escaped_and_lists_the_top_k():
    data, _ = synthetic()
    fig = gv.token_map_figure(data)
    custom = np.asarray(heatmap(fig).customdata, dtype=object)
    j, i = data.n - 1, data.n - 1  # quadrant 3: the script token
    text = custom[j, i]
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert f"#{int(data.top_ids[j, i, 0])}" in text
    assert text.count("<br>") == data.k  # k lines + entropy
    assert "%{customdata}" in heatmap(fig).hovertemplate
    assert "x %{x" in heatmap(fig).hovertemplate
    assert gv.share_text(1 / 4096) == "<0.1%" and gv.share_text(0.25) == "25.0%"


def test_hover_shrinks_for_large_grids():
    data, _ = synthetic(n=150, k=5)
    assert gv.hover_lines(data) == 1
    assert "click for the top-5" in heatmap(gv.token_map_figure(data)).hovertemplate
    big, _ = synthetic(n=300, k=2)
    assert gv.hover_lines(big) == 0
    assert heatmap(gv.token_map_figure(big)).customdata is None


def test_token_text_only_for_small_windows_and_escaped():
    small, _ = synthetic(n=8)
    text = gv.token_map_figure(small).data[1]
    assert len(text.text) == 64
    assert not any("<script>" in t for t in text.text)
    assert any("&lt;script" in t for t in text.text)

    big, _ = synthetic(n=64)
    assert len(gv.token_map_figure(big).data[1].text) == 0
    # zoom to the 10 x 6 cells around the middle
    relayout = {"xaxis.range[0]": float(big.xs[20]) - 0.1, "xaxis.range[1]": float(big.xs[29]) + 0.1,
                "yaxis.range[0]": float(big.ys[30]) - 0.1, "yaxis.range[1]": float(big.ys[35]) + 0.1}
    window = gv.window_from_relayout(relayout, None)
    props = gv.text_props(big, "token", window)
    assert len(props["text"]) == 60
    assert min(props["x"]) == pytest.approx(big.xs[20]) and max(props["y"]) == pytest.approx(big.ys[35])
    assert len(props["textfont"]["color"]) == 60


def test_window_from_relayout():
    assert gv.window_from_relayout({"autosize": True}, None) is None
    assert gv.window_from_relayout(None, None) is None
    w = gv.window_from_relayout({"xaxis.range": [3, 1]}, {"x": None, "y": [0, 1]})
    assert w == {"x": [1.0, 3.0], "y": [0, 1]}
    assert gv.window_from_relayout({"xaxis.autorange": True, "yaxis.autorange": True}, w) == {"x": None, "y": None}


def test_labels_make_whitespace_visible_and_fit():
    assert gv.cell_label(" the", 8) == "·the"
    assert gv.cell_label("\n", 8) == "↵"
    assert gv.cell_label("abcdefgh", 4) == "abc…"
    assert gv.cell_label("", 4) == "∅"


def test_cell_lookup_follows_the_layout():
    data, _ = synthetic()
    j, i = 6, 1
    assert gv.cell_at(data, data.xs[i], data.ys[j]) == (j, i)
    assert gv.cell_at(data, data.xs[0] - 5, data.ys[0]) is None
    details = str(gv.cell_details(data, j, i))
    assert "t12" in details  # quadrant 2: rows j >= N/2, columns i < N/2
    assert EVIL not in details or "Code" in details  # a text child, never HTML


def test_axis_titles_name_the_plane_units():
    assert "dimension 0" in gv.axis_titles({"plane": "direct"})[0]
    assert "seed 7" in gv.axis_titles({"plane": "random_projection", "plane_info": {"seed": 7}})[0]
    x, y = gv.axis_titles({"plane": "pca", "plane_info": {"explained_variance_ratio": [0.5, 0.25]}})
    assert "standard deviations" in x and "50.0%" in x and "25.0%" in y
    assert "state 2" in gv.axis_titles({"plane": "through_states"})[1]


# --------------------------------------------------------------------------- legend


def test_legend_shares_sum_to_one_and_are_sorted():
    data, _ = synthetic(n=8)
    entries = gv.legend_entries(data)
    assert [e["id"] for e in entries] == [10, 11, 12, 13] or sorted(e["cells"] for e in entries) == [16] * 4
    assert sum(e["share"] for e in entries) == pytest.approx(1.0)
    assert all(e["cells"] == 16 for e in entries)

    rng = np.random.default_rng(1)
    data.top_ids[..., 0] = rng.integers(0, 30, size=(8, 8))
    entries = gv.legend_entries(data, rows=5)
    assert len(entries) == 6 and entries[-1]["id"] is None
    assert sum(e["share"] for e in entries) == pytest.approx(1.0)
    assert sum(e["cells"] for e in entries) == 64
    shares = [e["share"] for e in entries[:-1]]
    assert shares == sorted(shares, reverse=True)
    _, counts = np.unique(data.top1, return_counts=True)
    assert entries[0]["cells"] == counts.max()


def test_legend_component_shows_tokens_as_text():
    data, _ = synthetic()
    component = gv.legend_component(gv.legend_entries(data))
    assert repr(EVIL) in str(component)  # a text child (React escapes it), not markup


# --------------------------------------------------------------------------- exports


def test_png_has_the_expected_size_orientation_and_colours():
    data, _ = synthetic(n=8)
    png = gv.token_map_png(data, "token", 24)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (8 * 24, 8 * 24, 3)
    # the centre of each quadrant block, away from text: the token's palette colour
    for token, (j, i) in {10: (0, 0), 11: (0, 7), 12: (7, 0), 13: (7, 7)}.items():
        # image row 0 is the highest y (j = N - 1)
        pixel = image[(data.n - 1 - j) * 24 + 2, i * 24 + 2]
        assert tuple(pixel) == tuple(gv.PALETTE_RGB[data.colour_slot(token)])
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert len(colours) > 4  # four cell colours plus text and edges
    # text is drawn: a cell holds more than its background and edge colour
    block = image[2:22, 2:22].reshape(-1, 3)
    assert len({tuple(c) for c in block}) > 2


def test_png_probability_mode_and_default_cell_size():
    data, _ = synthetic(n=8)
    image = gv.token_map_image(data, "probability")
    cell = gv.default_cell_px(8)
    assert image.shape == (8 * cell, 8 * cell, 3)
    assert gv.default_cell_px(200) == 32 and gv.default_cell_px(512) == 12
    assert not np.array_equal(image, gv.token_map_image(data, "token"))


def test_png_cell_bounds():
    assert gv.png_cell_px(200, None) == 32
    assert gv.png_cell_px(200, "20") == 20
    for bad in ("3", "65", "x"):
        with pytest.raises(ValueError, match="cell"):
            gv.png_cell_px(200, bad)
    with pytest.raises(ValueError, match="wider than"):
        gv.png_cell_px(1000, "32")


def test_json_export_content():
    data, arrays = synthetic(n=8, k=3)
    doc = gv.export_document(data, {"id": "run-a", "title": "t", "model": "tiny"}, arrays)
    text = json.dumps(doc)
    back = json.loads(text)
    assert back["size"] == 8 and back["top_k"] == 3 and back["layer"] == 2
    assert back["config"] == data.params
    assert back["x"] == [float(v) for v in arrays["xs"]] and back["y"][0] == pytest.approx(float(data.ys[0]))
    ids = np.asarray(back["top_ids"])
    assert ids.shape == (8, 8, 3) and np.array_equal(ids, data.top_ids)
    assert np.allclose(np.asarray(back["top_probs"]), data.top_probs, atol=1e-6)
    assert np.allclose(np.asarray(back["entropy"]), data.entropy, atol=1e-5)
    assert set(back["tokens"]) == {str(int(t)) for t in np.unique(data.top_ids)}
    assert back["tokens"]["13"] == EVIL  # raw in JSON (it is data, not markup)
    assert back["plane"]["u"] == [1.0, 0.0, 0.0, 0.0]
    assert sum(e["share"] for e in back["legend"]) == pytest.approx(1.0)
    assert "x[i]" in back["layout"] and back["run"]["id"] == "run-a"


def test_render_draws_the_map_and_legend():
    data, arrays = synthetic()
    run = SimpleNamespace(id="run-a", summary=data.summary, params=data.params)
    view = gv.render(run, arrays)
    text = str(view)
    assert "grid-map" in text and "grid-legend" in text and "/api/runs/run-a/grid.png" in text
    broken = gv.render(run, {"xs": arrays["xs"]})
    assert "no token map" in str(broken)


# --------------------------------------------------------------------------- form


LIMITS = Limits(max_grid_size=100, max_prompts=4, max_prompt_chars=40, max_tokens_per_prompt=32)


def form(**overrides):
    base = {"layer": 2, "size": 64, "spacing": 0.5, "center_x": 1, "center_y": -2, "plane": "direct",
            "seed": 3, "prompts": "", "top_k": 5, "max_tokens": 16, "dtype": "float32", "context": "",
            "exclude_first_token": True,
            "state0_prompt": 0, "state0_position": -1, "state1_prompt": 1, "state1_position": -1,
            "state2_prompt": 2, "state2_position": 0}
    return {**base, **overrides}


@pytest.mark.parametrize("plane", list(gv.PLANES))
def test_params_from_form_builds_valid_params_for_every_plane(plane):
    prompts = "alpha beta\ngamma delta\nepsilon" if plane in ("pca", "through_states") else ""
    params = gv.params_from_form("tiny", form(plane=plane, prompts=prompts), LIMITS)
    validated = GridParams.model_validate(params, context={"limits": LIMITS, "n_layers": 3})
    assert validated.size == 64 and validated.center == (1.0, -2.0) and validated.plane == plane
    assert ("seed" in params) == (plane == "random_projection")
    assert ("states" in params) == (plane == "through_states")
    if plane == "through_states":
        assert [s.position for s in validated.states] == [-1, -1, 0]


def test_pca_without_prompts_uses_the_built_in_set():
    params = gv.params_from_form("tiny", form(plane="pca"), LIMITS)
    assert "prompts" not in params


def test_params_from_form_lists_every_problem():
    with pytest.raises(FormError) as caught:
        gv.params_from_form(None, form(layer=-1, size=101, spacing=0, center_x="a", top_k=11,
                                       max_tokens=33, plane="bogus", dtype="int8"), LIMITS)
    fields = {m.split(":")[0] for m in caught.value.messages}
    assert fields >= {"model", "layer", "size", "spacing", "center_x", "top_k", "max_tokens", "plane", "dtype"}
    assert any("from 2 to 100" in m for m in caught.value.messages)


def test_through_states_needs_prompts_and_whole_positions():
    with pytest.raises(FormError) as caught:
        gv.params_from_form("tiny", form(plane="through_states", state1_position=1.5), LIMITS)
    messages = " ".join(caught.value.messages)
    assert "needs prompts" in messages and "state s1" in messages


def test_layer_out_of_range_is_refused_by_the_params_model():
    params = gv.params_from_form("tiny", form(layer=9), LIMITS)
    with pytest.raises(ValueError, match=r"layer 9 is out of range for this model \(0\.\.3\)"):
        GridParams.model_validate(params, context={"n_layers": 3})


# --------------------------------------------------------------------------- bounds before queueing


def test_validate_params_knows_the_block_count(monkeypatch, tiny_gpt2_dir):
    from latent_atlas.settings import get_settings
    from webapp import model_shape, runs_service

    monkeypatch.setenv("ATLAS_MODELS", json.dumps({"tiny": {"source": str(tiny_gpt2_dir)}}))
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "tiny")
    get_settings.cache_clear()
    model_shape.clear_cache()
    try:
        assert model_shape.model_shape("tiny").n_layers == 3
        ok = runs_service.validate_params("grid", {"model": "tiny", "layer": 3, "size": 8})
        assert ok.layer == 3
        with pytest.raises(runs_service.SubmissionError) as caught:
            runs_service.validate_params("grid", {"model": "tiny", "layer": 4, "size": 8})
        assert caught.value.messages == ["layer: layer 4 is out of range for this model (0..3)"]
        with pytest.raises(runs_service.SubmissionError, match="too large"):
            runs_service.validate_params("grid", {"model": "tiny", "layer": 0, "size": 1000})
        with pytest.raises(runs_service.SubmissionError, match="plane"):
            runs_service.validate_params("grid", {"model": "tiny", "layer": 0, "plane": "spiral"})
    finally:
        get_settings.cache_clear()
        model_shape.clear_cache()


def test_gguf_shape_reads_the_header(tmp_path):
    import gguf

    from latent_atlas.lm.shape import ModelShape, gguf_shape

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_token_list(["a", "b", "c"])
    writer.add_block_count(7)
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_shape(path) == ModelShape(n_layers=7, vocab_size=3)  # the token list's length
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"nope" * 10)
    with pytest.raises(ValueError):
        gguf_shape(bogus)


def test_compare_page_parses_run_ids():
    parse_run_ids = gv.parse_run_ids
    assert parse_run_ids("abc,def") == ["abc", "def"]
    assert parse_run_ids(" abc  abc ,, /runs/def/ ,ghi") == ["abc", "def"]
    assert parse_run_ids("<b>,ok") == ["ok"]
    assert parse_run_ids(None) == []
    assert gv.split_run_ids("a1b2c3d4e5,<b>, x1y2z3w4v5 ,a1b2c3d4e5, q9q9q9q9q9") == (
        ["a1b2c3d4e5", "x1y2z3w4v5"], ["q9q9q9q9q9"], ["<b>"])
