"""Real states at a layer, and the plane that a grid run's params ask for.

``states_at_layer`` returns the residual entering a block for every token (the
data-aware planes fit to these); ``build_plane`` turns ``GridParams`` into a
``Plane`` (``latent_atlas.analyses.grid.planes``) plus summary extras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic_core import PydanticCustomError
from torch import Tensor

from latent_atlas.analyses.grid.params import DEFAULT_PROMPTS, GridParams, check_positions
from latent_atlas.analyses.grid.planes import (
    Plane,
    direct_plane,
    pca_plane,
    random_projection_plane,
    replicated_plane,
    through_states_plane,
)
from latent_atlas.lm.hooks import RESID_POST, capture_points
from latent_atlas.lm.loading import LanguageModel

__all__ = ["build_plane", "states_at_layer", "tokenise"]


def tokenise(lm: LanguageModel, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
    rows = [list(map(int, row[:max_tokens])) for row in lm.tokenizer(list(prompts))["input_ids"]]
    for index, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {index} has no tokens")
    return rows


def states_at_layer(
    lm: LanguageModel, layer: int, rows: Sequence[Sequence[int]], *, batch_size: int = 8
) -> list[Tensor]:
    """The residual entering block ``layer`` (``L``: the last block's output, before the
    final norm) for every token of every row: one float32 CPU tensor (n_tokens, d) per row."""
    if not 0 <= layer <= lm.n_layers:
        raise ValueError(f"layer {layer} is out of range for model {lm.name} (0..{lm.n_layers})")
    pad = lm.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    out: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        capture = capture_points(lm, ids, mask)
        tensor = (
            capture.resid_pre(layer) if layer < lm.n_layers else capture.points[lm.n_layers - 1][RESID_POST]
        )
        for i, r in enumerate(chunk):
            out.append(tensor[i, : len(r)].detach().to(device="cpu", dtype=torch.float32).clone())
        del capture, tensor
    return out


def build_plane(params: GridParams, lm: LanguageModel) -> tuple[Plane, dict[str, Any]]:
    """The plane, plus summary extras (which states were used)."""
    d = lm.d_model
    if params.plane == "direct":
        return direct_plane(d), {}
    if params.plane == "replicated":
        return replicated_plane(d), {}
    if params.plane == "random_projection":
        return random_projection_plane(d, params.seed), {}
    if params.plane == "pca":
        prompts = list(params.prompts) if params.prompts is not None else list(DEFAULT_PROMPTS)
        rows = tokenise(lm, prompts, params.max_tokens)
        per_prompt = states_at_layer(lm, params.layer, rows)
        first = 1 if params.exclude_first_token else 0
        kept = [s[first:] for s in per_prompt if s.shape[0] > first]
        if not kept or sum(s.shape[0] for s in kept) < 3:
            raise ValueError("the pca plane needs at least 3 token states; give longer or more prompts")
        plane = pca_plane(torch.cat(kept))
        return plane, {"pca_prompts": "built-in" if params.prompts is None else "given"}
    if params.plane == "through_states":
        assert params.prompts is not None and params.states is not None  # checked by GridParams
        rows = tokenise(lm, params.prompts, params.max_tokens)
        try:
            resolved = check_positions(params.states, [len(r) for r in rows])
        except PydanticCustomError as exc:
            raise ValueError(str(exc)) from None
        needed = sorted({p for p, _ in resolved})
        states = dict(zip(needed, states_at_layer(lm, params.layer, [rows[p] for p in needed]), strict=True))
        chosen = [states[p][pos] for p, pos in resolved]
        plane = through_states_plane(*chosen)
        refs = [
            {"prompt": p, "position": pos, "token": lm.tokenizer.decode([rows[p][pos]])}
            for p, pos in resolved
        ]
        return plane, {"states": refs}
    raise ValueError(f"unknown plane {params.plane!r}")
