"""Static export: self-contained HTML per view + index, escaping, step buttons, PNGs, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import pytest

from atlas_cli import main as cli
from harness import require_chromium
from webapp.render import PngUnavailable, write_bundle
from webapp.views.geometry import export as geometry_export
from webapp.views.geometry import page as geometry_page

from .geometry.test_views import synthetic


def _views():
    arrays, summary = synthetic()
    return geometry_page.export_figures(arrays, summary), arrays, summary


def test_one_self_contained_file_per_view_and_an_index(tmp_path: Path):
    views, _, _ = _views()
    files = write_bundle(views, tmp_path, title="Run <X>", subtitle="sub & title", png=False)
    names = sorted(p.name for p in files)
    assert names == sorted(["index.html", *(f"{slug}.html" for slug, *_ in views)])
    for slug, title, _description, _ in views:
        page = (tmp_path / f"{slug}.html").read_text()
        assert len(page) > 3_000_000  # plotly.js is inlined ...
        assert not re.search(r"<script[^>]+src=[\"']https?:", page)  # ... and nothing is fetched
        assert "Plotly.newPlot" in page and "Run &lt;X&gt;" in page and "<X>" not in page
        assert title in page
    assert "GPT-2 learns &lt;positions&gt;" in (tmp_path / "positional-structure.html").read_text()
    assert "atlas-steps" in (tmp_path / "animation.html").read_text()  # step buttons
    assert "atlas-steps" not in (tmp_path / "layer-norms.html").read_text().split("</style>", 1)[1]
    index = (tmp_path / "index.html").read_text()
    for slug, *_ in views:
        assert f'href="{slug}.html"' in index
    assert "sub &amp; title" in index and "<img" not in index


def test_bad_slugs_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="slug"):
        write_bundle([("../x", "t", "d", go.Figure())], tmp_path, title="t", png=False)


def test_png_per_view_with_chromium(tmp_path: Path):
    require_chromium()
    views, _, _ = _views()
    small = [v for v in views if v[0] in ("layer-norms", "attention-vs-mlp")]
    files = write_bundle(small, tmp_path, title="t", png=True)
    pngs = [p for p in files if p.suffix == ".png"]
    assert sorted(p.name for p in pngs) == ["attention-vs-mlp.png", "layer-norms.png"]
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert "<img" in (tmp_path / "index.html").read_text()


def test_png_failure_keeps_the_html(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    fig = go.Figure(go.Bar(x=[1], y=[2]))
    with pytest.raises(PngUnavailable) as caught:
        write_bundle([("one", "One", "d", fig)], tmp_path / "out", title="t", png=True)
    assert (tmp_path / "out" / "one.html").exists() and (tmp_path / "out" / "index.html").exists()
    assert {p.name for p in caught.value.written} == {"index.html", "one.html"}


class _Run:
    def __init__(self, summary, kind="geometry", status="succeeded"):
        self.id, self.kind, self.status, self.title, self.summary = "RUN1", kind, status, "t", summary


def test_cli_render_writes_the_bundle(tmp_path: Path, monkeypatch, capsys):
    from webapp import runs_service

    views, arrays, summary = _views()
    runs = {"RUN1": _Run(summary), "GRID": _Run(summary, kind="grid"), "Q": _Run(summary, status="queued")}

    def get_run(run_id):
        if run_id not in runs:
            raise runs_service.RunNotFound(run_id)
        return runs[run_id]

    monkeypatch.setattr(runs_service, "get_run", get_run)
    monkeypatch.setattr(runs_service, "load_arrays", lambda run, names=None: arrays)
    out = tmp_path / "bundle"
    assert cli.main(["render", "RUN1", "--output", str(out), "--no-png"]) == 0
    assert (out / "index.html").exists() and (out / "animation.html").exists()
    assert "open " in capsys.readouterr().out
    assert cli.main(["render", "GRID", "--output", str(out)]) == 2
    assert cli.main(["render", "Q", "--output", str(out)]) == 2
    assert cli.main(["render", "NOPE", "--output", str(out)]) == 2
    assert "no run NOPE" in capsys.readouterr().out


def test_download_html_zip_holds_the_same_bundle():
    import io
    import zipfile

    _, arrays, summary = _views()
    data = geometry_export.html_bundle_zip("RUN1", summary, arrays)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "latent-atlas-RUN1/index.html" in names and "latent-atlas-RUN1/animation.html" in names
    assert len(names) == 7
