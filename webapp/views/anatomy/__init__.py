"""The anatomy run kind in the portal: ``data`` (loading, row reads, index checks), ``form``
(the New-run form), ``parts`` (component builders) and ``page`` (layout and callbacks;
importing the package registers them). Figures are shared with the notebook:
``latent_atlas.analyses.anatomy.figures``.
"""

from webapp.views.anatomy.data import ARRAYS, check_index, head_pattern, parse_query, rollout_layer  # noqa: F401
from webapp.views.anatomy.form import form_fields, params_from_form  # noqa: F401
from webapp.views.anatomy.page import render  # noqa: F401
