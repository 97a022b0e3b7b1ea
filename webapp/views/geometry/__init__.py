"""The geometry run kind in the portal (also the view of ``geometry_reproject`` runs).

One module per concern: ``form`` (the New-run form), ``figure_base`` and
``figures`` (pure figure functions), ``page`` (the run page's layout),
``details`` (the details panel and lens lookups), ``callbacks`` (linked
selection, redraw, decode, re-project, download), ``export`` (the static HTML
bundle) and ``lens`` (the view of ``geometry_lens`` child runs). Importing the
package registers the callbacks. The names below are the view-module
interface (``webapp.views``) plus what callers outside the package use.
"""

from webapp.views.geometry import callbacks  # noqa: F401  registers the run page's callbacks
from webapp.views.geometry.form import KIND, form_fields, params_from_form, parse_prompts
from webapp.views.geometry.page import (
    ARRAYS,
    FIGURES,
    POINT_DETAILS_ID,
    export_figures,
    point_details,
    render,
    summary_rows,
)

__all__ = ["ARRAYS", "FIGURES", "KIND", "POINT_DETAILS_ID", "export_figures", "form_fields",
           "params_from_form", "parse_prompts", "point_details", "render", "summary_rows"]
