"""Run kind 2, ``grid``: token maps of a layer.

One module per concern: ``params`` (the pydantic model), ``planes`` (the
plane maths), ``states`` (real states at a layer, the plane a run asks for),
``streaming`` (cells in batches, CPU workers, output arrays), ``topk``
(top-k and entropy of logits), ``fast_path`` (the exact low-rank path at the
last layer) and ``run`` (``run_grid``, the summary). The names below are the
kind's public interface.
"""

from latent_atlas.analyses.grid.params import DEFAULT_PROMPTS, GridParams, PlaneKind, StateRef
from latent_atlas.analyses.grid.run import run_grid
from latent_atlas.analyses.grid.states import states_at_layer
from latent_atlas.analyses.grid.topk import reduce_logits, topk_rows

__all__ = ["DEFAULT_PROMPTS", "GridParams", "PlaneKind", "StateRef", "reduce_logits", "run_grid",
           "states_at_layer", "topk_rows"]
