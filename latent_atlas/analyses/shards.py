"""Sharded runs: one big run split into parts that run alone, merged exactly (issue #14, pure layer).

A run kind listed in ``SHARDABLE`` can be split into shards that separate
workers run on their own, and merged back into the run's ``Result``. This
module is the contract between the science (``analyses/<kind>/shard.py``)
and the runtime that sends shards through Celery (one task per shard, a
chord whose callback merges). The runtime calls, for a run of kind ``kind``
with validated params ``params``::

    sharded = SHARDABLE[kind]
    n = shard_count(sharded.work_units(params), idle_workers, sharded.min_units_per_shard)
    specs = sharded.split(params, n)                     # len(specs) <= n; store each spec (JSON)
    part = sharded.run_shard(params, specs[i], lm, progress, **kw)   # on a worker, per shard
    merged = sharded.merge(params, [part_0, ..., part_m])            # in shard order
    result = sharded.finish(params, merged, lm, progress, **kw)      # the run's Result

Invariants a kind keeps:

* ``split`` is pure and deterministic: the same params and ``n`` give the
  same specs; every spec is a JSON-safe dict, runnable alone (it names its
  own slice of the work: ``index``, ``count`` and the kind's range keys); it
  returns between 1 and ``n`` specs (fewer when the work has fewer pieces),
  covering the work once, in order;
* ``run_shard`` needs only params, its spec and the model (never another
  shard); ``progress`` goes from 0 to 1 over that shard and may raise
  ``Cancelled``; keyword arguments are the ones ``run`` takes for that kind
  (``checkpoint`` for grid, ``runs`` for sae), each optional;
* ``ShardResult.arrays`` are numeric numpy arrays and ``summary`` is
  JSON-safe, so the runtime stores a part as ``.npy`` files plus JSON, never
  a pickle, and reloads it in another process;
* ``merge`` takes parts in shard order and is associative:
  ``merge([merge([a, b]), c])`` equals ``merge([a, merge([b, c])])`` (and
  ``merge([a])`` is ``a``), so the runtime may merge as parts arrive or all at
  once; it raises ``ValueError`` for parts that are not neighbours or that
  disagree on how they were computed;
* ``finish`` on the merge of all parts gives the run's ``Result``, equal to
  the unsharded run's as each kind documents (grid: bit for bit, except
  timings); it may need the model (sae: decoder geometry and logit effects;
  grid only reads ``lm.tokenizer``);
* ``shard_count`` never splits a run smaller than two shards' worth of work
  (``min_units_per_shard``), nor when fewer than two workers are idle.

The kinds (work units; shard spec; equality with the unsharded run):

* ``grid`` (``grid/shard.py``): cells; ``{"index", "count", "begin", "end"}``
  cell ranges of whole resume pieces (8,192 cells); pass the run's
  ``checkpoint=`` to ``run_shard`` so a retried shard resumes its pieces;
  ``finish`` reads only ``lm.tokenizer``; arrays bit for bit (on a GPU: equal
  to an unsharded run streamed with a checkpoint, as the worker runs it),
  summary equal but timings;
* ``sae`` (``sae/shard.py``): tokens asked for; ``{"index", "count"}``, a
  contiguous slice of the run's harvest batches, resolved from the corpus
  when the shard runs; ``run_shard`` and ``finish`` take ``runs=`` /
  ``sae_loader=`` as ``run_sae`` does (``finish`` loads the SAE and the
  model's unembedding); exact but two float sums (``mean_act``,
  ``edge_coact_val``);
* ``geometry`` (``geometry/shard.py``): prompts; ``{"index", "count",
  "prompt_begin", "prompt_end"}``, whole batches; PCA from merged float64
  covariance sums; states exact, coordinates to ~1e-5 of their scale.

A shard's ``progress`` fractions are its own (0 to 1); a run's progress is
the work-unit-weighted sum, which the runtime computes (a shard's work units:
grid ``end - begin``, geometry ``prompt_end - prompt_begin``, sae
``work_units / count``).
"""

from __future__ import annotations

from latent_atlas.analyses.shard_base import (
    ShardableKind,
    ShardResult,
    check_parts,
    check_spec,
    even_ranges,
    shard_count,
)

__all__ = ["SHARDABLE", "ShardResult", "ShardableKind", "check_parts", "check_spec", "even_ranges",
           "get_shardable", "shard_count"]


def _registry() -> dict[str, ShardableKind]:
    from latent_atlas.analyses.geometry.shard import GEOMETRY_SHARDS
    from latent_atlas.analyses.grid.shard import GRID_SHARDS
    from latent_atlas.analyses.sae.shard import SAE_SHARDS

    kinds: list[ShardableKind] = [GRID_SHARDS, SAE_SHARDS, GEOMETRY_SHARDS]
    return {kind.name: kind for kind in kinds}


SHARDABLE: dict[str, ShardableKind] = _registry()


def get_shardable(name: str) -> ShardableKind | None:
    """The shardable kind called ``name``, or None when runs of that kind are never split."""
    return SHARDABLE.get(name)
