"""From captured points to everything a geometry run stores: projections and statistics.

Shared by the ``geometry`` run (states fresh from the model) and the model-free
``geometry_reproject`` run (states of an earlier run). ``Points`` holds the raw
states of every point (before unit-normalisation, after averaging) as one
(P, d) array, usually float16, plus per-point metadata; ``describe`` turns them
into the arrays and summary of a run. Invariants:

* states are read in chunks of ``CHUNK`` rows and converted to float32 one
  chunk at a time, so memory beyond the states themselves stays bounded;
* unit-normalisation divides each row by its stored ``norm`` (zero rows stay
  zero); ``norm`` is always the raw L2 norm;
* the fit set is every point, or every point with ``position != 0`` when
  position 0 is excluded; every point is projected either way;
* PCA is exact (``latent_atlas.reduce``) and deterministic; UMAP runs on the
  50-component PCA of the points, is fitted on at most ``umap_fit_points``
  points of the fit set (a seeded sample) and places the others with
  ``transform``; above ``UMAP_MAX_POINTS`` points UMAP is refused;
* the attention-vs-MLP view has its own 2D PCA fitted on the ``attn_out`` and
  ``mlp_out`` points only (``attn_mlp_coords``, rows in point order of those
  two components);
* component indices are global (``COMPONENTS``), layers are absolute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from latent_atlas.analyses.geometry import stats
from latent_atlas.lm.hooks import COMPONENTS
from latent_atlas.reduce import PCAAccumulator, PCAFit

__all__ = ["CHUNK", "Points", "ReduceOptions", "UMAP_MAX_POINTS", "describe", "fit_sets", "fit_sums",
           "warm_up_umap"]

CHUNK = 16_384  # rows converted to float32 at a time (~38 MB at width 576)
UMAP_MAX_POINTS = 400_000
UMAP_PCA_DIMS = 50
UMAP_WARMUP_POINTS = 4_200  # above UMAP's 4,096-row exact-neighbour cut-off
SEPARATION_MAX_PER_CLASS = 8_000  # rows per class and layer (seeded sample) for the separability score
ATTN, MLP = COMPONENTS.index("attn_out"), COMPONENTS.index("mlp_out")
META = ("layer", "component", "position", "prompt_index", "token_id")


@dataclass
class Points:
    """Raw states and per-point metadata, one row per point."""

    states: np.ndarray  # (P, d) float16 or float32, raw (not unit-normalised)
    norm: np.ndarray  # (P,) float32
    layer: np.ndarray  # (P,) int16, absolute layer
    component: np.ndarray  # (P,) int8, index into COMPONENTS
    position: np.ndarray  # (P,) int32, -1 when averaged over positions
    prompt_index: np.ndarray  # (P,) int32, -1 when averaged over prompts
    token_id: np.ndarray  # (P,) int32, -1 when averaged

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def meta(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in META}


@dataclass(frozen=True)
class ReduceOptions:
    reduction: Literal["pca", "umap"] = "pca"
    dims: int = 3
    unit_normalise: bool = False
    exclude_position0: bool = False
    seed: int = 0
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    umap_fit_points: int = 20_000


Progress = Callable[[float, str], None]


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def rows(points: Points, index: slice | np.ndarray, unit: bool) -> np.ndarray:
    """float32 states of the points at ``index``, unit-normalised if asked.

    The float16 -> float32 conversion goes through torch (several times faster
    than numpy's on a CPU).
    """
    part = np.ascontiguousarray(points.states[index])
    if not part.flags.writeable:  # e.g. a read-only memory map: torch wants a writable buffer
        part = part.copy()
    block = torch.from_numpy(part).float()
    if unit:
        norms = torch.from_numpy(np.ascontiguousarray(points.norm[index], dtype=np.float32))
        block = block / norms.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)  # never in place
    return block.numpy()


def _accumulate(points: Points, select: np.ndarray, unit: bool, device: torch.device,
                progress: Progress | None = None, stage: str = "") -> PCAAccumulator:
    accumulator = PCAAccumulator(products="float64" if device.type == "cuda" else "float32")
    n = len(points)
    for number, part in enumerate(_chunks(n)):
        keep = select[part]
        if keep.any():
            block = rows(points, part, unit)[keep]
            accumulator.update(torch.from_numpy(block).to(device))
        if progress is not None and number % 8 == 0:
            progress(part.stop / max(1, n), stage)
    return accumulator


def _transform(points: Points, fit: PCAFit, unit: bool, select: np.ndarray | None = None) -> np.ndarray:
    n = len(points) if select is None else int(select.sum())
    out = np.empty((n, fit.n_components), dtype=np.float32)
    at = 0
    for part in _chunks(len(points)):
        block = rows(points, part, unit)
        if select is not None:
            block = block[select[part]]
        out[at : at + len(block)] = fit.transform(block)
        at += len(block)
    return out


def warm_up_umap(points: int = UMAP_WARMUP_POINTS) -> float:
    """Compile UMAP's numba code now (a small seeded fit and transform); returns the seconds taken.

    Runs the code paths a run takes: float32 input, ``random_state`` set, and
    ``points`` rows (default ``UMAP_WARMUP_POINTS``, above 4,095), so the approximate neighbour
    search (pynndescent: below 4,096 rows UMAP computes exact neighbours and
    compiles none of it) and the transform's index search are compiled too. A
    later run in this process finds everything compiled.
    """
    import time

    import umap

    started = time.perf_counter()
    data = np.random.default_rng(0).normal(size=(points + 200, 8)).astype(np.float32)
    reducer = umap.UMAP(n_components=3, n_neighbors=15, random_state=0, n_epochs=20)
    reducer.fit_transform(data[:points])
    reducer.transform(data[points:])
    return time.perf_counter() - started


def _umap(reduced: np.ndarray, fit_mask: np.ndarray, options: ReduceOptions,
          progress: Progress) -> np.ndarray:
    import umap  # lazy: slow to import; compiled once per worker process

    fit_index = np.flatnonzero(fit_mask)
    if len(fit_index) > options.umap_fit_points:
        rng = np.random.default_rng(options.seed)
        fit_index = np.sort(rng.choice(fit_index, size=options.umap_fit_points, replace=False))
    n_neighbors = max(2, min(options.umap_neighbors, len(fit_index) - 1))
    reducer = umap.UMAP(n_components=options.dims, n_neighbors=n_neighbors,
                        min_dist=options.umap_min_dist, random_state=options.seed)
    progress(0.5, f"UMAP: fitting {len(fit_index):,} points")
    fitted = np.asarray(reducer.fit_transform(reduced[fit_index]), dtype=np.float32)
    coords = np.empty((len(reduced), options.dims), dtype=np.float32)
    coords[fit_index] = fitted
    rest = np.setdiff1d(np.arange(len(reduced)), fit_index, assume_unique=True)
    for start in range(0, len(rest), CHUNK):
        progress(0.5 + 0.3 * start / max(1, len(rest)), f"UMAP: placing {len(rest):,} more points")
        part = rest[start : start + CHUNK]
        coords[part] = np.asarray(reducer.transform(reduced[part]), dtype=np.float32)
    return coords


def _separation(points: Points, attn_mlp_coords: np.ndarray | None, am_index: np.ndarray,
                layers: list[int], unit: bool, seed: int) -> dict[str, Any]:
    """Attention vs MLP separability per layer (full space LDA, 2D silhouette) and overall."""
    rng = np.random.default_rng(seed)
    comp = points.component[am_index]
    layer_of = points.layer[am_index]
    lda, sil = [], []
    pooled_a: list[np.ndarray] = []
    pooled_b: list[np.ndarray] = []
    budget = max(1, SEPARATION_MAX_PER_CLASS // max(1, len(layers)))
    for layer in layers:
        in_layer = layer_of == layer
        ia = am_index[in_layer & (comp == ATTN)]
        ib = am_index[in_layer & (comp == MLP)]
        if len(ia) > SEPARATION_MAX_PER_CLASS:
            ia = np.sort(rng.choice(ia, SEPARATION_MAX_PER_CLASS, replace=False))
        if len(ib) > SEPARATION_MAX_PER_CLASS:
            ib = np.sort(rng.choice(ib, SEPARATION_MAX_PER_CLASS, replace=False))
        a, b = rows(points, ia, unit), rows(points, ib, unit)
        ga, gb = points.prompt_index[ia], points.prompt_index[ib]
        grouped = bool(len(np.unique(ga[ga >= 0])) >= 2)
        lda.append(stats.linear_separability(a, b, groups_a=ga if grouped else None,
                                             groups_b=gb if grouped else None, seed=seed))
        pooled_a.append(a[rng.permutation(len(a))[:budget]])
        pooled_b.append(b[rng.permutation(len(b))[:budget]])
        if attn_mlp_coords is not None:
            local = in_layer
            sil.append(stats.silhouette(attn_mlp_coords[local], comp[local] == MLP, seed=seed))
        else:
            sil.append(float("nan"))
    overall_lda = stats.linear_separability(np.concatenate(pooled_a), np.concatenate(pooled_b),
                                            seed=seed) if pooled_a else float("nan")
    overall_sil = (stats.silhouette(attn_mlp_coords, comp == MLP, seed=seed)
                   if attn_mlp_coords is not None else float("nan"))
    return {
        "method": "held-out accuracy of a linear (Fisher) discriminant in the full hidden space, "
                  "prompts split in halves; silhouette in the 2D attention/MLP PCA",
        "layers": layers,
        "lda_accuracy": [stats.to_json_float(v) for v in lda],
        "silhouette_2d": [stats.to_json_float(v) for v in sil],
        "overall_lda_accuracy": stats.to_json_float(overall_lda),
        "overall_silhouette_2d": stats.to_json_float(overall_sil),
    }


def norm_statistics(norm: np.ndarray, layer: np.ndarray, component: np.ndarray,
                    position: np.ndarray, n_layers: int) -> dict[str, Any]:
    """Position-0 ratios and growth through the layers, JSON-ready (NaN -> None)."""
    ratios = stats.position0_ratios(norm, layer, component, position, n_layers)
    means = stats.layer_component_means(norm, layer, component, n_layers)
    rest = stats.layer_component_means(norm, layer, component, n_layers, where=np.asarray(position) != 0)
    present = sorted({int(c) for c in np.unique(component)})

    def table(values: np.ndarray) -> list[list[float | None]]:
        return [[stats.to_json_float(v) for v in row] for row in values]

    growth = {}
    growth_rest = {}
    for c in present:
        kept = np.flatnonzero(np.isfinite(means[:, c]))
        growth[COMPONENTS[c]] = _jsonable(stats.growth_summary(means[kept, c], kept))
        kept_rest = np.flatnonzero(np.isfinite(rest[:, c]))
        growth_rest[COMPONENTS[c]] = _jsonable(stats.growth_summary(rest[kept_rest, c], kept_rest))
    finite = ratios["ratio"][np.isfinite(ratios["ratio"])]
    return {
        "position0_ratio_overall": stats.to_json_float(ratios["overall"]),
        "position0_ratio_median": stats.to_json_float(np.median(finite)) if len(finite) else None,
        "position0_ratio": table(ratios["ratio"]),
        "position0_mean": table(ratios["first"]),
        "rest_mean": table(ratios["rest"]),
        "growth": growth,
        "growth_excluding_position0": growth_rest,
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: stats.to_json_float(v) if isinstance(v, float) else v for k, v in values.items()}


def fit_sets(points: Points, options: ReduceOptions) -> dict[str, np.ndarray]:
    """The rows each PCA of ``describe`` is fitted on: ``main`` and (when both are captured) ``attn_mlp``."""
    fit_mask = np.ones(len(points), dtype=bool) if not options.exclude_position0 else points.position != 0
    sets = {"main": fit_mask}
    if {ATTN, MLP} <= {int(c) for c in np.unique(points.component)}:
        sets["attn_mlp"] = np.isin(points.component, [ATTN, MLP]) & fit_mask
    return sets


def fit_sums(points: Points, options: ReduceOptions, device: torch.device,
             sets: dict[str, np.ndarray] | None = None) -> dict[str, PCAAccumulator]:
    """float64 covariance sums (``PCAAccumulator``) of each fit set's rows, as ``describe`` reads them."""
    sets = fit_sets(points, options) if sets is None else sets
    accumulators = {}
    for name, select in sets.items():
        accumulator = PCAAccumulator(products="float64")
        for part in _chunks(len(points)):
            keep = select[part]
            if keep.any():
                accumulator.update(torch.from_numpy(rows(points, part, options.unit_normalise)[keep]).to(device))
        accumulators[name] = accumulator
    return accumulators


def describe(points: Points, options: ReduceOptions, n_layers: int, *,
             device: torch.device | None = None,
             progress: Progress = lambda f, s: None,
             fits: dict[str, PCAAccumulator] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Projections, attention/MLP view and statistics of ``points``; (arrays, summary part).

    ``fits``: covariance sums of the fit sets (``fit_sums``, e.g. merged from
    the shards of a run) used instead of reading the states for the PCA fits.
    """
    device = device or torch.device("cpu")
    n = len(points)
    if n < 2:
        raise ValueError("a geometry run needs at least 2 points to project")
    unit = options.unit_normalise
    fit_mask = np.ones(n, dtype=bool)
    if options.exclude_position0:
        fit_mask = points.position != 0
        if fit_mask.sum() < 2:
            raise ValueError("excluding position 0 leaves fewer than 2 points to fit; "
                             "use longer prompts or keep position 0")
    if options.reduction == "umap" and n > UMAP_MAX_POINTS:
        raise ValueError(f"UMAP of {n:,} points is refused (at most {UMAP_MAX_POINTS:,}); use PCA, "
                         "fewer prompts, tokens, layers or components, or averaging")

    progress(0.0, f"fitting PCA on {int(fit_mask.sum()):,} points")
    if fits is not None:
        accumulator = fits["main"]
        if accumulator.n != int(fit_mask.sum()):
            raise ValueError(f"the covariance sums count {accumulator.n} rows, the fit set {int(fit_mask.sum())}")
    else:
        accumulator = _accumulate(points, fit_mask, unit, device,
                                  lambda f, s: progress(0.3 * f, s), "fitting PCA")
    d = int(points.states.shape[1])
    if options.reduction == "pca":
        fit = accumulator.finalize(min(options.dims, d))
        progress(0.3, "projecting")
        coords = _transform(points, fit, unit)
        explained = fit.explained_variance_ratio.astype(np.float32)
    elif options.reduction == "umap":
        pre = accumulator.finalize(min(UMAP_PCA_DIMS, d))
        reduced = _transform(points, pre, unit)
        coords = _umap(reduced, fit_mask, options, lambda f, s: progress(0.3 + 0.5 * f, s))
        del reduced
        explained = np.full(options.dims, np.nan, dtype=np.float32)
    else:
        raise ValueError(f"unknown reduction {options.reduction!r}")
    del accumulator

    arrays: dict[str, np.ndarray] = {"coords": coords.astype(np.float32, copy=False),
                                     "explained_variance_ratio": explained}
    am_select = np.isin(points.component, [ATTN, MLP])
    am_index = np.flatnonzero(am_select)
    attn_mlp_coords = None
    layers = sorted(int(v) for v in np.unique(points.layer))
    summary: dict[str, Any] = {}
    has_both = {ATTN, MLP} <= {int(c) for c in np.unique(points.component)}
    if has_both:
        progress(0.85, "attention vs MLP: 2D PCA and separation")
        am_fit = am_select & fit_mask
        acc = fits["attn_mlp"] if fits is not None else _accumulate(points, am_fit, unit, device)
        if acc.n >= 2:
            am_pca = acc.finalize(min(2, d))
            attn_mlp_coords = _transform(points, am_pca, unit, am_select)
            arrays["attn_mlp_coords"] = attn_mlp_coords
            arrays["attn_mlp_explained"] = am_pca.explained_variance_ratio.astype(np.float32)
        summary["separation"] = _separation(points, attn_mlp_coords, am_index, layers, unit,
                                            options.seed)
    progress(0.95, "norm statistics")
    layer_norm_mean = stats.layer_component_means(points.norm, points.layer, points.component, n_layers)
    arrays["layer_norm_mean"] = layer_norm_mean.astype(np.float32)
    summary["norm_stats"] = norm_statistics(points.norm, points.layer, points.component,
                                            points.position, n_layers)
    summary.update(
        reduction=options.reduction,
        dims=options.dims,
        unit_normalise=unit,
        exclude_position0=options.exclude_position0,
        n_fit_points=int(fit_mask.sum()),
        n_points=n,
        explained_variance_ratio=[stats.to_json_float(v) for v in explained],
    )
    if options.reduction == "umap":
        summary["umap"] = {"n_neighbors": options.umap_neighbors, "min_dist": options.umap_min_dist,
                           "fit_points": int(min(fit_mask.sum(), options.umap_fit_points)),
                           "input": f"PCA to {min(UMAP_PCA_DIMS, d)} dimensions"}
    return arrays, summary


# --------------------------------------------------------------------------- subsets and means


def subset(points: Points, keep: np.ndarray) -> Points:
    """The points where ``keep`` is true (a copy)."""
    return Points(points.states[keep], points.norm[keep],
                  *(getattr(points, name)[keep] for name in META))


def average(points: Points, mode: Literal["samples", "positions"]) -> Points:
    """Mean states over prompts per position (``samples``) or over positions per prompt.

    Points must be unaveraged (every prompt and position >= 0). Groups are
    (layer, component, position) or (layer, component, prompt); the result is
    ordered by layer, component, then position or prompt, like a geometry
    run averaged at capture. Means are accumulated in float64.
    """
    if np.any(points.position < 0) or np.any(points.prompt_index < 0):
        raise ValueError("these points are already averaged")
    key = points.position if mode == "samples" else points.prompt_index
    width = int(key.max()) + 1
    block = (points.layer.astype(np.int64) * len(COMPONENTS) + points.component) * width + key
    groups, inverse = np.unique(block, return_inverse=True)
    d = points.states.shape[1]
    sums = torch.zeros((len(groups), d), dtype=torch.float64)
    for part in _chunks(len(points)):
        sums.index_add_(0, torch.from_numpy(inverse[part].astype(np.int64)),
                        torch.from_numpy(points.states[part].astype(np.float64)))
    counts = np.bincount(inverse, minlength=len(groups)).astype(np.float64)
    means = (sums.numpy() / counts[:, None]).astype(np.float32)
    layer = (groups // width // len(COMPONENTS)).astype(np.int16)
    component = (groups // width % len(COMPONENTS)).astype(np.int8)
    value = (groups % width).astype(np.int32)
    minus = np.full(len(groups), -1, dtype=np.int32)
    return Points(
        states=means.astype(points.states.dtype) if points.states.dtype == np.float32 else means,
        norm=np.linalg.norm(means, axis=1).astype(np.float32),
        layer=layer, component=component,
        position=value if mode == "samples" else minus,
        prompt_index=minus if mode == "samples" else value,
        token_id=minus.copy(),
    )
