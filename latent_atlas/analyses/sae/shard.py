"""A sharded SAE harvest: slices of the run's sequences, merged by the reducers' merge and CSC concatenation.

``SAE_SHARDS`` implements ``latent_atlas.analyses.shards.ShardableKind`` for
``sae`` runs. Invariants:

* work units are the tokens asked for (``n_tokens``); a shard spec is
  ``{"index", "count"}``: the shard harvests harvest batches
  ``index * B // count`` up to ``(index + 1) * B // count`` of the run's
  ``B`` batches, where the corpus (``run.load_corpus``: deterministic for the
  params and tokenizer) and the batches (``per_batch = batch_tokens //
  longest sequence``, as ``harvest.harvest`` cuts them) are the unsharded
  run's. So every batch, its padding and its outlier rule (a batch median)
  are the same as unsharded; a shard may be empty when the corpus has fewer
  batches than shards;
* a shard harvests with its token offset: reducers and the CSC see *global*
  token indices (``harvest(token_offset=...)``), ``token_doc`` is the run's sequence index;
* a shard's result holds its reducer states (``stats.*``, ``topk.*``,
  ``hist.*``, ``intervals.*``, ``cofire.*``: numeric arrays, the intervals'
  hash keys as uint64), its token arrays and its CSC (``lat_ptr``,
  ``lat_token`` global, ``lat_value``);
* ``merge`` = ``HarvestReducers.merge`` (folded left over the parts) + token
  concatenation + CSC concatenation per latent (tokens stay ascending within
  a latent); exact and associative for counts, top-k, histograms, intervals,
  maxima, tokens and the CSC; the float sums (``stats.total`` float64,
  ``cofire.product`` float32) agree up to summation order;
* ``finish`` loads the SAE (like ``run_sae``: ``runs`` / ``sae_loader``) and
  runs ``run.describe_harvest`` (decoder geometry, logit effects, labels).
  Against the unsharded ``run_sae`` on the same machine: every array equal,
  except ``mean_act`` (float64 sums: a float32 ulp at most) and
  ``edge_coact_val`` (float32 product sums in another order: relative about
  ``sqrt(tokens) * 2**-24``, 3.1e-5 measured over 400,000 tokens; an edge
  whose value ties within that may swap with its neighbour); the summary
  equal but ``timings``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from latent_atlas.analyses.base import Progress, Result, no_progress
from latent_atlas.analyses.sae.harvest import (
    OUTLIER_FACTOR,
    CscWriter,
    HarvestTokens,
    harvest,
    scratch_array,
)
from latent_atlas.analyses.sae.params import SaeParams
from latent_atlas.analyses.sae.reducers import HarvestReducers
from latent_atlas.analyses.sae.run import (
    cofire_computed,
    describe_harvest,
    load_checked_sae,
    load_corpus,
    make_reducers,
)
from latent_atlas.analyses.shard_base import ShardResult, check_parts, check_spec

__all__ = ["SAE_SHARDS", "SaeShards", "merge_csc", "reducer_arrays", "reducers_from_arrays"]

TOKEN_ARRAYS = ("token_id", "token_doc", "token_pos")
STATE = {
    "stats": ("count", "total", "max"),
    "topk": ("value", "token"),
    "hist": ("counts",),
    "intervals": ("exponent", "max", "key", "token", "value"),
    "cofire": ("count", "product"),
}


def reducer_arrays(reducers: HarvestReducers) -> dict[str, np.ndarray]:
    """A host-side copy of every reducer's state as named numeric arrays (``finish_device`` first)."""
    reducers.finish_device()
    arrays = {"stats.n_tokens": np.array([reducers.stats.n_tokens], np.int64)}
    for part, fields in STATE.items():
        reducer = getattr(reducers, part)
        if reducer is not None:
            arrays.update({f"{part}.{field}": getattr(reducer, field) for field in fields})
    return arrays


def reducers_from_arrays(params: SaeParams, d_sae: int, arrays: dict[str, np.ndarray]) -> HarvestReducers:
    """Host-side ``HarvestReducers`` holding the state ``reducer_arrays`` gave."""
    reducers = HarvestReducers(d_sae, top_k=params.top_k, interval_bins=params.interval_bins,
                               interval_per_bin=params.interval_per_bin, hist_bins=params.hist_bins,
                               seed=params.seed, cofire="cofire.count" in arrays)
    reducers.stats.n_tokens = int(arrays["stats.n_tokens"][0])
    for part, fields in STATE.items():
        reducer = getattr(reducers, part)
        if reducer is None:
            continue
        for field in fields:
            current = getattr(reducer, field)
            value = np.asarray(arrays[f"{part}.{field}"])
            if value.shape != current.shape:
                raise ValueError(f"reducer state {part}.{field} has shape {value.shape}, expected {current.shape}")
            setattr(reducer, field, value.astype(current.dtype, copy=True))
    return reducers


def merge_csc(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent-major CSC of token-ordered parts: per latent, part 0's entries, then part 1's, ...

    Tokens stay ascending within a latent when the parts cover increasing token
    ranges. The output arrays are mapped on temporary files (``scratch_array``).
    """
    counts = [np.diff(ptr) for ptr, _, _ in parts]
    d = counts[0].size
    total = np.sum(counts, axis=0)
    ptr = np.zeros(d + 1, np.int64)
    np.cumsum(total, out=ptr[1:])
    tokens = scratch_array(int(ptr[-1]), np.int32)
    values = scratch_array(int(ptr[-1]), np.float32)
    before = ptr[:-1].copy()  # where the next part's entries of each latent go
    for (part_ptr, part_tokens, part_values), count in zip(parts, counts, strict=True):
        if part_tokens.size:
            latent = np.repeat(np.arange(d, dtype=np.int64), count)
            where = before[latent] + (np.arange(part_tokens.size, dtype=np.int64) - part_ptr[latent])
            tokens[where] = part_tokens
            values[where] = part_values
        before += count
    return ptr, tokens, values


class SaeShards:
    name = "sae"
    min_units_per_shard = 200_000  # tokens: below that one worker harvests in a few minutes

    def work_units(self, params: SaeParams) -> int:
        return params.n_tokens

    def split(self, params: SaeParams, n: int) -> list[dict[str, Any]]:
        if n < 1:
            raise ValueError(f"the number of shards must be >= 1, got {n}")
        count = max(1, min(n, -(-params.n_tokens // params.batch_tokens)))  # at most one shard per batch
        return [{"index": i, "count": count} for i in range(count)]

    def _slice(self, params: SaeParams, lengths: np.ndarray, shard: dict[str, Any]) -> tuple[int, int, int]:
        """(first sequence, end sequence, per_batch) of a shard."""
        per_batch = max(1, params.batch_tokens // max(1, int(lengths.max())))
        batches = -(-lengths.size // per_batch)
        index, count = shard["index"], shard["count"]
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} is outside 0..{count - 1}")
        first, last = index * batches // count, (index + 1) * batches // count
        return first * per_batch, min(lengths.size, last * per_batch), per_batch

    def run_shard(self, params: SaeParams, shard: dict[str, Any], lm: Any, progress: Progress = no_progress,
                  **kw: Any) -> ShardResult:
        check_spec(shard, ())
        started = time.perf_counter()
        progress(0.0, "loading the SAE")
        sae, hook, _ = load_checked_sae(params, lm, runs=kw.get("runs"), sae_loader=kw.get("sae_loader"))
        d_sae = int(sae.cfg.d_sae)
        progress(0.02, "reading the corpus")
        sequences, note = load_corpus(params, lm.tokenizer)
        lengths = np.array([len(s) for s in sequences], np.int64)
        begin, end, per_batch = self._slice(params, lengths, shard)
        token_begin = int(lengths[:begin].sum())
        reducers = make_reducers(params, d_sae, sae)
        csc = CscWriter(d_sae)
        outliers = 0
        if end > begin:
            part = sequences[begin:end]
            tokens = harvest(lm, sae, hook, part, reducers,
                             batch_tokens=per_batch * int(lengths[begin:end].max()),
                             skip_positions=params.skip_positions, progress=progress, csc=csc,
                             progress_span=(0.05, 0.95),
                             outlier_factor=OUTLIER_FACTOR if params.drop_outliers else 0.0,
                             token_offset=token_begin)
            token_arrays = {"token_id": tokens.token_id, "token_doc": tokens.token_doc + np.int32(begin),
                            "token_pos": tokens.token_pos}
            outliers = tokens.outliers_dropped
        else:
            token_arrays = {name: np.zeros(0, np.int32) for name in TOKEN_ARRAYS}
        lat_ptr, lat_token, lat_value = csc.finish()
        sae_device = next(sae.parameters()).device
        arrays = {**token_arrays, "lat_ptr": lat_ptr, "lat_token": np.asarray(lat_token),
                  "lat_value": np.asarray(lat_value), **reducer_arrays(reducers)}
        summary = {"seq_begin": begin, "seq_end": end, "sequences_total": int(lengths.size),
                   "token_begin": token_begin, "token_end": token_begin + int(lengths[begin:end].sum()),
                   "d_sae": d_sae, "outliers_dropped": outliers, "note": note,
                   "reducers_on": "host (numpy)" if sae_device.type == "cpu" else f"{sae_device} (torch) + host",
                   "harvest_s": time.perf_counter() - started}
        progress(1.0, f"sequences {begin}..{end} harvested")
        return ShardResult(arrays=arrays, summary=summary)

    def merge(self, params: SaeParams, parts: list[ShardResult]) -> ShardResult:
        check_parts(parts, "seq_begin", "seq_end")
        first = parts[0]
        d_sae = int(first.summary["d_sae"])
        for part in parts[1:]:
            for key in ("d_sae", "sequences_total", "note"):
                if part.summary[key] != first.summary[key]:
                    raise ValueError(f"sae shards disagree on {key}: {first.summary[key]!r} vs {part.summary[key]!r}")
        reducers = reducers_from_arrays(params, d_sae, first.arrays)
        for part in parts[1:]:
            reducers = reducers.merge(reducers_from_arrays(params, d_sae, part.arrays))
        ptr, tokens, values = merge_csc([(p.arrays["lat_ptr"], p.arrays["lat_token"], p.arrays["lat_value"])
                                         for p in parts])
        arrays = {name: np.concatenate([p.arrays[name] for p in parts]) for name in TOKEN_ARRAYS}
        arrays.update({"lat_ptr": ptr, "lat_token": np.asarray(tokens), "lat_value": np.asarray(values)})
        arrays.update(reducer_arrays(reducers))
        places = []
        for part in parts:
            for place in str(part.summary["reducers_on"]).split("; "):
                if place not in places:
                    places.append(place)
        summary = {**first.summary, "seq_end": parts[-1].summary["seq_end"],
                   "token_end": parts[-1].summary["token_end"],
                   "outliers_dropped": sum(int(p.summary["outliers_dropped"]) for p in parts),
                   "reducers_on": "; ".join(places),
                   "harvest_s": sum(float(p.summary["harvest_s"]) for p in parts)}
        return ShardResult(arrays=arrays, summary=summary)

    def finish(self, params: SaeParams, merged: ShardResult, lm: Any, progress: Progress = no_progress,
               **kw: Any) -> Result:
        summary = merged.summary
        if summary["seq_begin"] != 0 or summary["seq_end"] != summary["sequences_total"]:
            raise ValueError(f"the merged shards cover sequences {summary['seq_begin']}..{summary['seq_end']}, "
                             f"not the run's 0..{summary['sequences_total']}")
        started = time.perf_counter()
        progress(0.0, "loading the SAE")
        sae, hook, rows = load_checked_sae(params, lm, runs=kw.get("runs"), sae_loader=kw.get("sae_loader"))
        d_sae = int(sae.cfg.d_sae)
        if d_sae != int(summary["d_sae"]):
            raise ValueError(f"the SAE has {d_sae} latents, the shards harvested {summary['d_sae']}")
        timings = {"load_sae_s": time.perf_counter() - started, "harvest_s": float(summary["harvest_s"])}
        started = time.perf_counter()
        reducers = reducers_from_arrays(params, d_sae, merged.arrays)
        arrays = reducers.result(params.edges_k)
        timings["reduce_s"] = time.perf_counter() - started
        a = merged.arrays
        tokens = HarvestTokens(a["token_id"], a["token_doc"], a["token_pos"], int(summary["outliers_dropped"]))
        return describe_harvest(params, lm, sae, hook, rows, arrays, tokens,
                                (a["lat_ptr"], a["lat_token"], a["lat_value"]),
                                n_encoded=int(reducers.stats.n_tokens), sequences=int(summary["sequences_total"]),
                                note=str(summary["note"]), reducers_on=str(summary["reducers_on"]),
                                cofire=cofire_computed(params, d_sae), timings=timings, progress=progress)


SAE_SHARDS = SaeShards()
