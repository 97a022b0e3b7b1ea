"""SAE harvest (run kind ``sae``): throughput vs the floor, vs the seed's approach, memory, co-firing.

Usage::

    python bench/sae.py [--sections throughput,reducers,seed,memory,memory_reducers,cofire] [--tokens 20000] [--layer 6]
                        [--d-sae 4608] [--k 64] [--memory-tokens 100000,400000,1600000]
                        [--memory-layer 0] [--cofire-latents 16384] [--cofire-tokens 1000000]
                        [--model-dir DIR] [--device auto] [--clock wall|cpu] [--repeats N]

The SAE is a random sae-lens ``TopKSAE`` (``--k`` latents fire per token, so L0 is
exact) hooked at ``blocks.{layer}.hook_resid_post`` of the demo model (or
``--model-dir``); no trained SAE is needed for speed or memory.

Sections (ratios are against baselines measured in the same run):

* ``throughput``: the harvest with every reducer (top-k, intervals, histogram, stats,
  exact co-firing, CSC) vs the floor: the same batches through the same forward that
  stops at the hook plus ``sae.encode`` and nothing else. Target: >= 0.8x. Two harvests:
  as ``run_sae`` runs it (numpy reducers on a CPU, torch reducers on a GPU) and with the
  torch reducers (``HarvestReducers(device=...)``) on the model's device.
* ``reducers``: per-reducer rates in non-zeros per second on recorded batches: numpy
  top-k + histogram + stats vs the same in torch on the device, the interval samples in
  numpy (host, on a CPU) and in torch on the device (``DeviceIntervals``, off the CPU),
  and the CSC writer, which stays on the host (its rate bounds a GPU harvest; see also
  ``bench/sae_host.py``).
* ``seed``: the seed's approach on the same non-zeros (recorded once from the model):
  write every non-zero activation to shards, then concatenate them, build per-latent
  indices by sorting, and sort each latent for its top-k; vs our streaming reducers
  (top-k + CSC, with the numpy and with the torch top-k; and every reducer). Time and
  bytes written.
* ``memory``: the harvest (all reducers + CSC) at each ``--memory-tokens`` on the model
  at ``--memory-layer`` (layer 0 keeps the CPU time sane): peak anonymous memory
  (``RssAnon``; the CSC's temporary files are page cache, not heap) beyond the loaded
  model + SAE, and seconds. Flat in the corpus size is the target.
* ``memory_reducers``: the same without the model (synthetic batches, every reducer
  including co-firing, and the CSC): the harvest's own state at each size.
* ``cofire``: exact co-firing edges for ``--cofire-latents`` latents over
  ``--cofire-tokens`` tokens of synthetic activations (L0 = ``--k``, latent popularity
  Zipf-like): seconds for the accumulation and the edges, and peak memory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _model import load_bench_model  # noqa: E402

from latent_atlas.analyses.sae.activations import activations_at  # noqa: E402
from latent_atlas.analyses.sae.cofire import CoFiring  # noqa: E402
from latent_atlas.analyses.sae.harvest import CscWriter, harvest  # noqa: E402
from latent_atlas.analyses.sae.reducers import HarvestReducers, SparseBatch, TopK  # noqa: E402
from latent_atlas.analyses.sae.source import sae_hook  # noqa: E402
from latent_atlas.lm import resolve_device  # noqa: E402


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def peak_anon(period: float = 0.005) -> Iterator[dict[str, int]]:
    """``before`` / ``peak`` RssAnon (bytes) over the block, sampled every ``period`` s."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    stats = {"before": _status("RssAnon")}
    stats["peak"] = stats["before"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            stats["peak"] = max(stats["peak"], _status("RssAnon"))
            time.sleep(period)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join()


def random_sae(d_in: int, d_sae: int, k: int, layer: int, device: torch.device):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post")))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * d_in ** -0.5)
    return sae.to(device).eval()


def corpus(lm, n_tokens: int, context_len: int = 128, seed: int = 0) -> list[list[int]]:
    """Token sequences of the demo corpus when present, else seeded random ids (same cost)."""
    from latent_atlas.analyses.corpus import read_corpus, sample_sequences
    from latent_atlas.analyses.sae.corpus_demo import demo_corpus_path
    from latent_atlas.settings import get_settings

    path = demo_corpus_path(get_settings().data_dir)
    n = -(-n_tokens // context_len)
    if path.is_file():
        docs = read_corpus(path.name, path.read_bytes(), "jsonl")
        seqs = sample_sequences(lm.tokenizer, docs, n, context_len, seed).token_ids
        if sum(map(len, seqs)) >= n_tokens:
            return seqs
    rng = np.random.default_rng(seed)
    return rng.integers(100, lm.vocab_size, (n, context_len)).tolist()


def floor_pass(lm, sae, hook, sequences: list[list[int]], batch_tokens: int) -> None:
    """Forward to the hook + ``sae.encode`` on the harvest's batches; nothing kept."""
    per = max(1, batch_tokens // len(sequences[0]))
    for start in range(0, len(sequences), per):
        ids = torch.tensor(sequences[start:start + per])
        acts = activations_at(lm, ids, None, hook)
        with torch.no_grad():
            feats = sae.encode(acts[:, 1:].reshape(-1, acts.shape[-1]).to(torch.float32))
        if feats.device.type == "cuda":
            torch.cuda.synchronize()


CLOCK = time.perf_counter


def run_harvest(lm, sae, hook, sequences, batch_tokens: int, cofire: bool = True,
                device: torch.device | None = None) -> tuple[float, int]:
    d = sae.cfg.d_sae
    reducers = HarvestReducers(d, top_k=20, interval_bins=10, interval_per_bin=5, hist_bins=48, cofire=cofire,
                               device=device)
    csc = CscWriter(d)
    start = CLOCK()
    harvest(lm, sae, hook, sequences, reducers, batch_tokens=batch_tokens, skip_positions=1,
            progress=lambda f, s: None, csc=csc)
    ptr, tok, val = csc.finish()
    reducers.result(10)
    return CLOCK() - start, int(tok.size)


def section_throughput(lm, args) -> None:
    sae = random_sae(lm.d_model, args.d_sae, args.k, args.layer, lm.device)
    hook = sae_hook(sae)
    seqs = corpus(lm, args.tokens)
    n = sum(map(len, seqs))
    floor_pass(lm, sae, hook, seqs[:2], args.batch_tokens)  # warm-up
    floors, reals, devs = [], [], []
    device = torch.device(lm.device)
    for _ in range(args.repeats):  # alternated, so a load change hits all three
        floors.append(_timed(lambda: floor_pass(lm, sae, hook, seqs, args.batch_tokens)))
        reals.append(run_harvest(lm, sae, hook, seqs, args.batch_tokens,
                                 device=None if device.type == "cpu" else device)[0])
        devs.append(run_harvest(lm, sae, hook, seqs, args.batch_tokens, device=device)[0])
    t_floor, t_real, t_dev = min(floors), min(reals), min(devs)
    print(f"throughput: {n:,} tokens, layer {args.layer}, d_sae {args.d_sae:,}, L0 {args.k}, {lm.device}, "
          f"clock {args.clock} (cpu: process CPU seconds, i.e. the work, robust to a shared machine's load)")
    print(f"  floor (forward to the hook + encode): {t_floor:.2f} s = {n / t_floor:,.0f} tokens/s")
    print(f"  harvest as run_sae runs it:           {t_real:.2f} s = {n / t_real:,.0f} tokens/s "
          f"({'numpy reducers' if device.type == 'cpu' else 'torch reducers on ' + str(device)})")
    print(f"  harvest, torch reducers on {str(device):<9} {t_dev:.2f} s = {n / t_dev:,.0f} tokens/s")
    print(f"  ratio harvest / floor throughput: {t_floor / t_real:.2f}x as run (target >= 0.8x), "
          f"{t_floor / t_dev:.2f}x with the torch reducers on {device}")


def _timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def record_batches(lm, sae, hook, seqs, batch_tokens: int) -> list[SparseBatch]:
    """The harvest's SparseBatches, recorded (what both approaches consume)."""
    recorded: list[SparseBatch] = []

    class Recorder(HarvestReducers):
        def __init__(self) -> None:  # records only (host-side, every reducer)
            self.on_device = None

        def update(self, batch: SparseBatch) -> None:
            recorded.append(batch)

    harvest(lm, sae, hook, seqs, Recorder(), batch_tokens=batch_tokens, skip_positions=1,
            progress=lambda f, s: None)
    return recorded


def seed_approach(batches: list[SparseBatch], d: int, k: int, directory: Path) -> int:
    """Shards of every non-zero, then per-latent indices by sorting, then top-k per latent; bytes written."""
    written = 0
    for number, b in enumerate(batches):
        for name, array in (("token", b.token), ("latent", b.latent), ("value", b.value)):
            path = directory / f"shard{number:05d}_{name}.npy"
            np.save(path, array)
            written += path.stat().st_size
    tokens = np.concatenate([np.load(directory / f"shard{i:05d}_token.npy") for i in range(len(batches))])
    latents = np.concatenate([np.load(directory / f"shard{i:05d}_latent.npy") for i in range(len(batches))])
    values = np.concatenate([np.load(directory / f"shard{i:05d}_value.npy") for i in range(len(batches))])
    order = np.argsort(latents, kind="stable")
    ptr = np.searchsorted(latents[order], np.arange(d + 1))
    for name, array in (("index_order", order), ("index_ptr", ptr)):
        path = directory / f"{name}.npy"
        np.save(path, array)
        written += path.stat().st_size
    top = np.full((d, k), -1, np.int64)
    for lat in range(d):
        rows = order[ptr[lat]:ptr[lat + 1]]
        best = rows[np.lexsort((tokens[rows], -values[rows]))[:k]]
        top[lat, :best.size] = tokens[best]
    return written


def section_seed(lm, args) -> None:
    sae = random_sae(lm.d_model, args.d_sae, args.k, args.layer, lm.device)
    seqs = corpus(lm, args.tokens)
    batches = record_batches(lm, sae, sae_hook(sae), seqs, args.batch_tokens)
    nnz = sum(b.value.size for b in batches)
    d = args.d_sae
    scratch = Path(tempfile.mkdtemp(prefix="sae-bench-"))
    try:
        start = time.perf_counter()
        seed_bytes = seed_approach(batches, d, 20, scratch)
        t_seed = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch)
    start = time.perf_counter()
    topk, csc = TopK(d, 20), CscWriter(d)
    for b in batches:
        topk.update(b)
        csc.add(b)
    ptr, tok, val = csc.finish()
    t_ours = time.perf_counter() - start
    ours_bytes = nnz * 12 + tok.nbytes + val.nbytes + ptr.nbytes  # temp COO + the CSC arrays
    from latent_atlas.analyses.sae.device_reducers import DeviceTopK

    start = time.perf_counter()
    topk_t, csc = DeviceTopK(d, 20), CscWriter(d)
    for b in batches:
        topk_t.update_sparse(torch.from_numpy(b.latent), torch.from_numpy(b.token), torch.from_numpy(b.value))
        csc.add(b)
    topk_t.to_numpy()
    ptr, tok, val = csc.finish()
    t_torch = time.perf_counter() - start
    start = time.perf_counter()
    every = HarvestReducers(d, top_k=20, interval_bins=10, interval_per_bin=5, hist_bins=48, cofire=False)
    for b in batches:
        every.update(b)
    every.result(10)
    t_every = time.perf_counter() - start
    print(f"seed approach vs streaming, {nnz:,} non-zeros ({d:,} latents, {len(batches)} batches):")
    print(f"  seed: shards + per-latent index + sort for top-k: {t_seed:.2f} s, {seed_bytes / 2**20:,.1f} MiB written")
    print(f"  ours: top-k reducer + CSC (temp file + arrays):     {t_ours:.2f} s, {ours_bytes / 2**20:,.1f} MiB written")
    print(f"  ours: torch top-k (CPU) + CSC:                       {t_torch:.2f} s, {ours_bytes / 2**20:,.1f} MiB written")
    print(f"  ours: every reducer but co-firing, no CSC:          {t_every:.2f} s, 0 MiB written")
    print(f"  ratio seed / ours (top-k + CSC): {t_seed / t_ours:.2f}x time (numpy top-k), "
          f"{t_seed / t_torch:.2f}x (torch top-k); {seed_bytes / ours_bytes:.2f}x bytes")


def section_reducers(lm, args) -> None:
    """Per-reducer rates (non-zeros per CPU/wall second) on the recorded batches: numpy vs torch.

    On a GPU the torch part runs on the device; what stays on the host per non-zero is
    the copy of the non-zeros, the interval samples and the CSC writer: their rate bounds
    a GPU harvest (tokens/s <= rate / L0).
    """
    from latent_atlas.analyses.sae.device_intervals import (
        DeviceIntervals,
        supports_device_intervals,
    )
    from latent_atlas.analyses.sae.device_reducers import DeviceReducerSet
    from latent_atlas.analyses.sae.intervals import Intervals
    from latent_atlas.analyses.sae.reducers import Histogram, LatentStats

    sae = random_sae(lm.d_model, args.d_sae, args.k, args.layer, lm.device)
    batches = record_batches(lm, sae, sae_hook(sae), corpus(lm, args.tokens), args.batch_tokens)
    nnz = sum(b.value.size for b in batches)
    d = args.d_sae
    device = torch.device(lm.device)
    tensors = [(torch.from_numpy(b.latent).to(device), torch.from_numpy(b.token).to(device),
                torch.from_numpy(b.value).to(device), b.n_tokens) for b in batches]

    def numpy_set() -> None:
        parts = (TopK(d, 20), Histogram(d, 48), LatentStats(d))
        for b in batches:
            for part in parts:
                part.update(b)

    def torch_set() -> None:
        part = DeviceReducerSet(d, top_k=20, hist_bins=48, cofire=False, device=device)
        for latent, token, value, n in tensors:
            part.update_sparse(latent, token, value, n)
        part.topk.to_numpy()
        part.hist.to_numpy()
        part.stats.to_numpy()

    def intervals() -> None:
        part = Intervals(d, 10, 5)
        for b in batches:
            part.update(b)

    def device_intervals() -> None:
        part = DeviceIntervals(d, 10, 5, device=device)
        for latent, token, value, _ in tensors:
            part.update_sparse(latent, token, value)
        part.to_numpy()

    def csc() -> None:
        writer = CscWriter(d)
        for b in batches:
            writer.add(b)
        writer.finish()

    print(f"reducers on {nnz:,} recorded non-zeros ({d:,} latents, L0 {args.k}, {len(batches)} batches), "
          f"clock {args.clock}:")
    rows = [("numpy top-k + histogram + stats", numpy_set), (f"torch top-k + histogram + stats on {device}", torch_set),
            ("interval samples, numpy (host)", intervals)]
    if supports_device_intervals(device):  # not on mps (no float64)
        rows.append((f"interval samples, torch on {device}", device_intervals))
    for name, fn in (*rows, ("CSC writer incl. finish (host)", csc)):
        seconds = min(_timed(fn) for _ in range(args.repeats))
        print(f"  {name:<42} {seconds:6.2f} s = {nnz / seconds / 1e6:6.2f} M non-zeros/s")


def section_memory(lm, args) -> None:
    sae = random_sae(lm.d_model, args.d_sae, args.k, args.memory_layer, lm.device)
    hook = sae_hook(sae)
    print(f"memory: layer {args.memory_layer}, d_sae {args.d_sae:,}, L0 {args.k}; peak RssAnon beyond model + SAE")
    for n in args.memory_tokens:
        seqs = corpus(lm, n)
        gc.collect()
        with peak_anon() as stats:
            seconds, nnz = run_harvest(lm, sae, hook, seqs, args.batch_tokens, cofire=False)
        tokens_bytes = sum(map(len, seqs)) * 4 * 4  # the sequences list is not counted as harvest state
        print(f"  {n:>10,} tokens: {seconds:7.1f} s, {n / seconds:8,.0f} tokens/s, peak +"
              f"{(stats['peak'] - stats['before']) / 2**20:8.1f} MiB (CSC on disk: {nnz * 8 / 2**20:,.0f} MiB; "
              f"token arrays {tokens_bytes / 2**20:.0f} MiB)")
        del seqs


def section_memory_reducers(args) -> None:
    """Every reducer (co-firing included) + the CSC on synthetic batches: the harvest state alone."""
    d = args.d_sae
    print(f"memory, reducers + CSC only (synthetic batches, d_sae {d:,}, L0 {args.k}); peak RssAnon")
    for n in args.memory_tokens:
        gc.collect()
        with peak_anon() as stats:
            start = time.perf_counter()
            reducers = HarvestReducers(d, top_k=20, interval_bins=10, interval_per_bin=5, hist_bins=48)
            csc = CscWriter(d)
            for batch in synthetic_batches(d, n, args.k):
                reducers.update(batch)
                csc.add(batch)
            ptr, tok, val = csc.finish()
            reducers.result(10)
            seconds = time.perf_counter() - start
        print(f"  {n:>10,} tokens: {seconds:7.1f} s, {n / seconds:8,.0f} tokens/s, peak +"
              f"{(stats['peak'] - stats['before']) / 2**20:8.1f} MiB (CSC on disk {tok.size * 8 / 2**20:,.0f} MiB)")
        del reducers, csc, ptr, tok, val


def synthetic_batches(d: int, n_tokens: int, k: int, batch: int = 4096, seed: int = 0) -> Iterator[SparseBatch]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, d + 1) ** 0.8
    popularity /= popularity.sum()
    for start in range(0, n_tokens, batch):
        n = min(batch, n_tokens - start)
        lat = rng.choice(d, size=(n, k), p=popularity)
        lat.sort(axis=1)
        keep = np.ones_like(lat, dtype=bool)
        keep[:, 1:] = lat[:, 1:] != lat[:, :-1]
        rows = np.repeat(np.arange(n), k).reshape(n, k)[keep]
        yield SparseBatch((rows + start).astype(np.int64), lat[keep].astype(np.int64),
                          rng.exponential(1.0, rows.size).astype(np.float32), start, n)


def section_cofire(args) -> None:
    d, n = args.cofire_latents, args.cofire_tokens
    with peak_anon() as stats:
        start = time.perf_counter()
        reducer = CoFiring(d)
        for batch in synthetic_batches(d, n, args.k):
            reducer.update(batch)
        t_acc = time.perf_counter() - start
        start = time.perf_counter()
        edges = reducer.edges(10)
        t_edges = time.perf_counter() - start
    print(f"co-firing: {d:,} latents over {n:,} tokens (L0 {args.k}, Zipf-like popularity)")
    print(f"  accumulate: {t_acc:.1f} s ({n / t_acc:,.0f} tokens/s); edges (Jaccard + co-activation): {t_edges:.1f} s")
    print(f"  peak +{(stats['peak'] - stats['before']) / 2**20:,.0f} MiB (state 8 d^2 = {8 * d * d / 2**20:,.0f} MiB); "
          f"latents with a Jaccard edge: {np.mean(edges['edge_jaccard_idx'][:, 0] >= 0):.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="throughput,seed,memory,cofire")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--memory-tokens", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--memory-layer", type=int, default=0)
    parser.add_argument("--cofire-latents", type=int, default=16_384)
    parser.add_argument("--cofire-tokens", type=int, default=1_000_000)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    sections = args.sections.split(",")
    lm = None
    if set(sections) - {"cofire", "memory_reducers"}:
        lm = load_bench_model(args.model_dir, resolve_device(args.device))
    for section in sections:
        if section == "cofire":
            section_cofire(args)
        elif section == "memory_reducers":
            section_memory_reducers(args)
        else:
            {"throughput": section_throughput, "seed": section_seed, "memory": section_memory,
             "reducers": section_reducers}[section](lm, args)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
