"""Geometry at scale: 256 prompts x 64 tokens on the demo model, captured, stored and reduced.

Usage: ``python bench/geometry_scale.py [--prompts 256] [--tokens 64] [--batch 8] [--keep DIR]``

What a worker does for one run, in this process: ``run_geometry`` (capture the
four points of all 30 blocks for every token, batch by batch, into the stored
float16 states; PCA; the attention/MLP projection and separation; norm
statistics) and then writing every array to an ``ArtifactStore`` (streamed).
Reported: the time per stage, the stored bytes per array, the process's peak
RSS (``ru_maxrss``), its RSS as a warm worker (model loaded, one small run done), and the ratio of the
peak minus that baseline to the stored bytes. The design keeps that ratio near
1: one batch of activations on top of what is stored (the float16 states are
built in place, no float32 copy of all points is ever made, and the store
streams arrays to disk). The logit lens is off unless ``--lens-points N``
(a run computes it for at most ``lens_max_points``; on a CPU at most 20,000). ``--keep DIR`` keeps the artifacts (``DIR/states.npy``
links to the states, for ``bench/pca.py --states``).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from _model import load_bench_model

from latent_atlas.analyses.corpus import sample_sequences
from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.geometry.findings import FINDINGS_PROMPTS
from latent_atlas.lm import resolve_device
from models.store import ArtifactStore

MB = 1024 * 1024


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="keep the artifacts in this directory")
    parser.add_argument("--model-dir", type=Path, help="another model directory (bench/_model.py)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lens-points", type=int, default=0,
                        help="logit lens for this many points (0: off; the run's default is 200,000 on a GPU)")
    args = parser.parse_args()

    lm = load_bench_model(args.model_dir, resolve_device(args.device))
    # A corpus long enough for the windows: the findings prompts, repeated, as one token stream.
    corpus = FINDINGS_PROMPTS * (1 + args.prompts * args.tokens // 300)
    sample = sample_sequences(lm.tokenizer, corpus, args.prompts, args.tokens, seed=0)
    params = GeometryParams(model=lm.name, prompts=sample.texts, token_ids=sample.token_ids,
                            max_tokens=args.tokens, batch_size=args.batch,
                            logit_lens=args.lens_points > 0, lens_max_points=args.lens_points,
                            store_states=True)
    process = psutil.Process()
    # A warm worker: the model loaded and one small forward done (its weights paged in, torch's
    # allocator and the thread pools set up). The baseline is this process's RSS then.
    run_geometry(GeometryParams(model=lm.name, prompts=["warm up"], logit_lens=False), lm)
    gc.collect()
    baseline = process.memory_info().rss
    stages: dict[str, float] = {}
    last = [time.perf_counter(), "start"]

    def progress(fraction: float, stage: str) -> None:
        kind = stage.split(" ")[0] if stage.startswith("capturing") else stage
        now = time.perf_counter()
        stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
        last[:] = [now, kind]

    started = time.perf_counter()
    result = run_geometry(params, lm, progress)
    progress(1.0, "end")
    analysis_s = time.perf_counter() - started
    after_analysis = peak_rss()

    root = args.keep or Path(tempfile.mkdtemp(prefix="atlas-scale-"))
    store = ArtifactStore(str(root))
    started = time.perf_counter()
    stored = {name: store.write_array(array) for name, array in result.arrays.items()}
    store_s = time.perf_counter() - started
    peak = peak_rss()
    total = sum(s.nbytes for s in stored.values())
    n_points = result.summary["n_points"]

    print(f"{lm.name} on {lm.device}, {torch.get_num_threads()} threads: {args.prompts} prompts x "
          f"{args.tokens} tokens = {sum(result.summary['n_tokens']):,} tokens, "
          f"{n_points:,} points of width {lm.d_model}")
    print(f"analysis {analysis_s:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in stages.items() if k != 'start')}); "
          f"store {store_s:.1f} s")
    for name, item in sorted(stored.items(), key=lambda kv: -kv[1].nbytes)[:6]:
        print(f"  {name:24s} {item.dtype:8s} {str(item.shape):18s} {item.nbytes / MB:9.1f} MB")
    print(f"stored in all: {total / MB:,.1f} MB (states {stored['states'].nbytes / MB:,.1f} MB = "
          f"{stored['states'].nbytes / n_points / lm.d_model:.0f} bytes a value)")
    print(f"RSS of the warm worker (model loaded, one forward done): {baseline / MB:,.0f} MB; "
          f"peak RSS: {peak / MB:,.0f} MB "
          f"(after the analysis {after_analysis / MB:,.0f} MB)")
    print(f"peak RSS - model baseline = {(peak - baseline) / MB:,.0f} MB = "
          f"{(peak - baseline) / total:.2f}x the stored bytes; a float32 copy of all states alone would be "
          f"{n_points * lm.d_model * 4 / MB:,.0f} MB ({n_points * lm.d_model * 4 / total:.2f}x)")
    if lm.device.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(lm.device) / MB:,.0f} MB")
    if args.lens_points:
        lens = result.summary["lens"]
        print(f"logit lens: {lens['computed']:,} of {lens['points']:,} points (sampled: {lens['sampled']})")
    print(f"explained variance (PC1-3): {np.round(result.arrays['explained_variance_ratio'], 4).tolist()}")
    if args.keep:
        link = args.keep / "states.npy"
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink((Path(root) / stored["states"].uri).resolve(), link)
        print(f"states kept at {link}")
    views(result.arrays, result.summary)


def views(arrays: dict[str, np.ndarray], summary: dict) -> None:
    """Build the six views as the run page does (its arrays only) and report time and JSON size."""
    from webapp.views.geometry.page import ARRAYS, FIGURES

    shown = {name: arrays[name] for name in ARRAYS if name in arrays}
    print(f"run page arrays (all but the states): {sum(a.nbytes for a in shown.values()) / MB:,.1f} MB")
    for view in FIGURES:
        started = time.perf_counter()
        figure = view.figure(shown, summary)
        built = time.perf_counter() - started
        payload = len(figure.to_json())
        traces = list(figure.data) + [t for frame in figure.frames or () for t in frame.data]
        drawn = sum(0 if getattr(trace, "x", None) is None else len(trace.x) for trace in traces)
        kinds = sorted({trace.type for trace in figure.data})
        print(f"  view {view.label:22s} built in {built:5.2f} s, {payload / MB:6.1f} MB of JSON, "
              f"{drawn:,} points in its traces{' and frames' if figure.frames else ''} ({', '.join(kinds)})")


if __name__ == "__main__":
    main()
