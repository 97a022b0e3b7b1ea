"""The exact fast path at ``layer == L``: logits of an affine plane of residual states.

``AffineReadout`` is the exact fast path at ``layer == L``: for states on an
affine plane ``h = c + x u + y v`` the final norm (RMSNorm or LayerNorm) is
an affine map divided by one scalar per row, so the logits are
``(a + x b + y e) / s(x, y) + bias`` with three unembeddings ``a, b, e``
computed once; only a rank-3 product per row remains. The RMSNorm gain is
``norm_weight_offset + w`` (Gemma: ``1 + w``), and the spec is checked
against the norm module on a probe vector (``None`` on disagreement); a
final logit soft-cap (Gemma 2/3) is applied elementwise after the product.

The model is never modified; ``affine_readout`` returns ``None`` when the final
norm or the unembedding is not one it can reproduce exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latent_atlas.lm.device import module_device
from latent_atlas.lm.loading import LanguageModel

__all__ = ["AffineReadout", "affine_readout"]


@dataclass(frozen=True)
class _NormSpec:
    kind: str  # "rms" | "layer"
    gain: Tensor | None  # (d,) float64
    shift: Tensor | None  # (d,) float64 (LayerNorm bias)
    eps: float


def _norm_spec(norm: nn.Module, d: int, offset: float = 0.0) -> _NormSpec | None:
    """What the final norm computes, when it is a plain RMSNorm or LayerNorm over ``d``.

    ``offset`` is added to an RMSNorm weight (Gemma's ``1 + w``).
    """
    weight = getattr(norm, "weight", None)
    gain = None if weight is None else weight.detach().double().reshape(-1)
    if gain is not None and not isinstance(norm, nn.LayerNorm):
        gain = gain + offset
    if gain is not None and gain.numel() != d:
        return None
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (d,):
            return None
        shift = None if norm.bias is None else norm.bias.detach().double().reshape(-1)
        return _NormSpec("layer", gain, shift, float(norm.eps))
    if type(norm).__name__.endswith("RMSNorm"):
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            eps = getattr(norm, "eps", None)
        if eps is None:
            return None
        return _NormSpec("rms", gain, None, float(eps))
    return None


def _spec_matches(norm: nn.Module, spec: _NormSpec, d: int, device: torch.device) -> bool:
    """Whether ``spec`` computes what ``norm`` does on a fixed probe vector (float32, 1e-4)."""
    probe = torch.randn(2, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    x = probe - probe.mean(dim=1, keepdim=True) if spec.kind == "layer" else probe
    expected = x / torch.sqrt((x * x).mean(dim=1, keepdim=True) + spec.eps)
    if spec.gain is not None:
        expected = expected * spec.gain.cpu()
    if spec.shift is not None:
        expected = expected + spec.shift.cpu()
    with torch.inference_mode():
        param = next(norm.parameters(), None)
        dtype = torch.float32 if param is None else param.dtype
        actual = norm(probe.to(device=device, dtype=dtype)).double().cpu()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    return bool((actual - expected).abs().max() <= tolerance * max(1.0, float(expected.abs().max())))


@dataclass(frozen=True)
class AffineReadout:
    """Logits of ``h = c + x u + y v`` through final norm + unembedding, without a d x V product.

    ``basis`` (3, V) float32 holds the unembeddings of the gain-scaled (and,
    for LayerNorm, centred) ``c, u, v``; ``bias`` (V,) float32 the unembedding
    bias plus the unembedding of the LayerNorm shift; ``gram`` (3, 3) float64
    the Gram matrix of the centred ``c, u, v`` that gives the per-row mean
    square ``[1, x, y] G [1, x, y]^T / d`` exactly; ``softcap`` the final
    logit soft-cap applied elementwise after the product (``None``: none).
    """

    basis: Tensor
    bias: Tensor
    gram: Tensor
    eps: float
    d_model: int
    kind: str
    softcap: float | None = None

    def scale(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-row divisor ``sqrt(mean square + eps)`` (float64, on the CPU)."""
        x = x.double().cpu()
        y = y.double().cpu()
        g = self.gram
        ms = (
            g[0, 0] + 2 * x * g[0, 1] + 2 * y * g[0, 2]
            + x * x * g[1, 1] + 2 * x * y * g[1, 2] + y * y * g[2, 2]
        ) / self.d_model
        return torch.sqrt(ms.clamp_min(0.0) + self.eps)

    def coefficients(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, 3) float32 rows ``[1, x, y] / s(x, y)`` on the basis' device."""
        inv = 1.0 / self.scale(x, y)
        coef = torch.stack([inv, x.double().cpu() * inv, y.double().cpu() * inv], dim=1)
        return coef.to(device=self.basis.device, dtype=torch.float32)

    def logits(self, x: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
        """Logits (B, V) float32 for grid coordinates ``x, y`` (B,)."""
        coef = self.coefficients(x, y)
        if out is None:
            out = torch.addmm(self.bias, coef, self.basis)
        else:
            torch.addmm(self.bias, coef, self.basis, out=out)
        if self.softcap is not None:
            out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out


def affine_readout(
    lm: LanguageModel, center: Tensor, u: Tensor, v: Tensor
) -> AffineReadout | None:
    """The fast path for the plane ``center + x u + y v`` at layer L; ``None`` if the norm is unknown.

    The caller should still compare a few rows with ``run_from_layer`` (an
    unknown norm subclass may compute something else under the same name).
    """
    d = lm.d_model
    norm = lm.adapter.final_norm_of(lm.model)
    spec = _norm_spec(norm, d, lm.adapter.norm_weight_offset)
    unembed = lm.adapter.unembedding_of(lm.model)
    weight = getattr(unembed, "weight", None)
    if spec is None or not isinstance(unembed, nn.Linear) or weight is None:
        return None
    if not _spec_matches(norm, spec, d, module_device(norm) or lm.device):
        return None
    vectors = torch.stack([torch.as_tensor(t).double().cpu().reshape(-1) for t in (center, u, v)])
    if vectors.shape[1] != d:
        raise ValueError(f"plane vectors must have width {d}")
    if spec.kind == "layer":
        vectors = vectors - vectors.mean(dim=1, keepdim=True)
    gram = vectors @ vectors.T
    scaled = vectors if spec.gain is None else vectors * spec.gain.cpu()
    w = weight.detach()
    with torch.inference_mode():
        basis = (scaled.to(device=w.device, dtype=torch.float32) @ w.float().T).contiguous()
        bias = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
        if spec.shift is not None:
            bias += spec.shift.to(device=w.device, dtype=torch.float32) @ w.float().T
        if unembed.bias is not None:
            bias += unembed.bias.detach().float()
    if not torch.isfinite(basis).all() or not math.isfinite(float(gram.abs().max())):
        return None
    return AffineReadout(
        basis=basis, bias=bias, gram=gram, eps=spec.eps, d_model=d, kind=spec.kind,
        softcap=lm.adapter.softcap_of(lm.model),
    )
