"""The ``sae`` run: harvest an SAE's latents over a corpus, then decoder geometry and logit effects.

``run_sae(params, lm, progress, *, runs=None, sae_loader=None)`` is pure (no DB, broker
or web object): the SAE comes from ``sae_loader(source, device)`` when given (tests,
notebooks), else ``source.load_sae`` (an SAE of a ``sae_train`` run is resolved through
``runs.sae_dir(run_id)`` when the worker's stored-runs reader offers it).

Result arrays (the contract with the views; d = d_sae, K = top_k, W is read from the
token arrays with ``summary["window"]``, E = edges_k): ``fire_count``, ``density``,
``max_act``, ``mean_act``; ``hist_edges``, ``hist_counts``; ``top_value``,
``top_token``; ``interval_value``, ``interval_token``; ``token_id``, ``token_doc``,
``token_pos``; ``lat_ptr``, ``lat_token``, ``lat_value`` (CSC, memory-mapped on
temporary files, streamed to the store); ``decoder``; ``umap``, ``cluster_spectral``,
``cluster_components``; ``edge_{cosine,jaccard,coact}_{idx,val}``;
``logit_{top,bottom}_{id,val}``. Shapes and dtypes are the views' contract, checked
name by name in tests/unit/sae/test_run.py. Invariant: the model never
runs past the hooked point (``activations.activations_at``; tested by counting calls of
the later blocks).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.sae.decoder_geometry import (
    component_clusters,
    cosine_edges,
    decoder_umap,
    default_n_clusters,
    spectral_clusters,
)
from latent_atlas.analyses.sae.harvest import (
    OUTLIER_FACTOR,
    CscWriter,
    HarvestTokens,
    corpus_sequences,
    harvest,
    windows_needed,
)
from latent_atlas.analyses.sae.logit_effects import latent_labels, logit_effects
from latent_atlas.analyses.sae.params import SaeParams
from latent_atlas.analyses.sae.reducers import HarvestReducers

__all__ = ["cofire_computed", "describe_harvest", "load_checked_sae", "load_corpus", "make_reducers", "run_sae"]


def load_corpus(params: SaeParams, tokenizer: Any) -> tuple[list[list[int]], str]:
    """The run's token sequences and the corpus note (``harvest.corpus_sequences``)."""
    from latent_atlas.analyses.corpus import read_corpus, sample_sequences

    corpus = params.corpus
    if corpus.kind == "prompts":
        ids = tokenizer(list(corpus.prompts))["input_ids"]
        return corpus_sequences(ids, params.n_tokens, params.context_len, f"{len(ids):,} prompts")
    if corpus.kind == "tokens":
        return corpus_sequences(corpus.token_ids, params.n_tokens, params.context_len, corpus.info.source)
    if corpus.kind == "hub":
        from latent_atlas.analyses.hub_corpus import HubDataset, read_hub_dataset

        dataset = HubDataset(corpus.dataset, corpus.config, corpus.split, corpus.text_field)
        documents, source = read_hub_dataset(dataset), dataset.source
    else:
        from latent_atlas.analyses.sae.corpus_demo import demo_corpus_path
        from latent_atlas.settings import get_settings

        path = demo_corpus_path(get_settings().data_dir)
        if not path.is_file():
            raise ValueError(f"the demo corpus is not on this worker ({path}); `make up` fetches it")
        documents = read_corpus(path.name, path.read_bytes(), "jsonl")
        source = "the demo corpus (Debian fortunes + Python docs)"
    sample = sample_sequences(tokenizer, documents, windows_needed(params.n_tokens, params.context_len),
                              params.context_len, params.seed)
    return corpus_sequences(sample.token_ids, params.n_tokens, params.context_len, source)


def _default_loader(runs: Any) -> Any:
    from latent_atlas.analyses.sae.source import load_sae

    resolver = getattr(runs, "sae_dir", None) if runs is not None else None

    def load(source: Any, device: Any) -> Any:
        return load_sae(source, device, run_dir_resolver=resolver)

    return load


def load_checked_sae(params: SaeParams, lm: Any, *, runs: Any = None,
                     sae_loader: Any = None) -> tuple[Any, Any, np.ndarray]:
    """The run's SAE, its hook point and its decoder rows, checked against the model."""
    from latent_atlas.analyses.sae.source import check_sae_fits, decoder_rows, sae_hook

    sae = (sae_loader or _default_loader(runs))(params.sae, lm.device)
    hook = sae_hook(sae)
    check_sae_fits(int(sae.cfg.d_in), hook.layer, lm.d_model, lm.n_layers, model_name=params.model)
    rows = decoder_rows(sae)  # refuses SAEs whose decode is not "activations x rows + bias"
    return sae, hook, rows


def cofire_computed(params: SaeParams, d_sae: int) -> bool:
    """Whether the run counts co-firing (asked, and the SAE is narrow enough)."""
    from latent_atlas.analyses.sae.cofire import MAX_COFIRE_LATENTS

    return params.cofire and d_sae <= MAX_COFIRE_LATENTS


def make_reducers(params: SaeParams, d_sae: int, sae: Any) -> HarvestReducers:
    """The run's reducers: on the SAE's device off the CPU, numpy on a CPU."""
    cofire = cofire_computed(params, d_sae)
    sae_device = next(sae.parameters()).device
    # off the CPU, top-k / histogram / stats / co-firing reduce where the activations are;
    # on a CPU the numpy reducers are faster (bench/sae.py --sections throughput)
    return HarvestReducers(d_sae, top_k=params.top_k, interval_bins=params.interval_bins,
                           interval_per_bin=params.interval_per_bin, hist_bins=params.hist_bins,
                           seed=params.seed, cofire=cofire,
                           device=None if sae_device.type == "cpu" else sae_device)


def run_sae(params: SaeParams, lm: Any, progress: Progress = no_progress, *, runs: Any = None,
            sae_loader: Any = None) -> Result:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress(0.0, "loading the SAE")
    sae, hook, rows = load_checked_sae(params, lm, runs=runs, sae_loader=sae_loader)
    d_sae = int(sae.cfg.d_sae)
    timings["load_sae_s"] = time.perf_counter() - started

    started = time.perf_counter()
    progress(0.01, "reading the corpus")
    sequences, note = load_corpus(params, lm.tokenizer)
    timings["corpus_s"] = time.perf_counter() - started

    started = time.perf_counter()
    reducers = make_reducers(params, d_sae, sae)
    sae_device = next(sae.parameters()).device
    reducers_on = "host (numpy)" if sae_device.type == "cpu" else f"{sae_device} (torch) + host"
    csc = CscWriter(d_sae)
    tokens = harvest(lm, sae, hook, sequences, reducers, batch_tokens=params.batch_tokens,
                     skip_positions=params.skip_positions, progress=progress, csc=csc,
                     progress_span=(0.02, 0.8), outlier_factor=OUTLIER_FACTOR if params.drop_outliers else 0.0)
    timings["harvest_s"] = time.perf_counter() - started
    started = time.perf_counter()
    progress(0.8, "sorting the sparse activations by latent")
    lat_ptr, lat_token, lat_value = csc.finish()
    cofire = cofire_computed(params, d_sae)
    arrays = reducers.result(params.edges_k)
    timings["reduce_s"] = time.perf_counter() - started
    return describe_harvest(params, lm, sae, hook, rows, arrays, tokens,
                            (lat_ptr, lat_token, lat_value), n_encoded=int(reducers.stats.n_tokens),
                            sequences=len(sequences), note=note, reducers_on=reducers_on, cofire=cofire,
                            timings=timings, progress=progress)


def describe_harvest(params: SaeParams, lm: Any, sae: Any, hook: Any, rows: np.ndarray,
                     arrays: dict[str, np.ndarray], tokens: HarvestTokens,
                     csc: tuple[np.ndarray, np.ndarray, np.ndarray], *, n_encoded: int, sequences: int,
                     note: str, reducers_on: str, cofire: bool, timings: dict[str, float],
                     progress: Progress) -> Result:
    """Decoder geometry, logit effects and labels on top of a harvest: the run's ``Result``.

    ``arrays``: ``HarvestReducers.result``; ``csc``: ``(lat_ptr, lat_token, lat_value)``.
    """
    from latent_atlas.analyses.sae.cofire import MAX_COFIRE_LATENTS

    lat_ptr, lat_token, lat_value = csc
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    started = time.perf_counter()
    progress(0.85, "decoder geometry: neighbours and clusters")
    edge_idx, edge_val = cosine_edges(rows, params.edges_k)
    n_clusters = params.n_clusters or default_n_clusters(d_sae)
    n_clusters = min(n_clusters, max(2, d_sae - 1))
    spectral, affinity = spectral_clusters(rows, n_clusters, params.seed)
    components = component_clusters(edge_idx, edge_val)
    progress(0.9, "decoder geometry: UMAP")
    umap = decoder_umap(rows, params.seed, n_neighbors=params.umap_neighbors)
    timings["geometry_s"] = time.perf_counter() - started

    started = time.perf_counter()
    progress(0.97, "logit effects")
    unembedding = lm.adapter.unembedding_of(lm.model).weight
    logits = logit_effects(rows, unembedding)
    timings["logits_s"] = time.perf_counter() - started

    tokenizer = lm.tokenizer
    labels = latent_labels(arrays["top_token"], tokens.token_id, logits["logit_top_id"],
                           lambda t: tokenizer.decode([t]))
    ids = np.unique(np.concatenate([tokens.token_id.astype(np.int64), logits["logit_top_id"].ravel(),
                                    logits["logit_bottom_id"].ravel()]))
    vocab = {str(int(t)): s for t, s in zip(ids, tokenizer.batch_decode([[int(t)] for t in ids]), strict=True)}
    arrays.update(logits)
    arrays.update({
        "token_id": tokens.token_id, "token_doc": tokens.token_doc, "token_pos": tokens.token_pos,
        "lat_ptr": lat_ptr, "lat_token": lat_token, "lat_value": lat_value,
        "decoder": rows, "umap": umap, "cluster_spectral": spectral, "cluster_components": components,
        "edge_cosine_idx": edge_idx, "edge_cosine_val": edge_val,
    })
    summary: dict[str, Any] = {
        "d_sae": d_sae, "d_in": d_in, "hook_layer": hook.layer, "hook_name": hook.name,
        "hook_point": hook.point, "architecture": str(sae.cfg.architecture()),
        "n_tokens": int(tokens.token_id.size), "tokens_requested": params.n_tokens,
        "tokens_encoded": n_encoded, "sequences": sequences,
        "outliers_dropped": tokens.outliers_dropped,
        "outlier_rule": (f"rows with a norm over {OUTLIER_FACTOR:g}x their batch's median left out of the encoding"
                         if params.drop_outliers else "none left out"),
        "reducers_on": reducers_on,
        "corpus_note": note, "window": params.window, "top_k": params.top_k,
        "interval_bins": params.interval_bins, "interval_per_bin": params.interval_per_bin,
        "edges_k": params.edges_k, "n_clusters": n_clusters, "spectral_affinity": affinity,
        "cofire": "exact on the harvested tokens" if cofire else
                  f"not computed ({d_sae:,} latents; the limit is {MAX_COFIRE_LATENTS:,})",
        "mean_l0": float(lat_token.size / max(1, n_encoded)),
        "dead_fraction": float(np.mean(arrays["fire_count"] == 0)),
        "labels": labels, "vocab": vocab, "sae": params.sae.describe(),
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    return Result(arrays=arrays, summary=summary)
