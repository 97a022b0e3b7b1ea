"""The exact fast path at ``layer == L``: logits of a plane are affine in (x, y) after the norm.

``AffineReducer`` gives top-k and entropy of a chunk of cells from two rank-5
products (``latent_atlas.lm.inject.AffineReadout``); ``check_fast_path``
compares it with final norm + unembedding on a few probe cells, and the run
falls back to the direct computation when they disagree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latent_atlas.analyses.grid.planes import Plane
from latent_atlas.analyses.grid.streaming import CellGrid
from latent_atlas.analyses.grid.topk import EXP_FLOOR, row_dots, topk_rows
from latent_atlas.lm.inject import AffineReadout, readout
from latent_atlas.lm.loading import LanguageModel

__all__ = ["FAST_PATH_PROBES", "AffineReducer", "check_fast_path", "probe_cells"]

FAST_PATH_PROBES = 16


class AffineReducer:
    """Top-k and entropy straight from the fast path: two rank-5 products per chunk.

    With ``basis5 = [a; b; e; bias; 1]`` (5, V) and ``coef = [1/s, x/s, y/s, 1, -m]``
    one product gives the logits shifted by any ``m``: first with ``m = 0`` for
    the top-k (which gives the row maximum), then with the maximum, which
    writes ``z = l - m`` directly instead of a read-modify-write pass. With a
    final logit soft-cap (Gemma 2/3) the capped logits ``cap * tanh(l / cap)``
    are not affine in the coefficients: one product, the cap in place, then
    the shift by the row maximum (top-1 is unchanged by the cap, the
    probabilities and the entropy are not).
    """

    def __init__(self, fast: AffineReadout) -> None:
        vocab = fast.basis.shape[1]
        ones = torch.ones((1, vocab), dtype=torch.float32, device=fast.basis.device)
        self.fast = fast
        self.basis5 = torch.cat([fast.basis, fast.bias.unsqueeze(0), ones]).contiguous()
        self.buffers: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        rows = x.shape[0]
        if self.buffers is None or self.buffers[0].shape[0] < rows:
            self.buffers = None
            shape = (rows, self.basis5.shape[1])
            device = self.basis5.device
            self.buffers = (torch.empty(shape, device=device), torch.empty(shape, device=device))
        z, e = self.buffers[0][:rows], self.buffers[1][:rows]
        coef3 = self.fast.coefficients(x, y)
        coef = torch.zeros((rows, 5), dtype=torch.float32, device=coef3.device)
        coef[:, :3] = coef3
        coef[:, 3] = 1.0
        torch.mm(coef, self.basis5, out=z)
        cap = self.fast.softcap
        if cap is not None:
            z.div_(cap).tanh_().mul_(cap)
        top_v, top_i = topk_rows(z, k)
        if cap is not None:
            z.sub_(top_v[:, :1])
        else:
            coef[:, 4] = -top_v[:, 0]
            torch.mm(coef, self.basis5, out=z)
        torch.exp(z.clamp_(min=EXP_FLOOR), out=e)
        total = e.sum(dim=1)
        weighted = row_dots(e, z)
        entropy = (torch.log(total) - weighted / total).clamp_min_(0.0)
        probs = torch.exp(top_v - top_v[:, :1]) / total.unsqueeze(1)
        return top_i, probs, entropy


def probe_cells(grid: CellGrid, count: int) -> Tensor:
    n = grid.n
    corners = [0, n - 1, n * (n - 1), n * n - 1, (n // 2) * n + n // 2]
    generator = torch.Generator().manual_seed(0)
    extra = torch.randint(0, n * n, (max(0, count - len(corners)),), generator=generator).tolist()
    return torch.tensor(sorted(set(corners + extra)), dtype=torch.long)


def check_fast_path(
    lm: LanguageModel, fast: AffineReadout, plane: Plane, grid: CellGrid
) -> tuple[bool, float, str]:
    """Compare the fast path with final norm + unembedding on a few cells."""
    cells = probe_cells(grid, FAST_PATH_PROBES)
    x, y = grid._xs[cells % grid.n], grid._ys[cells // grid.n]
    direct = readout(lm, plane.points(x, y, device=lm.device)).float()
    quick = fast.logits(x, y).to(direct.device)
    p_direct, p_quick = torch.softmax(direct, dim=-1), torch.softmax(quick, dim=-1)
    error = float((p_direct - p_quick).abs().max())
    logit_error = float((direct - quick).abs().max()) / max(1.0, float(direct.abs().max()))
    tolerance = 1e-4 if lm.dtype == torch.float32 else 2e-2
    if not (error <= tolerance and logit_error <= 10 * tolerance):
        return False, error, (
            f"fast path disagrees with the direct computation (max probability error {error:.3g}, "
            f"relative logit error {logit_error:.3g}); using the direct computation"
        )
    return True, error, ""
