"""The paper's finding (Engels et al. 2024): a circular feature is recovered by the harvest pipeline.

Offline: a planted circular feature. Tokens 0..N-1 of a small vocabulary sit on a circle in a
2-D subspace around a shared direction (as weekday tokens do in GPT-2); a real sae-lens SAE has
``N_CIRCLE`` latents that tile that circle (decoder rows on it, encoder columns the same
directions with a threshold, so the one or two nearest latents fire) plus random latents
elsewhere. The harvest (``harvest.harvest`` with the residual given by a lookup table of the
token, in place of a model's forward), the reducers, the CSC, the decoder geometry and
clusters, and the cluster cloud (``cloud.ClusterCloud`` from the CSC) must recover the circle.

With the hub: GPT-2 small and ``gpt2-small-res-jb`` at layer 7, the weekday cluster's cloud is a
circle in week order (skipped offline; the code path is the real one).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from latent_atlas.analyses.sae.cloud import ClusterCloud, latent_slice
from latent_atlas.analyses.sae.decoder_geometry import (
    component_clusters,
    cosine_edges,
    spectral_clusters,
)
from latent_atlas.analyses.sae.harvest import CscWriter, harvest
from latent_atlas.analyses.sae.reducers import HarvestReducers
from latent_atlas.analyses.sae.source import decoder_rows, sae_hook

D_IN, N_CIRCLE, N_OTHER, N_VOCAB = 64, 12, 52, 200
CIRCLE_TOKENS = 48  # token ids 0..47 lie on the circle, at angle 2 pi t / 48


def planted_model(seed: int = 0) -> tuple[StandardSAE, torch.Tensor]:
    rng = np.random.default_rng(seed)
    shared = np.zeros(D_IN)
    shared[2] = 1.0
    e1, e2 = np.eye(D_IN)[0], np.eye(D_IN)[1]
    theta = 2 * np.pi * np.arange(N_CIRCLE) / N_CIRCLE
    circle = shared + 0.6 * (np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2)
    other = rng.standard_normal((N_OTHER, D_IN))
    other[:, :3] = 0.0
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    rows = np.concatenate([circle, other])
    # the residual of each token: circle tokens on the circle (radius 0.6 around ``shared``), others random
    table = rng.standard_normal((N_VOCAB, D_IN)) * 0.3
    table[:, :3] = 0.0
    phi = 2 * np.pi * np.arange(CIRCLE_TOKENS) / CIRCLE_TOKENS
    table[:CIRCLE_TOKENS] = shared + 0.6 * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    table[:CIRCLE_TOKENS, 3:] += rng.standard_normal((CIRCLE_TOKENS, D_IN - 3)) * 0.01
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=N_CIRCLE + N_OTHER, apply_b_dec_to_input=False,
                                        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post")))
    with torch.no_grad():
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        sae.W_enc.copy_(torch.from_numpy(unit.T.astype(np.float32)))
        sae.W_dec.copy_(torch.from_numpy(rows.astype(np.float32)))
        sae.b_dec.zero_()
        # a circle latent fires on tokens within ~40 degrees of it; a random latent on tokens near it
        sae.b_enc.copy_(torch.from_numpy(np.r_[np.full(N_CIRCLE, -0.93), np.full(N_OTHER, -0.5)].astype(np.float32)))
    return sae.eval(), torch.from_numpy(table.astype(np.float32))


def test_planted_circle_is_recovered(tiny_gpt2) -> None:
    sae, table = planted_model()

    def lookup(lm, input_ids, attention_mask, hook):  # the residual at the hook, by token
        return table[input_ids]

    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, N_VOCAB, 32).tolist() for _ in range(60)]
    reducers = HarvestReducers(sae.cfg.d_sae, top_k=10, interval_bins=4, interval_per_bin=2,
                               hist_bins=16, seed=0)
    csc = CscWriter(sae.cfg.d_sae)
    tokens = harvest(tiny_gpt2, sae, sae_hook(sae), sequences, reducers, batch_tokens=256, skip_positions=0,
                     progress=lambda f, s: None, csc=csc, forward=lookup)
    ptr, lat_token, lat_value = csc.finish()
    arrays = reducers.result(edges_k=4)
    rows = decoder_rows(sae)
    circle = np.arange(N_CIRCLE)

    # every circle latent fires, only on circle tokens, and each one's top example is a token near it
    assert (arrays["fire_count"][circle] > 0).all()
    for lat in circle:
        toks = tokens.token_id[lat_token[ptr[lat]:ptr[lat + 1]]]
        assert (toks < CIRCLE_TOKENS).all()
        best = tokens.token_id[arrays["top_token"][lat, 0]]
        gap = abs((best * N_CIRCLE / CIRCLE_TOKENS - lat + N_CIRCLE / 2) % N_CIRCLE - N_CIRCLE / 2)
        assert gap <= 1.0, (lat, best)
    # co-firing: each circle latent's strongest Jaccard partner is a circle neighbour
    jac = arrays["edge_jaccard_idx"][circle, 0]
    assert (((jac - circle) % N_CIRCLE == 1) | ((circle - jac) % N_CIRCLE == 1)).all()

    # decoder geometry recovers the cluster, both ways Engels et al. form clusters
    idx, val = cosine_edges(rows, 4)
    components = component_clusters(idx, val)
    assert len(set(components[circle])) == 1 and components[0] >= 0
    assert (components[N_CIRCLE:] != components[0]).all()
    spectral, _ = spectral_clusters(rows, n_clusters=5, seed=0)
    members = np.flatnonzero(spectral == spectral[0])
    assert set(circle) <= set(members.tolist()) and members.size <= N_CIRCLE + 2

    # the cluster cloud of those latents, from the CSC, is a circle
    cloud = ClusterCloud(tokens.token_id.size, D_IN, lambda j: latent_slice(ptr, lat_token, lat_value, j),
                         lambda j: rows[j])
    for lat in members:
        cloud.add(int(lat))
    proj = cloud.project(2)
    assert proj.explained[:2].sum() > 0.9
    xy = proj.coords.astype(np.float64)
    radius = np.linalg.norm(xy - xy.mean(0), axis=1)
    assert radius.std() / radius.mean() < 0.2
    angles = np.arctan2(*(xy - xy.mean(0)).T[::-1])
    assert (np.histogram(angles, bins=8, range=(-np.pi, np.pi))[0] > 0).all()  # all the way round
    # in order: the angle of a token's point follows its place on the planted circle
    phi = 2 * np.pi * tokens.token_id[proj.tokens] / CIRCLE_TOKENS
    diff = np.angle(np.exp(1j * (angles - phi)))
    turned = np.angle(np.exp(1j * (angles + phi)))  # a mirror image is fine too
    assert min(np.std(np.exp(1j * diff)), np.std(np.exp(1j * turned))) < 0.3


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info("openai-community/gpt2", timeout=5)
        return True
    except Exception:  # noqa: BLE001 - any failure means offline here
        return False


WEEKDAYS = [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday", " Saturday", " Sunday"]


@pytest.mark.skipif(not _hub_reachable(), reason="needs the Hugging Face hub (GPT-2 and gpt2-small-res-jb)")
def test_gpt2_weekday_cluster_is_a_circle() -> None:
    from latent_atlas.analyses.sae.params import SaeParams
    from latent_atlas.analyses.sae.run import run_sae
    from latent_atlas.lm import load_model

    lm = load_model("openai-community/gpt2", name="gpt2")
    templates = ["See you on{d}.", "The meeting moved to{d} morning.", "Every{d} we go swimming.",
                 "It was a rainy{d} in March.", "Is the shop open on{d}?", "I was born on a{d}."]
    prompts = [t.format(d=d) for t in templates for d in WEEKDAYS] * 4
    params = SaeParams.model_validate({
        "model": "gpt2", "sae": {"kind": "pretrained", "release": "gpt2-small-res-jb",
                                 "sae_id": "blocks.7.hook_resid_pre"},
        "corpus": {"kind": "prompts", "prompts": prompts}, "n_tokens": 100_000, "context_len": 32,
        "skip_positions": 0, "cofire": False, "n_clusters": 1000})
    result = run_sae(params, lm)
    a = result.arrays
    ids = {lm.tokenizer.encode(d)[0]: i for i, d in enumerate(WEEKDAYS)}
    # the latents whose top examples are mostly weekday tokens, and their spectral cluster
    weekday_latents = [lat for lat in range(a["top_token"].shape[0])
                       if a["fire_count"][lat] >= 5
                       and np.mean([int(a["token_id"][t]) in ids for t in a["top_token"][lat] if t >= 0]) > 0.8]
    assert weekday_latents
    ptr, tok, val, rows = a["lat_ptr"], a["lat_token"], a["lat_value"], a["decoder"]
    cloud = ClusterCloud(a["token_id"].size, rows.shape[1], lambda j: latent_slice(ptr, tok, val, j),
                         lambda j: rows[j])
    for lat in weekday_latents:
        cloud.add(int(lat))
    proj = cloud.project(2)
    day = np.array([ids.get(int(a["token_id"][t]), -1) for t in proj.tokens])
    xy = proj.coords[day >= 0].astype(np.float64)
    centres = np.array([xy[day[day >= 0] == i].mean(0) for i in range(7)])
    angles = np.arctan2(*(centres - centres.mean(0)).T[::-1])
    order = np.argsort(angles)
    steps = np.diff(np.r_[order, order[0]]) % 7
    assert set(steps.tolist()) in ({1}, {6}), order  # Monday .. Sunday around the circle
