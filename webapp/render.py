"""Static export: one self-contained interactive HTML file per view, an index page, PNGs.

``write_bundle(views, output_dir, title=..., subtitle=..., png=True)`` takes
``(slug, title, description, figure)`` tuples (Plotly figures; the geometry
view builds them with ``webapp.views.geometry.page.export_figures``) and writes

* ``<slug>.html`` per view: plotly.js inlined (no network needed to open it),
  the title and description as escaped text, the figure interactive; a figure
  with animation frames also gets "step" buttons next to Plotly's play/pause;
* ``index.html``: the title, subtitle and a link (plus thumbnail, when PNGs
  were written) per view;
* ``<slug>.png`` per view when ``png`` is true, rendered by kaleido in one
  headless Chromium session (kaleido >= 1 needs a Chrome: it finds Debian's
  ``/usr/bin/chromium`` itself, or the one ``BROWSER_PATH`` names). A PNG that
  cannot be rendered is reported by ``PngUnavailable`` after the HTML files
  are written.

``standalone_html(figure, title=..., description=...)`` is one such page on its
own (no index link), e.g. a scan run's animation served for download; a
``post_script`` (JavaScript run after the plot is created, ``{plot_id}`` is the
figure's div id) can add controls such as keyboard shortcuts.

Invariants: only plotly is imported (no Dash, no database); every user-visible
string goes through ``html.escape``; file names are the given slugs, which
must be simple (letters, digits, dashes).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PngUnavailable", "STEP_SCRIPT", "standalone_html", "write_bundle"]

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
PNG_WIDTH, PNG_HEIGHT = 1200, 800

# Run after the plot is created; ``{plot_id}`` is the figure's div id (plotly's post_script).
STEP_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd._fullLayout || !gd._fullLayout.sliders || !gd._fullLayout.sliders.length) { return; }
  function step(delta) {
    var slider = gd._fullLayout.sliders[0];
    var at = Math.min(slider.steps.length - 1, Math.max(0, (slider.active || 0) + delta));
    Plotly.animate(gd, [slider.steps[at].label], {mode: 'immediate', transition: {duration: 0},
                                                  frame: {duration: 0, redraw: true}});
  }
  var bar = document.createElement('div');
  bar.className = 'atlas-steps';
  [['\\u25c0 step', -1], ['step \\u25b6', 1]].forEach(function (b) {
    var button = document.createElement('button');
    button.textContent = b[0];
    button.onclick = function () { step(b[1]); };
    bar.appendChild(button);
  });
  gd.parentNode.insertBefore(bar, gd);
})();
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; } p.sub { color: #666; margin-top: 0; }
p.desc { color: #444; max-width: 60rem; } a { color: #0b5ed7; }
ul.views { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 1rem; }
ul.views li { width: 22rem; border: 1px solid #ddd; border-radius: 6px; padding: 0.75rem; }
ul.views img { width: 100%; border: 1px solid #eee; }
.atlas-steps button { margin-right: 0.4rem; }
"""


class PngUnavailable(RuntimeError):
    """PNG export failed (no Chrome for kaleido, or kaleido missing); the HTML files exist."""

    written: list[Path] = []  # noqa: RUF012 - set on the instance by write_bundle


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def _view_html(title: str, subtitle: str, view_title: str, description: str, figure: Any, *,
               index_link: bool = True, post_script: str = "") -> str:
    import plotly.io as pio

    has_frames = bool(getattr(figure, "frames", None))
    script = (STEP_SCRIPT if has_frames else "") + post_script
    div = pio.to_html(figure, include_plotlyjs=True, full_html=False, div_id="atlas-figure",
                      config={"displaylogo": False, "scrollZoom": True, "responsive": True},
                      post_script=script or None)
    back = f"<a href=\"index.html\">&larr; {html.escape(title)}</a>" if index_link else html.escape(title)
    body = (f"<p class=\"sub\">{back} · "
            f"{html.escape(subtitle)}</p><h1>{html.escape(view_title)}</h1>"
            f"<p class=\"desc\">{html.escape(description)}</p>{div}")
    return _page(f"{view_title} · {title}", body)


def standalone_html(figure: Any, *, title: str, view_title: str, description: str, subtitle: str = "",
                    post_script: str = "") -> str:
    """One self-contained interactive page (plotly.js inlined, no index link); see the module docstring."""
    return _view_html(title, subtitle, view_title, description, figure, index_link=False,
                      post_script=post_script)


def _png(figures: list[Any], paths: list[Path]) -> None:
    try:
        import plotly.io as pio
    except ImportError as exc:  # pragma: no cover - plotly is a dependency
        raise PngUnavailable(str(exc)) from exc
    if "BROWSER_PATH" not in os.environ:
        found = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None)
        if found is not None:
            os.environ["BROWSER_PATH"] = found
    try:
        pio.write_images(figures, [str(p) for p in paths], width=PNG_WIDTH, height=PNG_HEIGHT)
    except Exception as exc:
        raise PngUnavailable(f"PNG export needs kaleido and a Chrome/Chromium ({type(exc).__name__}: "
                             f"{exc}); the HTML files were written") from exc


def write_bundle(views: Iterable[tuple[str, str, str, Any]], output_dir: Path | str, *, title: str,
                 subtitle: str = "", png: bool = True) -> list[Path]:
    """Write the views' HTML (and PNG) files plus ``index.html``; returns the paths written."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    views = list(views)
    written: list[Path] = []
    for slug, view_title, description, figure in views:
        if not SLUG.match(slug):
            raise ValueError(f"bad view slug {slug!r}")
        path = output / f"{slug}.html"
        path.write_text(_view_html(title, subtitle, view_title, description, figure), encoding="utf-8")
        written.append(path)
    png_error: PngUnavailable | None = None
    png_paths: list[Path] = []
    if png and views:
        png_paths = [output / f"{slug}.png" for slug, *_ in views]
        try:
            _png([figure for *_, figure in views], png_paths)
            written.extend(png_paths)
        except PngUnavailable as exc:
            png_error, png_paths = exc, []
    items = []
    for slug, view_title, description, _ in views:
        thumb = (f"<a href=\"{slug}.html\"><img src=\"{slug}.png\" alt=\"{html.escape(view_title)}\"></a>"
                 if png_paths else "")
        items.append(f"<li><a href=\"{slug}.html\"><strong>{html.escape(view_title)}</strong></a>{thumb}"
                     f"<p class=\"desc\">{html.escape(description)}</p></li>")
    index = output / "index.html"
    index.write_text(_page(title, f"<h1>{html.escape(title)}</h1><p class=\"sub\">{html.escape(subtitle)}</p>"
                                  f"<ul class=\"views\">{''.join(items)}</ul>"
                                  "<p class=\"sub\">Each page is self-contained (plotly.js included); "
                                  "no network is needed to open it.</p>"), encoding="utf-8")
    written.insert(0, index)
    if png_error is not None:
        png_error.written = written
        raise png_error
    return written
