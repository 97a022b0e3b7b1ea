"""Grid run kind: the real implementation against the straightforward baseline, same run.

Usage::

    python bench/grid.py [--sections last,mid,scaling,dtype] [--size 200] [--mid-layer 15]
                         [--scaling-sizes 100,200,400] [--dtype-size 100] [--repeats 1]
                         [--device auto] [--threads N] [--clock wall|cpu]

Baseline (the straightforward approach): batches of 1000 cells of the direct
plane, each cell a one-position sequence through the remaining blocks (each
block called on the batch), the final norm, the unembedding, the model's
final logit soft-cap (Gemma 2; ``soft_cap``), a full softmax over the
vocabulary and its argmax (top-1 only). The real implementation is
``run_grid`` (top-5, probabilities and entropy; the exact fast path at L).

Sections (each prints its figures as it goes):

* ``last``: layer L, N x N: baseline vs real, ratio, top-1 agreement, and the
  time of one bare softmax per cell (in-cache chunks, like the fast path) as a
  share of the real run: the floor on a CPU;
* ``mid``: layer ``--mid-layer``, N x N: baseline vs real, ratio, agreement;
* ``scaling``: the real run at the mid layer for each size: seconds, cells/s,
  peak RSS beyond the loaded model (and, on CUDA, peak allocated GPU memory
  beyond the model), so memory should stay flat and time linear;
* ``dtype``: the real run at the mid layer in float32 and bfloat16 (autocast
  on the float32 model): speed-up and top-1 agreement; on a GPU also the
  fraction of the device's peak bf16 throughput (``--peak-tflops``).

Peak RSS method: a background thread samples ``VmRSS`` from
``/proc/self/status`` every 2 ms during the run; the figure is the highest
sample minus the RSS just before the run (after ``gc.collect()`` and glibc's
``malloc_trim(0)``, so memory freed by earlier runs is returned to the OS
first). It includes the run's result arrays.

On a shared, busy CPU machine wall-clock times are noisy; the baseline and the
real run are measured back to back (``--repeats`` alternates their order) and
only ratios from the same run should be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _model import load_bench_model

from latent_atlas.analyses.grid import GridParams, run_grid
from latent_atlas.analyses.grid.planes import direct_plane, grid_axis
from latent_atlas.lm import LanguageModel, resolve_device
from latent_atlas.lm.adapters import soft_cap

BASELINE_BATCH = 1000
SPACING = {"last": 8.0, "mid": 8.0}  # direct plane: x, y in +-N/2 * spacing


def _load(directory: Path | None, device: torch.device) -> LanguageModel:
    return load_bench_model(directory, device)


def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _peak_rss(period: float = 0.002) -> Iterator[dict[str, int]]:
    """Yields a dict that holds ``before`` and ``peak`` RSS (bytes) once the block ends."""
    _release_memory()
    stats = {"before": _rss_bytes(), "peak": 0}
    stats["peak"] = stats["before"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            stats["peak"] = max(stats["peak"], _rss_bytes())
            time.sleep(period)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join()
        stats["peak"] = max(stats["peak"], _rss_bytes())


class Clock:
    def __init__(self, kind: str, device: torch.device) -> None:
        self.now = time.process_time if kind == "cpu" else time.perf_counter
        self.device = device

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = self.now()
        value = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.now() - start, value


def baseline_top1(lm: LanguageModel, layer: int, size: int, spacing: float,
                  compute_dtype: torch.dtype | None = None) -> np.ndarray:
    """The straightforward approach: 1000 cells a batch, full forward, full softmax, argmax."""
    model = lm.model
    blocks = lm.adapter.blocks_of(model)[layer:]
    norm = lm.adapter.final_norm_of(model)
    head = lm.adapter.unembedding_of(model)
    cap = lm.adapter.softcap_of(model)
    rotary = getattr(model.base_model, "rotary_emb", None)
    plane = direct_plane(lm.d_model)
    axis = torch.from_numpy(grid_axis(size, 0.0, spacing))
    cells = size * size
    top1 = np.empty(cells, dtype=np.int64)
    autocast = (torch.autocast(lm.device.type, dtype=compute_dtype) if compute_dtype not in (None, lm.dtype)
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for start in range(0, cells, BASELINE_BATCH):
            index = torch.arange(start, min(start + BASELINE_BATCH, cells))
            states = plane.points(axis[index % size], axis[index // size], device=lm.device)
            hidden = states.to(lm.dtype).unsqueeze(1)
            kwargs: dict[str, Any] = {}
            if rotary is not None:
                position_ids = torch.zeros((1, 1), dtype=torch.long, device=lm.device)
                kwargs = {"position_embeddings": rotary(hidden, position_ids), "position_ids": position_ids}
            for block in blocks:
                out = block(hidden, attention_mask=None, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            logits = soft_cap(head(norm(hidden[:, 0])).float(), cap)
            probs = torch.softmax(logits, dim=-1)
            top1[start : start + index.numel()] = probs.argmax(dim=-1).cpu().numpy()
    return top1.reshape(size, size)


def softmax_floor(lm: LanguageModel, cells: int, clock: Clock, chunk: int = 16) -> float:
    """Seconds for one bare softmax over the vocabulary per cell, arranged like the fast path:
    in-cache chunks of ``chunk`` rows, on as many single-threaded worker threads as torch has
    threads (on a GPU: one softmax over all cells' logits, in batches of 4096)."""
    if lm.device.type == "cuda":
        logits = torch.randn(4096, lm.vocab_size, device=lm.device) * 4
        seconds, _ = clock.time(lambda: [torch.softmax(logits, dim=-1) for _ in range(0, cells, 4096)])
        return seconds
    threads = torch.get_num_threads()
    local = threading.local()

    def job(rows: int) -> None:
        if not hasattr(local, "logits"):
            local.logits = torch.randn(chunk, lm.vocab_size) * 4
            local.out = torch.empty_like(local.logits)
        with torch.inference_mode():
            for _ in range(0, rows, chunk):
                torch.softmax(local.logits, dim=-1, out=local.out)

    with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(job, [64] * threads))  # warm up
        seconds, _ = clock.time(lambda: list(pool.map(job, [64] * (cells // 64))))
    torch.set_num_threads(threads)
    return seconds


def arbiter_top1(lm: LanguageModel, size: int, spacing: float, cells: np.ndarray) -> np.ndarray:
    """Top-1 at layer L of the given flat cells, computed in float64 (final norm + unembedding).

    The RMSNorm gain is ``norm_weight_offset + w`` (Gemma's ``1 + w``). The final
    soft-cap is monotonic, so it cannot change the argmax and is left out here.
    """
    plane = direct_plane(lm.d_model)
    axis = torch.from_numpy(grid_axis(size, 0.0, spacing))
    index = torch.from_numpy(cells)
    h = (plane.center + axis[index % size, None] * plane.u + axis[index // size, None] * plane.v)
    norm = lm.adapter.final_norm_of(lm.model)
    weight = lm.adapter.unembedding_of(lm.model).weight.detach().double().cpu()
    gain = norm.weight.detach().double().cpu() + lm.adapter.norm_weight_offset
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    normed = h * torch.rsqrt((h * h).mean(dim=1, keepdim=True) + eps) * gain
    return (normed @ weight.T).argmax(dim=1).numpy()


def real(lm: LanguageModel, layer: int, size: int, spacing: float, dtype: str = "float32") -> Any:
    params = GridParams(model=lm.name, layer=layer, size=size, spacing=spacing, plane="direct",
                        top_k=5, dtype=dtype)
    return run_grid(params, lm)


def _median_pair(clock: Clock, repeats: int, first: Callable[[], Any], second: Callable[[], Any]
                 ) -> tuple[float, Any, float, Any]:
    a_times, b_times = [], []
    a_value = b_value = None
    for repeat in range(repeats):
        order = [(first, a_times), (second, b_times)]
        if repeat % 2:
            order.reverse()
        for fn, times in order:
            _release_memory()
            seconds, value = clock.time(fn)
            times.append(seconds)
            if fn is first:
                a_value = value
            else:
                b_value = value
    return statistics.median(a_times), a_value, statistics.median(b_times), b_value


def _flops_per_cell(lm: LanguageModel, layer: int) -> float:
    """Matrix-product FLOPs of one cell: the linear layers of blocks layer..L-1 and the unembedding."""
    total = 0
    for block in lm.adapter.blocks_of(lm.model)[layer:]:
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                total += module.weight.numel()
    total += lm.adapter.unembedding_of(lm.model).weight.numel()
    return 2.0 * total


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
    for key, value in table.items():
        if key in name:
            return value * (756.0 / 989.0 if "H100" in name and "PCIe" in name else 1.0)
    return None


def section_last(lm: LanguageModel, clock: Clock, args: argparse.Namespace) -> None:
    layer, size = lm.n_layers, args.size
    print(f"\n== layer L = {layer}, {size} x {size} (direct plane, spacing {SPACING['last']}) ==", flush=True)
    base_s, base_top1, real_s, result = _median_pair(
        clock, args.repeats,
        lambda: baseline_top1(lm, layer, size, SPACING["last"]),
        lambda: real(lm, layer, size, SPACING["last"]),
    )
    real_top1 = result.arrays["top_ids"][..., 0]
    agree = float((real_top1 == base_top1).mean())
    floor = softmax_floor(lm, size * size, clock)
    print(f"baseline (1000/batch, matmul + full softmax + top-1): {base_s:8.2f} s")
    print(f"real (fast path={result.summary['fast_path']}, top-5 + entropy): {real_s:8.2f} s   "
          f"speed-up {base_s / real_s:5.2f}x   cells/s {size * size / real_s:,.0f}")
    differ = np.flatnonzero(real_top1.reshape(-1) != base_top1.reshape(-1))
    print(f"top-1 agreement with the baseline: {agree * 100:.3f} %  ({differ.size} cells differ); "
          f"distinct top-1: {result.summary['distinct_top1']}")
    if differ.size:
        exact = arbiter_top1(lm, size, SPACING["last"], differ)
        probs = result.arrays["top_probs"].reshape(-1, result.arrays["top_probs"].shape[-1])[differ]
        ties = int((probs[:, 0] == probs[:, 1]).sum())
        print(f"  where they differ: {ties} exact ties (top-1 probability == top-2, e.g. h = 0 at the origin "
              f"of the direct plane: all logits equal); float64 agrees with real in "
              f"{int((exact == real_top1.reshape(-1)[differ]).sum())}, with the baseline in "
              f"{int((exact == base_top1.reshape(-1)[differ]).sum())}; largest top-1 - top-2 probability gap "
              f"there: {float((probs[:, 0] - probs[:, 1]).max()):.2e}")
    print(f"bare softmax per cell (the floor): {floor:6.2f} s = {floor / real_s * 100:4.1f} % of the real run")


def section_mid(lm: LanguageModel, clock: Clock, args: argparse.Namespace) -> None:
    layer, size = args.mid_layer, args.size
    print(f"\n== layer {layer}, {size} x {size} (direct plane, spacing {SPACING['mid']}) ==", flush=True)
    base_s, base_top1, real_s, result = _median_pair(
        clock, args.repeats,
        lambda: baseline_top1(lm, layer, size, SPACING["mid"]),
        lambda: real(lm, layer, size, SPACING["mid"]),
    )
    real_top1 = result.arrays["top_ids"][..., 0]
    agree = float((real_top1 == base_top1).mean())
    print(f"baseline (1000/batch, full forward + full softmax + top-1): {base_s:8.2f} s")
    print(f"real (batches {result.summary['batch_sizes']}, top-5 + entropy): {real_s:8.2f} s   "
          f"speed-up {base_s / real_s:5.2f}x   cells/s {size * size / real_s:,.0f}")
    differ = real_top1 != base_top1
    line = f"top-1 agreement with the baseline: {agree * 100:.3f} % ({int(differ.sum())} cells differ)"
    if differ.any():
        probs = result.arrays["top_probs"][differ]
        line += f"; largest top-1 - top-2 probability gap there: {float((probs[:, 0] - probs[:, 1]).max()):.2e}"
    print(line)


def section_scaling(lm: LanguageModel, clock: Clock, args: argparse.Namespace) -> None:
    layer = args.mid_layer
    print(f"\n== scaling at layer {layer}: memory flat, time linear ==", flush=True)
    print(f"{'N':>5} {'cells':>8} {'seconds':>9} {'s/1k cells':>10} {'cells/s':>9} {'peak RSS beyond model':>22}"
          + ("  peak GPU beyond model" if lm.device.type == "cuda" else ""))
    for size in args.scaling_sizes:
        if lm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(lm.device)
            gpu_before = torch.cuda.memory_allocated(lm.device)
        with _peak_rss() as stats:
            seconds, result = clock.time(lambda size=size: real(lm, layer, size, SPACING["mid"]))
        beyond = (stats["peak"] - stats["before"]) / 2**20
        cells = size * size
        line = (f"{size:>5} {cells:>8} {seconds:>9.2f} {seconds / cells * 1000:>10.3f} {cells / seconds:>9,.0f} "
                f"{beyond:>18.0f} MiB")
        if lm.device.type == "cuda":
            gpu = (torch.cuda.max_memory_allocated(lm.device) - gpu_before) / 2**20
            line += f"  {gpu:>12.0f} MiB"
        print(line + f"   (batches {result.summary['batch_sizes']})", flush=True)
        del result


def section_dtype(lm: LanguageModel, clock: Clock, args: argparse.Namespace) -> None:
    layer, size = args.mid_layer, args.dtype_size
    cpu = torch.backends.cpu.get_cpu_capability() if lm.device.type == "cpu" else torch.cuda.get_device_name()
    fast_bf16 = (torch.cuda.is_bf16_supported() if lm.device.type == "cuda"
                 else bool(getattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False)()
                           or getattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: False)()))
    print(f"\n== dtype at layer {layer}, {size} x {size}: float32 vs bfloat16 (autocast) on {cpu}; "
          f"native bf16 matrix units: {fast_bf16} ==", flush=True)
    f32_s, f32, bf16_s, bf16 = _median_pair(
        clock, args.repeats,
        lambda: real(lm, layer, size, SPACING["mid"], "float32"),
        lambda: real(lm, layer, size, SPACING["mid"], "bfloat16"),
    )
    agree = float((f32.arrays["top_ids"][..., 0] == bf16.arrays["top_ids"][..., 0]).mean())
    print(f"float32 {f32_s:8.2f} s ({size * size / f32_s:,.0f} cells/s)   bfloat16 {bf16_s:8.2f} s "
          f"({size * size / bf16_s:,.0f} cells/s)   speed-up {f32_s / bf16_s:5.2f}x   "
          f"top-1 agreement {agree * 100:.2f} %")
    flops = _flops_per_cell(lm, layer) * size * size
    peak = _peak_tflops(lm.device, args.peak_tflops)
    achieved = flops / bf16_s / 1e12
    text = f"matrix-product throughput (bf16 run): {achieved:.3f} TFLOP/s"
    if peak:
        text += f" = {achieved / peak * 100:.1f} % of the device's peak bf16 ({peak:g} TFLOP/s dense)"
    print(text)


SECTIONS = {"last": section_last, "mid": section_mid, "scaling": section_scaling, "dtype": section_dtype}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="last,mid,scaling,dtype")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--mid-layer", type=int, default=15)
    parser.add_argument("--scaling-sizes", default="100,200,400")
    parser.add_argument("--dtype-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak dense bf16 TFLOP/s")
    args = parser.parse_args(argv)
    args.scaling_sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    lm = _load(args.model_dir, device)
    print(f"model {lm.name}: {lm.n_layers} layers, d {lm.d_model}, vocab {lm.vocab_size}; device {device}; "
          f"torch threads {torch.get_num_threads()}; loaded in {time.perf_counter() - started:.1f} s; "
          f"clock {args.clock}", flush=True)
    clock = Clock(args.clock, device)
    for name in args.sections.split(","):
        SECTIONS[name.strip()](lm, clock, args)


if __name__ == "__main__":
    main()
