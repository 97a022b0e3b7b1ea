"""SAE harvest: the host-side work per batch (interval samples, CSC writer) vs the CPU floor, same run.

Usage::

    python bench/sae_host.py [--d-sae 16384] [--k 64] [--batch-tokens 4096,16384] [--tokens 65536]
                             [--d-in 576] [--floor-tokens 8192] [--clock cpu|wall] [--repeats 2]
                             [--cofire-latents 4096] [--device cpu|cuda]

On a GPU the forward, ``sae.encode`` and the torch reducers run on the device, and the
host does, per batch, in one worker thread overlapped with the device: what the
non-zeros need there. This bench times that host work at a realistic shape (synthetic
non-zeros, token-major as ``torch.nonzero`` gives them, ``--k`` latents per token drawn
with Zipf-like popularity, exponential values) and prints tokens/s, which bounds a GPU
harvest's tokens/s whatever the device's speed:

* ``before``: what the harvest's host thread did per batch up to now: numpy
  ``Intervals.update`` + ``CscWriter.add`` (sortedness check, argsort fallback,
  record packing, write, bincount), and ``CscWriter.finish`` (the latent-major
  counting sort at the end) per token;
* ``after``: ``CscWriter.add_packed`` (records packed in torch where the non-zeros
  are, one transfer, no check) and ``finish`` (a compiled two-pass counting sort);
  the interval samples run in torch on the device (``DeviceIntervals``): the ``device``
  rows time it and the packing on ``--device`` (on CPU torch for reference only);
* the floor: ``sae.encode`` alone (a random sae-lens TopKSAE ``--d-in`` -> ``--d-sae``)
  on this CPU over the same tokens; the real floor adds the forward to the hook, so
  this is an upper bound of the CPU floor's tokens/s.

Last, ``DeviceCoFiring`` on one batch of the first ``--batch-tokens`` with
``--cofire-latents`` latents: the dense matmuls vs the scatter-added pairs (and
``auto``'s pick), on ``--device``.

Ratios are against the floor measured in the same run. ``--clock cpu`` (process CPU
seconds, all threads) is the work, robust to a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_atlas.analyses.sae.harvest import CscWriter  # noqa: E402
from latent_atlas.analyses.sae.intervals import Intervals  # noqa: E402
from latent_atlas.analyses.sae.reducers import SparseBatch  # noqa: E402

CLOCK: Callable[[], float] = time.process_time


def sorted_batches(d: int, n_tokens: int, k: int, batch: int, seed: int = 0) -> list[SparseBatch]:
    """Token-major non-zeros (latents ascending in a token), as ``torch.nonzero`` of a dense batch."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, d + 1) ** 0.8
    cdf = np.cumsum(popularity / popularity.sum())
    out = []
    for start in range(0, n_tokens, batch):
        n = min(batch, n_tokens - start)
        lat = np.minimum(np.searchsorted(cdf, rng.random((n, k))), d - 1)
        lat.sort(axis=1)
        keep = np.ones_like(lat, dtype=bool)
        keep[:, 1:] = lat[:, 1:] != lat[:, :-1]
        rows = np.repeat(np.arange(n), k).reshape(n, k)[keep]
        out.append(SparseBatch((rows + start).astype(np.int64), lat[keep].astype(np.int64),
                               rng.exponential(1.0, rows.size).astype(np.float32), start, n))
    return out


def timed(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        best = min(best, CLOCK() - start)
    return best


def floor_encode(d_in: int, d_sae: int, k: int, n_tokens: int, batch: int) -> Callable[[], None]:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)).eval()
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * d_in ** -0.5)
    rows = [torch.randn(min(batch, n_tokens - s), d_in) for s in range(0, n_tokens, batch)]

    def run() -> None:
        with torch.no_grad():
            for x in rows:
                sae.encode(x)

    return run


def finish_argsort(writer: CscWriter) -> None:
    """The previous ``CscWriter.finish`` (numpy stable argsort per chunk): the baseline of the new one."""
    ptr = np.zeros(writer.d_sae + 1, np.int64)
    np.cumsum(writer.count, out=ptr[1:])
    tokens, values = np.zeros(writer.nnz, np.int32), np.zeros(writer.nnz, np.float32)
    writer.file.flush()
    source = np.memmap(writer.file, dtype=[("t", "<i4"), ("l", "<i4"), ("v", "<f4")], mode="r",
                       shape=(writer.nnz,))
    cursor = ptr[:-1].copy()
    for start in range(0, writer.nnz, 1 << 22):
        chunk = np.asarray(source[start:start + (1 << 22)])
        order = np.argsort(chunk["l"], kind="stable")
        lat = chunk["l"][order].astype(np.int64)
        starts = np.flatnonzero(np.r_[True, lat[1:] != lat[:-1]])
        rank = np.arange(lat.size) - np.repeat(starts, np.diff(np.r_[starts, lat.size]))
        where = cursor[lat] + rank
        tokens[where] = chunk["t"][order]
        values[where] = chunk["v"][order]
        cursor += np.bincount(lat, minlength=writer.d_sae)
    del source
    writer.file.close()


def section(args: argparse.Namespace, batch: int, floor_rate: float) -> None:
    from latent_atlas.analyses.sae.device_intervals import DeviceIntervals

    d, n = args.d_sae, args.tokens
    batches = sorted_batches(d, n, args.k, batch)
    nnz = sum(b.value.size for b in batches)
    # what came to the host per batch before: (row, latent) int64 pairs and values; the rows' global indices
    moved = [(np.stack([b.token - b.token_start, b.latent], 1), b.value, np.arange(b.token_start,
              b.token_start + b.n_tokens)) for b in batches]
    device = torch.device(args.device)
    tensors = [(torch.from_numpy(b.latent).to(device), torch.from_numpy(b.token).to(device),
                torch.from_numpy(b.value).to(device)) for b in batches]
    records = [CscWriter.pack(token, latent, value).cpu().numpy() for latent, token, value in tensors]

    def assemble() -> None:
        for where, value, global_row in moved:
            SparseBatch(global_row[where[:, 0]], where[:, 1].astype(np.int64), value, 0, 1)

    def intervals() -> None:
        part = Intervals(d, 10, 5)
        for b in batches:
            part.update(b)

    def csc_add() -> CscWriter:
        writer = CscWriter(d)
        for b in batches:
            writer.add(b)
        return writer

    def csc_packed() -> CscWriter:
        writer = CscWriter(d)
        for rec in records:
            writer.add_packed(rec)
        return writer

    def synced(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    @synced
    def pack() -> None:
        for latent, token, value in tensors:
            CscWriter.pack(token, latent, value).cpu()

    @synced
    def device_intervals() -> None:
        part = DeviceIntervals(d, 10, 5, device=device)
        for latent, token, value in tensors:
            part.update_sparse(latent, token, value)

    def finish_of(make: Callable[[], CscWriter], finish: Callable[[CscWriter], object]) -> float:
        writers = [make() for _ in range(args.repeats)]
        return timed(lambda: finish(writers.pop()), args.repeats)

    csc_add().finish()  # compiles the scatter kernel outside the clock
    t = {
        "before: SparseBatch assembly (main thread)": timed(assemble, args.repeats),
        "before: Intervals.update (numpy, worker)": timed(intervals, args.repeats),
        "before: CscWriter.add (worker)": timed(lambda: csc_add().file.close(), args.repeats),
        "before: finish, numpy argsort (end)": finish_of(csc_add, finish_argsort),
        "after: CscWriter.add_packed (worker)": timed(lambda: csc_packed().file.close(), args.repeats),
        "after: finish, compiled scatter (end)": finish_of(csc_packed, CscWriter.finish),
        f"device: CscWriter.pack + transfer, {device}": timed(pack, args.repeats),
        f"device: DeviceIntervals, {device}": timed(device_intervals, args.repeats),
    }
    print(f"batches of {batch:,} tokens: {n:,} tokens, {nnz:,} non-zeros (L0 {nnz / n:.1f}), d_sae {d:,}, "
          f"clock {args.clock}")
    for name, seconds in t.items():
        rate = n / seconds
        print(f"  {name:<44} {seconds:6.3f} s = {rate:>11,.0f} tokens/s = {rate / floor_rate:7.1f}x the "
              f"encode floor")
    keys = list(t)
    before = max(t[keys[0]], t[keys[1]] + t[keys[2]]) + t[keys[3]]
    after = t[keys[4]] + t[keys[5]]
    print(f"  host bound of a GPU harvest (device infinitely fast; main and worker threads overlap, finish "
          f"after): before {n / before:,.0f} tokens/s, after {n / after:,.0f} tokens/s ({before / after:.1f}x)")


def section_cofire(args: argparse.Namespace) -> None:
    """``DeviceCoFiring`` per batch: dense matmuls over the active latents vs scatter-added pairs."""
    from latent_atlas.analyses.sae.device_reducers import DeviceCoFiring

    d, device, batch = args.cofire_latents, torch.device(args.device), args.batch_tokens[0]
    b = sorted_batches(d, batch, args.k, batch)[0]
    feats = torch.zeros((batch, d), dtype=torch.float32)
    feats[torch.from_numpy(b.token), torch.from_numpy(b.latent)] = torch.from_numpy(b.value)
    feats = feats.to(device)
    active = int((feats != 0).any(0).sum())
    print(f"device co-firing, one batch of {batch:,} tokens, {d:,} latents ({active:,} active), L0 "
          f"{b.value.size / batch:.1f}, on {device}, clock {args.clock}:")
    for method in ("matmul", "pairs", "auto"):
        part = DeviceCoFiring(d, device, method=method)

        def run(part: DeviceCoFiring = part) -> None:
            part.update(feats)
            if device.type == "cuda":
                torch.cuda.synchronize()

        seconds = timed(run, args.repeats)
        print(f"  {method:<7} {seconds:7.3f} s = {batch / seconds:>11,.0f} tokens/s")
        del part


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=16_384)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--floor-tokens", type=int, default=8192)
    parser.add_argument("--batch-tokens", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--cofire-latents", type=int, default=4096, help="0: skip the co-firing section")
    parser.add_argument("--device", default="cpu", help="where the device rows run (cuda: use --clock wall)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    floor_seconds = timed(floor_encode(args.d_in, args.d_sae, args.k, args.floor_tokens, 4096), args.repeats)
    floor_rate = args.floor_tokens / floor_seconds
    print(f"floor: sae.encode on this CPU ({args.d_in} -> {args.d_sae:,}, top-{args.k}), {args.floor_tokens:,} tokens: "
          f"{floor_seconds:.2f} s = {floor_rate:,.0f} tokens/s ({torch.get_num_threads()} torch threads)")
    for batch in args.batch_tokens:
        section(args, batch, floor_rate)
        sys.stdout.flush()
    if args.cofire_latents:
        section_cofire(args)


if __name__ == "__main__":
    main()
