"""The sae_train run kind in the portal: the New-run form (``form``), the run page (``page``)
and the SAE download route (``api``, registered by ``webapp.api``)."""

from webapp.views.sae_train.form import form_fields, params_from_form, save_upload  # noqa: F401
from webapp.views.sae_train.page import ARRAYS, loss_figure, render, summary_rows  # noqa: F401
