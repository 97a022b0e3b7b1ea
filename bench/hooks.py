"""Hook overhead: a bare forward pass vs one capturing the four points of every block.

Usage: ``python bench/hooks.py [--model demo|tiny] [--batch 8] [--tokens 64] [--repeats 7]``

Both variants run the same causal-LM forward (``use_cache=False``, logits
computed) on the same batch, under ``torch.inference_mode``; repeats are
interleaved (the order alternates every repeat) so drift in machine speed hits
both alike. Reported: median seconds per variant and their ratio. "captured"
includes stacking the points into one (n_layers, 4, batch, seq, d_model)
tensor; "captured, references only" is the hook cost alone. Target: <= 1.15x.

On a shared, busy CPU machine wall-clock times are noisy; ``--clock cpu``
measures the process's CPU time instead (use it with ``--threads 1`` so that
idle worker threads spinning do not count).

On the CPU nearly all of the overhead is page faults, not hooks: keeping
references to 4 x n_layers activations defeats glibc malloc's reuse of freed
memory, so every forward maps and zeroes fresh pages. ``--keep-freed-memory``
re-runs the benchmark with glibc told to keep freed memory (the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_``
environment variables, what a CPU worker can set too); on a GPU the caching
allocator already does this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _model import load_bench_model

from latent_atlas.lm import (
    LanguageModel,
    capture_points,
    load_model,
    resolve_device,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEEP_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def _load(kind: str, device: torch.device, dtype: str, workdir: Path, model_dir: Path | None) -> LanguageModel:
    if kind == "demo":
        return load_bench_model(model_dir, device, dtype)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from tiny_models import build_tiny_model

    return load_model(str(build_tiny_model(workdir / "tiny-llama", "llama")), dtype=dtype, device=device,
                      name="tiny-llama")


def _timer(device: torch.device, clock: str) -> Callable[[Callable[[], object]], float]:
    now = time.process_time if clock == "cpu" else time.perf_counter

    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - started

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "tiny"], default="demo")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="with --model demo: another model directory (see bench/_model.py)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="re-run with glibc malloc keeping freed memory (see the module docstring)")
    args = parser.parse_args(argv)
    if args.keep_freed_memory and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and resolve_device(args.device).type == "cuda":
        parser.error("--clock cpu measures nothing useful on a GPU; use --clock wall")

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        lm = _load(args.model, device, args.dtype, Path(tmp), args.model_dir)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, lm.vocab_size, (args.batch, args.tokens), generator=generator).to(device)
    mask = torch.ones_like(input_ids)

    def bare() -> object:
        with torch.inference_mode():
            return lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    def captured() -> object:
        capture = capture_points(lm, input_ids, mask, logits=True)
        return capture.stacked(), capture.logits

    def references() -> object:
        return capture_points(lm, input_ids, mask, logits=True)

    variants: dict[str, Callable[[], object]] = {
        "bare": bare, "captured": captured, "captured, references only": references,
    }
    timer = _timer(device, args.clock)
    for _ in range(args.warmup):
        for fn in variants.values():
            timer(fn)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timer(variants[name]))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"model {lm.name} ({lm.n_layers} layers, d_model {lm.d_model}), device {device}, "
          f"dtype {args.dtype}, batch {args.batch} x {args.tokens} tokens, threads {torch.get_num_threads()}, "
          f"{args.clock} clock{', malloc keeps freed memory' if args.keep_freed_memory else ''}")
    for name, values in times.items():
        spread = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:<27} median {medians[name]:.4f} s  [{spread}]")
    print(f"  hook cost alone: {medians['captured, references only'] / medians['bare']:.3f}x")
    ratio = medians["captured"] / medians["bare"]
    print(f"hook overhead: {ratio:.2f}x (bare {medians['bare']:.3f} s, captured {medians['captured']:.3f} s, "
          f"median of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
