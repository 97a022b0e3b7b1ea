"""Scan exports, pure functions of ``ScanData``: a self-contained HTML animation and a GIF.

* ``animation_html``: the animation figure with Plotly's play / pause, the
  step buttons of ``webapp.render`` and the page's keys (space, ``[``, ``]``),
  plotly.js inlined, so the file opens anywhere without a network;
* ``animation_gif``: one frame per layer drawn with matplotlib (Agg, no
  browser: a kaleido WebGL frame takes seconds), the same fixed axes and
  camera in every frame, coloured by prompt (diff) or position (one prompt),
  assembled by pillow. At most ``GIF_MAX_FRAMES`` frames (evenly spaced,
  always the first and last); token strings never reach the image.
MP4 is not offered (it would need an ffmpeg binary).
"""

from __future__ import annotations

import io

import numpy as np

from webapp.render import standalone_html
from webapp.views.scan.data import ScanData
from webapp.views.scan.figures import PROMPT_COLOURS, animation_figure

__all__ = ["GIF_MAX_FRAMES", "KEYS_SCRIPT", "animation_gif", "animation_html", "gif_frames"]

GIF_MAX_FRAMES = 130
GIF_SIZE_PX = (720, 560)

# Keys of the exported page: space plays / pauses, [ and ] step (``{plot_id}``: the figure's div).
KEYS_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd._fullLayout || !gd._fullLayout.sliders) { return; }
  var playing = false;
  function at() { return gd._fullLayout.sliders[0].active || 0; }
  function show(i) {
    var steps = gd._fullLayout.sliders[0].steps;
    i = Math.max(0, Math.min(steps.length - 1, i));
    playing = false;
    Plotly.animate(gd, [String(i)], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                     transition: {duration: 0}});
  }
  document.addEventListener('keydown', function (e) {
    if (e.key === '[') { e.preventDefault(); show(at() - 1); }
    else if (e.key === ']') { e.preventDefault(); show(at() + 1); }
    else if (e.key === ' ') {
      e.preventDefault();
      if (playing) { playing = false; Plotly.animate(gd, [null], {mode: 'immediate',
                                                               frame: {duration: 0, redraw: false}}); }
      else { playing = true; Plotly.animate(gd, null, {frame: {duration: 400, redraw: true},
                                                       transition: {duration: 0}, fromcurrent: true})
                               .then(function () { playing = false; }, function () { playing = false; }); }
    }
  });
})();
"""


def animation_html(data: ScanData, title: str) -> str:
    """The self-contained HTML animation of a scan run."""
    figure = animation_figure(data, colour="prompt" if data.is_diff else "position", controls=True)
    description = ("Every token's state through the layers in one shared 3-D projection (fitted once over "
                   "all layers). Play, pause, step or drag the slider; keys: space, [ and ].")
    return standalone_html(figure, title=title, view_title="Layer-time scan", description=description,
                           subtitle=f"run {data.run_id}", post_script=KEYS_SCRIPT)


def gif_frames(n_frames: int, limit: int = GIF_MAX_FRAMES) -> list[int]:
    """Frame indices for the GIF: all of them, or ``limit`` evenly spaced ones with the first and last."""
    if n_frames <= limit:
        return list(range(n_frames))
    return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, limit)})


def animation_gif(data: ScanData, *, frame_ms: int = 400, limit: int = GIF_MAX_FRAMES) -> bytes:
    """The animation as an animated GIF (bytes); see the module docstring."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg renders the PNG
    from PIL import Image

    coords = data.coords
    flat = coords.reshape(-1, 3)
    lows, highs = np.nanmin(flat, axis=0), np.nanmax(flat, axis=0)
    if data.is_diff:
        colours = [PROMPT_COLOURS[int(p) % 2] for p in data.token_prompt]
    else:
        import matplotlib.cm as cm

        span = max(1, int(data.token_position.max()))
        colours = cm.viridis(data.token_position / span)
    size = 4 if coords.shape[1] > 600 else 10
    labels = data.labels
    images = []
    width, height = GIF_SIZE_PX
    for frame in gif_frames(data.n_frames, limit):
        figure = Figure(figsize=(width / 100, height / 100), dpi=100)
        axes = figure.add_subplot(projection="3d")
        points = coords[frame]
        axes.scatter(points[:, 0], points[:, 1], points[:, 2], c=colours, s=size, depthshade=False, linewidths=0)
        axes.set_xlim(lows[0], highs[0])
        axes.set_ylim(lows[1], highs[1])
        axes.set_zlim(lows[2], highs[2])
        axes.view_init(elev=22, azim=-60)
        axes.set_title(f"{labels[frame]}  ({frame + 1}/{data.n_frames})", fontsize=12)
        if data.is_diff:
            figure.text(0.02, 0.02, "blue: prompt A   orange: prompt B", fontsize=9)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        images.append(Image.open(io.BytesIO(buffer.getvalue())).convert("P", palette=Image.Palette.ADAPTIVE))
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return out.getvalue()
