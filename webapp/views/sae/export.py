"""Static exports of an ``sae`` run: Plotly figures for ``latent-atlas render`` (``webapp.render``).

``export_figures(data)`` gives ``(slug, title, description, figure)`` tuples:
the UMAP coloured by spectral cluster and by density, the similarity graph of
every latent (cosine edges, top-3; skipped above ``graph.ALL`` nodes), the
cluster point cloud of the largest top-2-neighbour component (the densest
latent's spectral cluster when there is none) in 3D, and the densest latents'
activation histograms. Every figure is built by the same pure functions the
page uses, so the static files show what the portal shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from webapp.views.sae import graph as sg
from webapp.views.sae.cloud_state import new_cloud
from webapp.views.sae.data import SaeData
from webapp.views.sae.figures import cloud_figure, graph_figure, histogram_figure, umap_figure

STATIC_GRAPH_LIMIT = 20_000
STATIC_CLOUD_LATENTS = 64
STATIC_CLOUD_POINTS = 20_000


def cloud_latents(data: SaeData) -> tuple[list[int], str]:
    """The latents of the exported cloud and a line saying which cluster they are."""
    components = data.small["cluster_components"]
    valid = components[components >= 0]
    if valid.size:
        ids, counts = np.unique(valid, return_counts=True)
        best = int(ids[np.argmax(counts)])
        members = np.flatnonzero(components == best)[:STATIC_CLOUD_LATENTS].tolist()
        return members, f"the largest top-2-neighbour component ({best}, {len(members)} latents)"
    densest = int(np.argmax(data.small["density"]))
    members = data.cluster_members(densest)[:STATIC_CLOUD_LATENTS]
    return members, f"the spectral cluster of the densest latent {densest} ({len(members)} latents)"


def export_figures(data: SaeData) -> list[tuple[str, str, str, Any]]:
    views: list[tuple[str, str, str, Any]] = []
    umap = data.small["umap"]
    views.append(("umap-clusters", "UMAP of decoder directions (spectral clusters)",
                  "Every latent at its UMAP position (cosine of decoder rows), coloured by spectral cluster.",
                  umap_figure(umap, data.labels, colour="cluster", clusters=data.small["cluster_spectral"],
                              height=800)))
    views.append(("umap-density", "UMAP of decoder directions (density)",
                  "The same map coloured by log10 firing density.",
                  umap_figure(umap, data.labels, colour="density", density=data.small["density"], height=800)))
    if data.d_sae <= STATIC_GRAPH_LIMIT:
        idx, val = data.edges("cosine")
        k = min(3, idx.shape[1])
        sub = sg.everything(umap, idx, val, k, None)
        views.append(("graph-cosine", "Similarity graph (decoder cosine)",
                      f"Every latent at its UMAP position with its top-{k} cosine edges; colour is the spectral "
                      "cluster.",
                      graph_figure(sub.nodes, sub.xy, sub.edges, data.labels,
                                   node_colour=data.small["cluster_spectral"], height=800)))
    latents, which = cloud_latents(data)
    cloud = new_cloud(data)
    for j in latents:
        cloud.add(j)
    projection = cloud.project(3)
    shown = np.arange(len(projection.tokens))
    if len(shown) > STATIC_CLOUD_POINTS:
        shown = np.linspace(0, len(shown) - 1, STATIC_CLOUD_POINTS).astype(np.int64)
    tokens = projection.tokens[shown]
    token_id = data.token_arrays()["token_id"]
    hover = [f"{data.token_text(int(token_id[t]))} · latent {int(d)}"
             for t, d in zip(tokens, projection.dominant[shown], strict=True)]
    views.append(("cluster-cloud", "Cluster point cloud",
                  f"Every token where a latent of {which} fired, reconstructed from those latents alone and "
                  "projected by PCA (3D); colour is the latent with the largest activation.",
                  cloud_figure(projection.coords[shown], projection.explained,
                               colour_values=projection.dominant[shown], colour_title="latent",
                               hover=hover, tokens=tokens, discrete=True)))
    densest = np.argsort(-data.small["density"], kind="stable")[:4]
    counts = data.rows("hist_counts", densest)
    figure = go.Figure()
    for j, row in zip(densest, counts, strict=True):
        bar = histogram_figure(data.small["hist_edges"], row)["data"][0]
        bar.update(name=f"latent {int(j)}", opacity=0.6, marker={})
        figure.add_trace(go.Bar({k: v for k, v in bar.items() if k != "type"}))
    figure.update_layout(barmode="overlay", xaxis={"type": "log", "title": "activation"},
                         yaxis={"title": "tokens"}, showlegend=True, height=600)
    views.append(("histograms", "Activation histograms of the densest latents",
                  "Non-zero activations over the run's shared log-spaced bins.", figure))
    return views


def bundle_subtitle(run_id: str, data: SaeData) -> str:
    s = data.summary
    return (f"run {run_id} · SAE harvest · {data.d_sae:,} latents · {data.n_tokens:,} tokens · "
            f"hook layer {s.get('hook_layer', '?')}")
