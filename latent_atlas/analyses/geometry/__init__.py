"""Run kind 1, ``geometry``, and its children (``geometry_reproject``, ``geometry_lens``).

One module per concern: ``params`` (the pydantic model and layer checks),
``run`` (capture, store, reduce), ``points`` (reduction of stored states and
the statistics), ``stats`` (separability, position-0 norms), ``reproject`` and
``lens`` (the child kinds that read a stored run), ``findings`` (the demo
model's findings). The names below are the kind's public interface.
"""

from latent_atlas.analyses.geometry.params import (
    Average,
    Component,
    CorpusInfo,
    GeometryParams,
    Reduction,
    check_layers,
)
from latent_atlas.analyses.geometry.run import LENS_K, run_geometry

__all__ = ["LENS_K", "Average", "Component", "CorpusInfo", "GeometryParams", "Reduction",
           "check_layers", "run_geometry"]
