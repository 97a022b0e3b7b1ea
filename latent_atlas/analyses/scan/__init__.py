"""Run kind 4, ``scan``: layer-time. Every token's state through the layers in one shared 3-D space.

One prompt (``single``) or two (``diff``: A and B) run through the model in one
forward pass; the states of every frame (the embeddings and the residual after
each block, or the four points of every block) are projected by ONE basis
fitted once over all frames and both prompts (PCA, or UMAP), so the frames of
the animation share their axes. A PCA basis (mean + components) is stored with
the run and can be reused by later runs ("project into the space of run X":
``basis_run``), also runs of other prompts and other users, as long as they use
the same model; a UMAP embedding cannot be reused (its fitted model would have
to be pickled), and a basis run with UMAP is refused before queueing.

In ``diff`` mode the run also stores, per frame, the cosine distance of the
last tokens' states, the mean cosine distance over aligned positions, the
logit-lens KL and JS divergence of the last tokens' next-token distributions,
``1 - linear CKA`` over aligned positions, a positions x frames heatmap, and the
first frame where the chosen metric crosses the threshold.

Modules: ``params`` (``ScanParams`` and the pre-queue checks), ``basis`` (the
projection), ``diff`` (the divergence maths, pure numpy) and ``run``
(``run_scan``; the arrays and summary contract is in its docstring).
"""

from latent_atlas.analyses.scan.basis import Basis, fit_pca
from latent_atlas.analyses.scan.diff import DIVERGENCE_FIELDS, divergence
from latent_atlas.analyses.scan.params import DIVERGENCE_METRICS, ScanParams, check_basis_run
from latent_atlas.analyses.scan.run import capture_frames, frame_labels, run_scan

__all__ = ["DIVERGENCE_FIELDS", "DIVERGENCE_METRICS", "Basis", "ScanParams", "capture_frames",
           "check_basis_run", "divergence", "fit_pca", "frame_labels", "run_scan"]
