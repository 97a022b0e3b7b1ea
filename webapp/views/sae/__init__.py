"""The ``sae`` run kind in the portal: four linked views of a harvest, its form and its exports.

One module per concern: ``data`` (``SaeData``: what the views read, row by
row, and ``parse_latent``), ``figures`` (pure Plotly figures), ``browser``
(the latent browser's components), ``graph`` (the similarity graph's scopes),
``cloud_state`` (server-side incremental clouds per tab), ``page`` (layout),
``callbacks`` (importing the package registers them), ``form`` (the New-run
form), ``export`` (per-latent JSON, static HTML figures) and ``api`` (the
``/api/runs/<id>/latents/<n>.json`` route).
"""

from webapp.views.sae import callbacks  # noqa: F401  registers the run page's callbacks
from webapp.views.sae.data import (
           KIND,
           LatentError,
           SaeData,
           latent_document,
           load_sae_data,
           parse_latent,
)
from webapp.views.sae.form import form_fields, params_from_form
from webapp.views.sae.page import ARRAYS, render

__all__ = ["ARRAYS", "KIND", "LatentError", "SaeData", "form_fields", "latent_document", "load_sae_data",
           "params_from_form", "parse_latent", "render"]
