"""The scan run kind in the portal: one module per concern, their public names re-exported.

``data`` (``ScanData``, ``load_scan``, ``hover_safe``), ``figures`` (the
animation, the divergence curve, the heatmap), ``export`` (HTML and GIF),
``form`` (the New-run form) and ``page`` (the run page; importing it registers
its callback). The browser side of the animation is ``webapp/assets/scan.js``.
"""

from webapp.views.scan.data import ARRAYS, KIND, ScanData, hover_safe, load_scan  # noqa: F401
from webapp.views.scan.export import animation_gif, animation_html, gif_frames  # noqa: F401
from webapp.views.scan.figures import (  # noqa: F401
    animation_figure,
    density_values,
    divergence_figure,
    heatmap_figure,
)
from webapp.views.scan.form import form_fields, params_from_form  # noqa: F401
from webapp.views.scan.page import render, summary_rows  # noqa: F401
