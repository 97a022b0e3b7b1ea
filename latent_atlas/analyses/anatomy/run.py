"""Run kind 5, ``anatomy``: the run. One prompt, every view of the model's anatomy.

``run_anatomy(params, lm, progress)`` tokenises the prompt (the portal's
budget checked again here), traces one eager forward + backward
(``forward.trace``), then derives each view. Arrays (T tokens, L layers, H
query heads, P lens points, k neurons, N projected ids, D distinct prompt ids):

* ``token_ids`` (T,) int32;
* ``attention`` (L*H, T, T) float16, row ``layer * H + head``;
  ``attention_thumbs`` (L*H, s, s) uint8; ``rollout`` (L, T, T) float16;
* ``resid_norm``, ``attn_norm``, ``mlp_norm`` (L, T) float32;
  ``neuron_ids`` (L, T, k) int32, ``neuron_values`` (L, T, k) float32;
* ``embed_ids`` (N,) int32, ``embed_2d`` (N, 2), ``embed_3d`` (N, 3) float32;
  ``neighbour_ids`` (D, n) int32 and ``neighbour_cos`` (D, n) float32 for
  ``embed_ids[:D]``;
* ``saliency_grad_norm``, ``saliency_grad_input`` (T,) float32, and
  ``saliency_ig`` (T,) when ``ig_steps > 0``;
* ``lens_ids`` (P, T) int32, ``lens_probs`` (P, T) float32, decoded at the
  positions ``summary["lens_decoded_from"]`` .. T-1 (-1 and NaN before); ``lens_final_prob``,
  ``lens_entropy``, ``lens_kl`` (P,) float32, ``lens_final_rank`` (P,) int32.

The summary holds token strings (``tokens``: the prompt's, one per position;
``vocab``: id -> string for every other id an array names), the config fields,
the parameter tree, the diagram parts, the saliency target/foil/score and the
integrated-gradients completeness, and the seconds per stage. Bounds that need
the tokenizer are checked before any model work with a clear ``ValueError``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from latent_atlas.analyses.anatomy import activations, attention
from latent_atlas.analyses.anatomy.embeddings import embedding_view, nearest_tokens
from latent_atlas.analyses.anatomy.forward import trace
from latent_atlas.analyses.anatomy.lens import lens_points, lens_table
from latent_atlas.analyses.anatomy.params import AnatomyParams
from latent_atlas.analyses.anatomy.saliency import gradient_scores, integrated_gradients
from latent_atlas.analyses.anatomy.summary import config_fields, diagram, parameter_tree
from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.lm.loading import LanguageModel

__all__ = ["one_token", "prompt_ids", "run_anatomy"]


def prompt_ids(lm: LanguageModel, prompt: str, max_tokens: int) -> list[int]:
    """The prompt's token ids as the run uses them; ``ValueError`` when empty or over budget."""
    ids = [int(i) for i in lm.tokenizer(prompt)["input_ids"]]
    if not ids:
        raise ValueError("the prompt has no tokens")
    if len(ids) > max_tokens:
        raise ValueError(f"the prompt has {len(ids)} tokens; the limit is {max_tokens} (max_tokens)")
    return ids


def one_token(lm: LanguageModel, text: str, field: str) -> int:
    """The id of ``text`` when it is exactly one token (no special tokens added)."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{field} must be exactly one token of the model's vocabulary; it is {len(ids)} tokens")
    return int(ids[0])


def _decode(lm: LanguageModel, ids: Any) -> dict[str, str]:
    unique = sorted({int(i) for i in np.asarray(ids).ravel() if i >= 0})  # -1: not decoded
    return {str(i): s for i, s in zip(unique, lm.tokenizer.batch_decode([[i] for i in unique]), strict=True)}


def run_anatomy(params: AnatomyParams, lm: LanguageModel, progress: Progress = no_progress) -> Result:
    """Compute every anatomy view of ``params.prompt``; see the module docstring."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 4)
        clock = now

    ids = prompt_ids(lm, params.prompt, params.max_tokens)
    target = None if params.target is None else one_token(lm, params.target, "target")
    foil = None if params.foil is None else one_token(lm, params.foil, "foil")
    if foil is not None and foil == target:
        raise ValueError("the foil must differ from the target")
    config = lm.model.config
    progress(0.0, "model summary (meta device)")
    tree = parameter_tree(config)
    parts = diagram(tree, config, lm.adapter)
    lap("summary")

    progress(0.05, f"forward and backward over {len(ids)} tokens")
    tr = trace(lm, ids, target, foil)
    lap("forward_backward")

    progress(0.3, "attention patterns")
    heads = int(tr.attentions[0].shape[0])
    arrays: dict[str, np.ndarray] = {
        "token_ids": np.asarray(ids, dtype=np.int32),
        "attention": attention.pack_patterns(tr.attentions),
        "attention_thumbs": attention.thumbnails(tr.attentions),
        "rollout": attention.rollout(tr.attentions),
    }
    del tr.attentions[:]
    lap("attention")

    progress(0.4, "token activations")
    neuron_ids, neuron_values = activations.top_neurons(tr.neurons, params.top_neurons)
    arrays.update({
        "resid_norm": activations.norms(tr.resid_post),
        "attn_norm": activations.norms(tr.attn_out),
        "mlp_norm": activations.norms(tr.mlp_out),
        "neuron_ids": neuron_ids,
        "neuron_values": neuron_values,
    })
    lap("activations")

    progress(0.5, "logit lens")
    labels, states = lens_points(tr.block_input, tr.resid_mid, tr.resid_post, params.sublayer_lens)
    table = lens_table(lm, labels, states, params.lens_positions)
    del states
    arrays.update({"lens_ids": table.top_ids, "lens_probs": table.top_probs,
                   "lens_final_prob": table.final_prob, "lens_final_rank": table.final_rank,
                   "lens_entropy": table.entropy, "lens_kl": table.kl})
    lap("logit_lens")

    progress(0.6, f"token embeddings ({params.projection})")
    weight = lm.adapter.token_embedding_of(lm.model).weight
    view = embedding_view(weight, ids, params.vocab_sample, params.seed, params.projection)
    neighbour_ids, neighbour_cos = nearest_tokens(weight, [int(i) for i in view.ids[:view.prompt_rows]],
                                                  params.neighbours)
    arrays.update({"embed_ids": view.ids, "embed_2d": view.coords2, "embed_3d": view.coords3,
                   "neighbour_ids": neighbour_ids, "neighbour_cos": neighbour_cos})
    lap("embeddings")

    grad_norm, grad_input = gradient_scores(tr.embeddings, tr.gradient)
    arrays.update({"saliency_grad_norm": grad_norm, "saliency_grad_input": grad_input})
    saliency: dict[str, Any] = {"target": tr.target, "foil": tr.foil, "score": tr.score,
                                "predicted": int(tr.logits[-1].argmax())}
    if params.ig_steps > 0:
        def ig_progress(done: int) -> None:
            progress(0.7 + 0.3 * done / params.ig_steps, f"integrated gradients {done}/{params.ig_steps}")

        progress(0.7, f"integrated gradients 0/{params.ig_steps}")
        ig = integrated_gradients(lm, ids, tr.target, tr.foil, params.ig_steps, params.ig_batch,
                                  params.ig_baseline, ig_progress, keep_first=params.ig_keep_first)
        arrays["saliency_ig"] = ig.attributions
        saliency.update({"ig_steps": ig.steps, "ig_baseline": params.ig_baseline,
                         "ig_keep_first": params.ig_keep_first, "ig_score": ig.score, "ig_baseline_score": ig.baseline_score,
                         "ig_sum": float(ig.attributions.sum()),
                         "ig_completeness_error": ig.completeness_error})
    lap("saliency")

    named = [arrays["lens_ids"], arrays["embed_ids"],
             arrays["neighbour_ids"], np.array([tr.target, saliency["predicted"], table.final_id]
                                               + ([tr.foil] if tr.foil is not None else []))]
    vocab: dict[str, str] = {}
    for group in named:
        vocab.update(_decode(lm, group))
    fields = config_fields(config)
    summary: dict[str, Any] = {
        "prompt_tokens": len(ids),
        "tokens": lm.tokenizer.batch_decode([[i] for i in ids]),
        "n_layers": lm.n_layers,
        "n_heads": heads,
        "n_kv_heads": int(fields.get("key/value heads") or heads),
        "config": fields,
        "parameters": tree,
        "diagram": parts,
        "lens_labels": labels,
        "lens_final_id": table.final_id,
        "lens_decoded_from": table.decoded_from,
        "embedding": {"projection": params.projection, "prompt_rows": view.prompt_rows,
                      "explained_variance_ratio": view.explained, "sample": int(view.ids.size - view.prompt_rows)},
        "saliency": saliency,
        "top_neurons": int(neuron_ids.shape[-1]),
        "vocab": vocab,
        "seconds": seconds,
    }
    progress(1.0, "done")
    return Result(arrays=arrays, summary=summary)
