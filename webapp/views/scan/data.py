"""The loaded scan run (``ScanData``): arrays and summary of ``latent_atlas.analyses.scan`` in one object.

Invariants: built from stored arrays only (the web process never runs a
model); token strings come from the summary and are raw model output, so every
place that puts them into Plotly text or hover uses ``hover_safe`` (HTML
escaped, control characters shown as escapes); ``load_scan`` caches a few runs
(a finished run never changes).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

KIND = "scan"
ARRAYS = ["coords", "frame_layer", "frame_component", "token_prompt", "token_position", "token_id",
          "lens_ids", "lens_probs", "last_top_ids", "div_cosine_last", "div_cosine_mean", "div_kl",
          "div_js", "div_cka", "div_heatmap"]
REQUIRED = ("coords", "token_prompt", "token_position", "token_id")
PROMPT_NAMES = ("A", "B")


def hover_safe(text: str, limit: int = 40) -> str:
    """A token string fit for Plotly hover/text: control characters escaped, HTML escaped, bounded."""
    shown = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown)


@dataclass(frozen=True)
class ScanData:
    """One scan result; ``coords`` is (F, N, 3), the N tokens are A's then B's."""

    run_id: str
    summary: Mapping[str, Any]
    coords: np.ndarray
    token_prompt: np.ndarray
    token_position: np.ndarray
    token_id: np.ndarray
    lens_ids: np.ndarray | None
    lens_probs: np.ndarray | None
    divergence: dict[str, np.ndarray] = field(default_factory=dict)
    heatmap: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, run_id: str, summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ScanData:
        missing = [name for name in REQUIRED if name not in arrays]
        if missing:
            raise ValueError(f"run {run_id} lacks the scan arrays {', '.join(missing)}")
        divergence = {name[4:]: np.asarray(arrays[name], dtype=np.float64)
                      for name in arrays if name.startswith("div_") and name != "div_heatmap"}
        return cls(run_id=run_id, summary=summary, coords=np.asarray(arrays["coords"], dtype=np.float32),
                   token_prompt=np.asarray(arrays["token_prompt"]),
                   token_position=np.asarray(arrays["token_position"]),
                   token_id=np.asarray(arrays["token_id"]),
                   lens_ids=arrays.get("lens_ids"), lens_probs=arrays.get("lens_probs"),
                   divergence=divergence, heatmap=arrays.get("div_heatmap"))

    @property
    def n_frames(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_prompts(self) -> int:
        return int(self.token_prompt.max()) + 1 if self.token_prompt.size else 0

    @property
    def labels(self) -> list[str]:
        labels = list(self.summary.get("frame_labels") or [])
        return labels if len(labels) == self.n_frames else [f"frame {i}" for i in range(self.n_frames)]

    @property
    def is_diff(self) -> bool:
        return bool(self.divergence) and self.n_prompts == 2

    def tokens(self, prompt: int) -> list[str]:
        """The token strings of a prompt (raw)."""
        rows = self.summary.get("tokens") or []
        count = int((self.token_prompt == prompt).sum())
        row = rows[prompt] if prompt < len(rows) else []
        return [str(t) for t in row] if len(row) == count else ["?"] * count

    def lens_text(self, frame: int, select: np.ndarray) -> list[str]:
        """Hover text of the logit-lens top token (escaped) of the points ``select`` at ``frame``."""
        if self.lens_ids is None:
            return ["—"] * int(select.sum())
        strings = (self.summary.get("lens") or {}).get("tokens") or {}
        ids, probs = self.lens_ids[frame, select], self.lens_probs[frame, select]
        cache: dict[int, str] = {}
        out = []
        for token, prob in zip(ids.tolist(), probs.tolist(), strict=True):
            if token < 0:
                out.append("not computed")
                continue
            if token not in cache:
                cache[token] = hover_safe(str(strings.get(str(token), f"#{token}")))
            out.append(f"{cache[token]} ({prob:.2f})")
        return out


@lru_cache(maxsize=4)
def load_scan(run_id: str) -> ScanData:
    """The scan result of a succeeded run (cached)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        raise ValueError(f"run {run_id} is a {run.kind} run, not a scan run")
    if run.status != "succeeded":
        raise ValueError(f"run {run_id} is {run.status}; its scan exists once it has succeeded")
    return ScanData.from_arrays(run.id, run.summary or {}, runs_service.load_arrays(run, ARRAYS))
