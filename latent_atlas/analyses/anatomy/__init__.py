"""Run kind 5, ``anatomy``: model summary, activations, attention, embeddings, saliency, logit lens.

One module per concern: ``params`` (the pydantic model), ``summary`` (config
fields, parameters per module on the meta device, the diagram parts),
``forward`` (one traced eager forward + backward), ``attention`` (stored
patterns, thumbnails, rollout), ``activations`` (norms, top MLP neurons),
``embeddings`` (projection, neighbours), ``saliency`` (gradients, integrated
gradients), ``lens`` (logit lens per point and position), ``run``
(``run_anatomy``) and ``figures`` (Plotly figures, no web stack; the notebook
and the portal's view both draw with them).
"""

from latent_atlas.analyses.anatomy.params import (
           DEFAULT_PROMPT,
           MAX_IG_STEPS,
           MAX_TOKENS,
           AnatomyParams,
)
from latent_atlas.analyses.anatomy.run import one_token, prompt_ids, run_anatomy
from latent_atlas.analyses.anatomy.summary import config_fields, diagram, parameter_tree

__all__ = ["AnatomyParams", "DEFAULT_PROMPT", "MAX_IG_STEPS", "MAX_TOKENS", "config_fields", "diagram",
           "one_token", "parameter_tree", "prompt_ids", "run_anatomy"]
