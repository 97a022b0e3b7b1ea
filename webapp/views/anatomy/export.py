"""The static export of an anatomy run: one self-contained HTML file per view plus an index, zipped.

The attention views are the head being shown (``layer``, ``head``) and the
rollout through that layer, each read alone from the stored tensor, plus the
thumbnail sheet of every head; every figure comes from
``latent_atlas.analyses.anatomy.figures`` (the page's own), so the export
draws what the page draws.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from latent_atlas.analyses.anatomy import figures as af
from webapp.views.anatomy.data import AnatomyData, head_pattern, rollout_layer

__all__ = ["export_figures", "html_bundle_zip"]


def export_figures(data: AnatomyData, layer: int, head: int) -> list[tuple[str, str, str, Any]]:
    """(slug, title, description, figure) of every static view."""
    a, s, tokens = data.arrays, data.summary, data.tokens
    emb = s.get("embedding") or {}
    strings = [data.vocab(int(i)) for i in a["embed_ids"]]
    rows = int(emb.get("prompt_rows") or 0)
    views = [
        ("architecture", "Architecture", "Parameters per block; hover shows shapes.",
         af.architecture_figure(s.get("diagram") or [])),
        ("residual-norm", "Residual norm", "L2 norm of the residual after each block, per token.",
         af.layer_token_heatmap(a["resid_norm"], tokens, "Residual norm after each block")),
        ("mlp-activity", "MLP activity", "Norm of what each MLP adds to the residual, per token.",
         af.layer_token_heatmap(a["mlp_norm"], tokens, "MLP activity (output norm)")),
        ("attention-head", f"Attention, layer {layer}, head {head}", "Rows are queries, columns keys.",
         af.attention_figure(head_pattern(data, layer, head), tokens, f"Attention, layer {layer}, head {head}")),
        ("attention-heads", "Every layer × head", "Pooled thumbnails, each scaled to its own maximum.",
         af.thumbnail_sheet(a["attention_thumbs"], data.n_layers, data.n_heads)),
        ("rollout", f"Attention rollout through block {layer}", "Head-mean attention plus the residual, "
         "multiplied through the layers.",
         af.attention_figure(rollout_layer(data, layer), tokens, f"Attention rollout through block {layer}")),
        ("embeddings-2d", "Token embeddings (2D)", "The prompt's tokens among a vocabulary sample.",
         af.embedding_figure(a["embed_2d"], strings, rows, "Token embeddings (2D)")),
        ("embeddings-3d", "Token embeddings (3D)", "The prompt's tokens among a vocabulary sample.",
         af.embedding_figure(a["embed_3d"], strings, rows, "Token embeddings (3D)")),
        ("saliency", "Saliency: gradient × input", "Per input token, for the target next token.",
         af.saliency_figure(a["saliency_grad_input"], tokens, "Saliency: gradient × input")),
        ("logit-lens", "Logit lens", "Top token per point and position (the positions the run decoded, "
         "at most the last 64).",
         af.lens_figure(a["lens_ids"], a["lens_probs"], s.get("lens_labels") or [], tokens,
                        {str(int(i)): data.vocab(int(i)) for i in np.unique(a["lens_ids"][:, -64:]) if i >= 0},
                        max(0, len(tokens) - 64, int(s.get("lens_decoded_from") or 0)))),
        ("logit-lens-last", "Logit lens at the last position", "Probability of the final prediction, "
         "entropy and KL to the final distribution per point.",
         af.lens_last_figure(s.get("lens_labels") or [], a["lens_final_prob"], a["lens_entropy"], a["lens_kl"])),
    ]
    if "saliency_ig" in a:
        views.insert(9, ("saliency-ig", "Saliency: integrated gradients", "Per input token.",
                         af.saliency_figure(a["saliency_ig"], tokens, "Saliency: integrated gradients")))
    return views


def html_bundle_zip(data: AnatomyData, layer: int, head: int) -> bytes:
    """The static export (one HTML file per view + index) as a zip, in memory."""
    from webapp.render import write_bundle

    with tempfile.TemporaryDirectory() as tmp:
        files = write_bundle(export_figures(data, layer, head), Path(tmp), title=f"Latent Atlas run {data.run_id}",
                             subtitle=f"run {data.run_id} · anatomy · {len(data.tokens)} tokens", png=False)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"latent-atlas-{data.run_id}/{path.name}")
        return buffer.getvalue()
