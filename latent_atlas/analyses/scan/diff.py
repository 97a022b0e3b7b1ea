"""The divergence of two prompts through the layers: pure numpy, no model.

Inputs are the states of prompt A (F, Ta, d) and B (F, Tb, d) at the same F
frames, and the logit-lens log-probabilities of each prompt's last token at
every frame (F, V). Positions are *aligned* by index: position p of A and of B
for p < min(Ta, Tb). Invariants:

* cosine distance is ``0.5 * ||a/|a| - b/|b| ||^2`` (= 1 - cos), so two
  identical states are exactly 0 apart, bit for bit; a zero state against a
  non-zero one is 1 (cosine 0), two zero states are 0;
* KL(A || B) and JS are in bits, from log-probabilities (no log of 0), summed
  in float64; identical distributions give exactly 0;
* ``1 - CKA`` is linear CKA of the centred (n_aligned, d) matrices at each
  frame; identical matrices give exactly 0, fewer than 2 aligned positions NaN;
* ``first_crossing`` is the first frame whose chosen metric is above the
  threshold (``None`` when none is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DIVERGENCE_FIELDS", "Divergence", "cka_distance", "cosine_distance", "divergence", "first_crossing",
           "js_bits", "kl_bits"]

LN2 = float(np.log(2.0))
DIVERGENCE_FIELDS = ("cosine_last", "cosine_mean", "kl", "js", "cka")


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0), norm[..., 0] > 0


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a, b) over the last axis, exactly 0 where ``a == b``."""
    ua, nz_a = _unit(a)
    ub, nz_b = _unit(b)
    distance = 0.5 * np.sum((ua - ub) ** 2, axis=-1)
    return np.where(nz_a != nz_b, 1.0, distance)


def kl_bits(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(P || Q) in bits over the last axis, from log-probabilities."""
    lp = np.asarray(log_p, dtype=np.float64)
    lq = np.asarray(log_q, dtype=np.float64)
    p = np.exp(lp)
    terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0) / LN2


def js_bits(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (0..1) over the last axis, from log-probabilities."""
    lp = np.asarray(log_p, dtype=np.float64)
    lq = np.asarray(log_q, dtype=np.float64)
    log_m = np.logaddexp(lp, lq) - LN2
    return np.clip(0.5 * kl_bits(lp, log_m) + 0.5 * kl_bits(lq, log_m), 0.0, 1.0)


def cka_distance(x: np.ndarray, y: np.ndarray) -> float:
    """1 - linear CKA of ``x`` and ``y`` (n, d) (rows are paired); NaN when n < 2 or a side is constant."""
    if x.shape[0] < 2:
        return float("nan")
    if np.array_equal(x, y):
        return 0.0
    xc = np.asarray(x, dtype=np.float64) - x.mean(axis=0, dtype=np.float64)
    yc = np.asarray(y, dtype=np.float64) - y.mean(axis=0, dtype=np.float64)
    # Gram form (n x n), cheap for n << d: <K_x, K_y> / (|K_x| |K_y|).
    kx, ky = xc @ xc.T, yc @ yc.T
    denominator = np.linalg.norm(kx) * np.linalg.norm(ky)
    if denominator == 0:
        return float("nan")
    return float(np.clip(1.0 - np.sum(kx * ky) / denominator, 0.0, 1.0))


def first_crossing(values: np.ndarray, threshold: float) -> int | None:
    """The first index whose value is above ``threshold`` (NaN never crosses)."""
    above = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) > threshold)
    return int(above[0]) if above.size else None


@dataclass(frozen=True)
class Divergence:
    """Per-frame divergence of A and B; ``heatmap`` is (F, n_aligned) cosine distance."""

    cosine_last: np.ndarray
    cosine_mean: np.ndarray
    kl: np.ndarray
    js: np.ndarray
    cka: np.ndarray
    heatmap: np.ndarray
    aligned: int
    shared_prefix: int

    def metric(self, name: str) -> np.ndarray:
        return {"cosine_last": self.cosine_last, "cosine_mean": self.cosine_mean, "kl": self.kl,
                "js": self.js, "cka": self.cka}[name]


def divergence(states_a: np.ndarray, states_b: np.ndarray, log_probs_a: np.ndarray,
               log_probs_b: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> Divergence:
    """Every metric of the module docstring, frame by frame."""
    if states_a.shape[0] != states_b.shape[0] or states_a.shape[2] != states_b.shape[2]:
        raise ValueError(f"A {states_a.shape} and B {states_b.shape} need the same frames and width")
    aligned = min(states_a.shape[1], states_b.shape[1])
    differs = np.flatnonzero(np.asarray(ids_a[:aligned]) != np.asarray(ids_b[:aligned]))
    shared_prefix = int(differs[0]) if differs.size else aligned
    heatmap = cosine_distance(states_a[:, :aligned], states_b[:, :aligned])
    frames = states_a.shape[0]
    return Divergence(
        cosine_last=cosine_distance(states_a[:, -1], states_b[:, -1]),
        cosine_mean=heatmap.mean(axis=1),
        kl=kl_bits(log_probs_a, log_probs_b),
        js=js_bits(log_probs_a, log_probs_b),
        cka=np.array([cka_distance(states_a[f, :aligned], states_b[f, :aligned]) for f in range(frames)]),
        heatmap=heatmap,
        aligned=aligned,
        shared_prefix=shared_prefix,
    )
