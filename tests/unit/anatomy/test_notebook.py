"""The notebook functions on a tiny model, and their figures: escaping, layout, sizes, no web stack."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import plotly.io as pio
import pytest

from latent_atlas import notebook
from latent_atlas.analyses.anatomy import figures
from latent_atlas.lm import LanguageModel

TEXT = "Hello <b>world</b> & co"


def test_importing_the_notebook_imports_no_web_stack() -> None:
    code = ("import sys, latent_atlas.notebook, latent_atlas.analyses.anatomy.figures; "
            "bad = [m for m in ('dash', 'flask', 'celery', 'sqlalchemy', 'webapp', 'models') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_plot_functions(tiny_llama: LanguageModel) -> None:
    lm = tiny_llama
    patterns, tokens = notebook.attention_patterns(lm, TEXT)
    assert patterns.shape == (3, 4, len(TEXT), len(TEXT)) and tokens[0] == "H"
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-5)
    fig = notebook.plot_attention(lm, TEXT, layer=2, head=3)
    assert fig.data[0].type == "heatmap" and "layer 2, head 3" in fig.layout.title.text
    with pytest.raises(ValueError, match=r"layer 3 is out of range \(0..2\)"):
        notebook.plot_attention(lm, TEXT, layer=3, head=0)
    with pytest.raises(ValueError, match=r"head 4 is out of range \(0..3\)"):
        notebook.plot_attention(lm, TEXT, layer=0, head=4)
    assert _png_pixels(notebook.plot_attention_heads(lm, TEXT).data[0].source).shape == (3 * len(TEXT), 4 * len(TEXT))
    assert notebook.plot_rollout(lm, TEXT).data[0].type == "heatmap"
    assert notebook.plot_token_activations(lm, TEXT, "mlp").data[0].z.shape == (3, len(TEXT))
    assert len(notebook.plot_token_embeddings(lm, TEXT, dims=3, sample=50).data) == 2
    sal = notebook.saliency(lm, TEXT, target="x", ig_steps=16)
    assert sal["target"] == "x" and sal["ig"].shape == (len(TEXT),)
    assert notebook.plot_saliency(lm, TEXT, "grad_norm").data[0].type == "bar"
    lens = notebook.plot_logit_lens(lm, TEXT, last=8)
    assert lens.data[0].z.shape == (7, 8)
    assert [t for t, _ in notebook.nearest(lm, "a", 3)] and len(notebook.nearest(lm, "a", 3)) == 3
    summary = notebook.model_summary(lm)
    assert summary["parameters"]["count"] == sum(p.numel() for p in lm.model.parameters())
    assert notebook.plot_architecture(lm.model.config).data[0].type == "mesh3d"
    assert lm.model.config._attn_implementation != "eager"


def test_tokens_are_escaped_in_figures() -> None:
    tokens = ["<script>", " x", "&"]
    heat = json.loads(pio.to_json(figures.attention_figure(np.eye(3), tokens, "t")))["data"][0]
    assert heat["x"] == heat["y"] == ["0·&lt;script&gt;", "1·␣x", "2·&amp;"]
    bars = json.loads(pio.to_json(figures.saliency_figure(np.ones(3), tokens, "t")))["data"][0]
    assert bars["x"][0] == "0·&lt;script&gt;"
    lens = figures.lens_figure(np.zeros((2, 3), np.int32), np.ones((2, 3)), ["a", "b"], tokens, {"0": "<i>"})
    assert json.loads(pio.to_json(lens))["data"][0]["text"][0] == ["&lt;i&gt;"] * 3


def test_attention_payload_is_compact() -> None:
    # A 512-token head travels as uint16 basis points: well under 1 MB of JSON.
    rng = np.random.default_rng(0)
    pattern = np.tril(rng.random((512, 512)))
    pattern /= pattern.sum(-1, keepdims=True)
    fig = figures.attention_figure(pattern, [f"t{i}" for i in range(512)], "t")
    payload = pio.to_json(fig)
    assert len(payload) < 1_000_000
    z = json.loads(payload)["data"][0]["z"]
    assert z["dtype"] == "u2"


def _png_pixels(uri: str) -> np.ndarray:
    """The pixels of a greyscale PNG data URI (figures.grey_png writes filter type 0 rows, one IDAT)."""
    png = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (depth, colour) == (8, 0)
    size = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    rows = np.frombuffer(zlib.decompress(png[41:41 + size]), np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:]


def test_thumbnail_sheet_is_one_png_with_tiles_in_place() -> None:
    rng = np.random.default_rng(1)
    thumbs = rng.integers(0, 256, (3 * 4, 5, 5), dtype=np.uint8)  # 3 layers x 4 heads of 5 x 5
    trace = figures.thumbnail_sheet(thumbs, 3, 4).data[0]
    assert trace.type == "image"
    pixels = 255 - _png_pixels(trace.source)  # 255 (strongest) is drawn black
    assert pixels.shape == (15, 20)
    for layer, head in [(0, 0), (2, 3), (1, 2)]:  # tile (layer, head) at rows layer*5.., columns head*5..
        np.testing.assert_array_equal(pixels[layer * 5:(layer + 1) * 5, head * 5:(head + 1) * 5], thumbs[layer * 4 + head])
    # pixel centres: a click anywhere in tile (2, 3) floors to it
    assert figures.sheet_cell(trace.x0 + 19 * trace.dx, trace.y0 + 14 * trace.dy, 3, 4) == (2, 3)
    assert figures.sheet_cell(trace.x0, trace.y0, 3, 4) == (0, 0)


def test_sheet_cell() -> None:
    assert figures.sheet_cell(2.99, 0.01, 3, 4) == (0, 2)
    assert figures.sheet_cell(4.0, 0.5, 3, 4) is None
    assert figures.sheet_cell(0.5, -0.1, 3, 4) is None


def test_token_axes_label_a_subset_but_keep_every_category() -> None:
    tokens = [f"t{i}" for i in range(512)]
    fig = json.loads(pio.to_json(figures.attention_figure(np.eye(512), tokens, "t")))
    heat = fig["data"][0]
    assert not heat.get("zsmooth") and len(heat["x"]) == 512  # crisp cells; every position a category (hover, clicks)
    ticks = fig["layout"]["xaxis"]["tickvals"]
    assert ticks == figures.token_ticks(heat["x"]) and len(ticks) <= figures.MAX_TICKS and ticks[0] == "0·t0"
    assert figures.token_ticks(["a", "b", "c"]) == ["a", "b", "c"]
    assert figures.token_ticks([str(i) for i in range(49)], 24) == [str(i) for i in range(0, 49, 3)]


DIAGRAM = [
    {"kind": "embedding", "label": "<emb>", "count": 4096, "shapes": {"weight": [64, 64]}},
    *({"kind": "block", "layer": i, "label": f"layers.{i}", "count": 3000, "attention": 1000, "mlp": 2000,
       "heads": 4, "kv_heads": 2, "shapes": {"mlp.up.weight": [32, 16]}} for i in range(3)),
    {"kind": "final_norm", "label": "norm", "count": 16, "shapes": {}},
]


def test_flat_architecture_has_the_3d_blocks_without_webgl() -> None:
    flat = json.loads(pio.to_json(figures.architecture_flat_figure(DIAGRAM)))
    solid = json.loads(pio.to_json(figures.architecture_figure(DIAGRAM)))
    assert {t["type"] for t in flat["data"]} == {"scatter"}  # SVG: no WebGL scene to draw
    flat_blocks = next(t for t in flat["data"] if t["name"] == "blocks")
    solid_blocks = next(t for t in solid["data"] if t["name"] == "blocks")
    assert flat_blocks["customdata"] == solid_blocks["customdata"] == [-1, 0, 0, 1, 1, 2, 2, -1]
    assert flat_blocks["text"] == solid_blocks["text"] and "&lt;emb&gt;" in flat_blocks["text"][0]
    heads = next(t for t in flat["data"] if t["name"] == "heads")
    assert heads["customdata"] == [layer for layer in range(3) for _ in range(4)]
    # each box is three closed faces (front, top, side), drawn as path shapes, one per colour and shade
    paths = [shape["path"] for shape in flat["layout"]["shapes"]]
    assert sum(path.count("Z") for path in paths) == 3 * len(flat_blocks["customdata"])
    assert len(paths) == 4 * 3  # 4 colours (embedding, attention, MLP, final norm) x 3 shades
