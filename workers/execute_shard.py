"""Execute one shard of a run, and merge a run's shards (``workers.shards`` has the state changes).

Thin: load the params and the model (the worker's cache), call the pure layer
(``latent_atlas.analyses.shards``), store the part. A grid shard gets the run's
``StoreCheckpoint``, so a retried shard reloads the pieces its earlier attempt
saved under the keys an unsharded run uses; an sae shard gets
``runs=StoredRuns()``.

The shard whose success write sees every shard succeeded merges at once (in
its own process, the model already loaded); the chord's callback
(``atlas.merge_run``) is a nudge that finds the merge taken or done and
returns. ``claim_merge`` lets exactly one merger through.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

from latent_atlas.analyses import Cancelled, get_kind
from latent_atlas.analyses.shards import get_shardable
from models import RunStatus
from models.store import ArtifactStore
from workers import lifecycle, model_cache, shards
from workers.checkpoints import StoreCheckpoint
from workers.dispatch import dispatch_pending_quietly
from workers.inputs import StoredRuns

log = logging.getLogger(__name__)


def _extra(kind: Any, run_id: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"runs": StoredRuns()} if kind.reads_runs else {}
    if kind.resumable:
        extra["checkpoint"] = StoreCheckpoint(run_id)
    return extra


class _ShardHeartbeat(lifecycle.Heartbeat):
    def __init__(self, run_id: str, idx: int, attempt: int, every: float) -> None:
        super().__init__(run_id, attempt, every)
        self.idx = idx

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not shards.heartbeat(self.run_id, self.idx, self.attempt):
                    self.lost.set()
                    return
            except Exception:
                continue


def execute_shard(run_id: str, idx: int, worker: str) -> str:
    """Run shard ``idx`` of ``run_id`` if this worker can claim it; returns the outcome word."""
    from latent_atlas.settings import get_settings

    claim = shards.claim(run_id, idx, worker, pid=os.getpid())
    if claim is None:
        log.info("shard %s#%s not claimable here", run_id, idx)
        _settle_cancel(run_id)
        return "skipped"
    kind = get_kind(claim.kind)
    sharded = get_shardable(claim.kind)
    outcome = "failed"
    with _ShardHeartbeat(run_id, idx, claim.attempt, get_settings().heartbeat_every) as beat:

        def progress(fraction: float, stage: str) -> None:
            if beat.lost.is_set():
                raise lifecycle.LostOwnership(run_id)
            shards.report_progress(run_id, idx, claim.attempt, fraction, f"{stage}"[:200])

        try:
            params = kind.params.model_validate(claim.params)
            progress(0.0, "loading model")
            lm = model_cache.get_model(params.model)
            shards.set_device(run_id, idx, claim.attempt, str(lm.device))
            part = sharded.run_shard(params, claim.spec, lm, progress, **_extra(kind, run_id))
            where = shards.save_part(run_id, idx, claim.attempt, part)
            all_done = shards.succeed(run_id, idx, claim.attempt, where)
            if all_done is None:
                return "lost"
            outcome = "succeeded"
        except lifecycle.LostOwnership:
            log.warning("shard %s#%s attempt %s lost ownership", run_id, idx, claim.attempt)
            return "lost"
        except Cancelled:
            shards.end_run(run_id, RunStatus.cancelled.value, shard=(idx, claim.attempt))
            outcome = "cancelled"
        except Exception as exc:
            log.exception("shard %s#%s failed", run_id, idx)
            from workers.execute import _error_message

            shards.end_run(run_id, RunStatus.failed.value, shard=(idx, claim.attempt), shard_status="failed",
                           error=f"shard {idx + 1}/{claim.count}: {_error_message(exc)}",
                           traceback_text=traceback.format_exc())
            outcome = "failed"
    if outcome == "succeeded" and all_done:
        merge_run(run_id, worker)
    if outcome != "succeeded":
        StoreCheckpoint(run_id).clear()
    dispatch_pending_quietly()  # this slot is free
    return outcome


def _settle_cancel(run_id: str) -> None:
    """A shard not claimable because the run's cancel was asked: end the run (and every shard) now."""
    from sqlalchemy import select

    from models import Run, session_scope

    with session_scope() as session:
        row = session.execute(select(Run.status, Run.cancel_requested).where(Run.id == run_id)).one_or_none()
    if row is not None and row.status == RunStatus.running.value and row.cancel_requested:
        shards.end_run(run_id, RunStatus.cancelled.value)
        StoreCheckpoint(run_id).clear()


def merge_run(run_id: str, worker: str) -> str:
    """Merge the run's parts and finish it, if every shard succeeded and nobody else merges."""
    from latent_atlas.settings import get_settings

    taken = shards.claim_merge(run_id)
    if taken is None:
        _settle_cancel(run_id)
        return "skipped"
    attempt, kind_name, raw = taken
    kind = get_kind(kind_name)
    sharded = get_shardable(kind_name)
    timings: dict[str, float] = {}
    with lifecycle.Heartbeat(run_id, attempt, get_settings().heartbeat_every):
        try:
            params = kind.params.model_validate(raw)
            started = time.perf_counter()
            parts = [shards.load_part(where) for where in shards.parts_of(run_id)]
            merged = sharded.merge(params, parts)
            timings["merge_s"] = round(time.perf_counter() - started, 4)
            started = time.perf_counter()
            lm = model_cache.get_model(params.model)
            timings["load_model_s"] = round(time.perf_counter() - started, 4)

            def progress(fraction: float, stage: str) -> None:  # the merge is short; no cancel here
                return None

            started = time.perf_counter()
            result = sharded.finish(params, merged, lm, progress, **_extra(kind, run_id))
            timings["finish_s"] = round(time.perf_counter() - started, 4)
            store = ArtifactStore()
            stored = {name: store.write_array(array) for name, array in result.arrays.items()}
            environment = {**lm.environment(), "worker": worker, "shards": len(parts), "merge_attempt": attempt}
            if "seed" in raw:
                environment["seed"] = raw["seed"]
            ok = lifecycle.finish(run_id, attempt, stored, result.summary, timings, environment)
        except Exception as exc:
            log.exception("merge of run %s failed", run_id)
            from workers.execute import _error_message

            lifecycle.fail(run_id, attempt, f"merging the shards: {_error_message(exc)}", traceback.format_exc(),
                           timings)
            ok = False
    if ok:
        shards.clear_parts(run_id)
        StoreCheckpoint(run_id).clear()
        return "succeeded"
    return "failed"
