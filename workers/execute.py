"""Execute one run: claim -> load model -> analysis -> store artifacts -> finish.

A kind with ``needs_model`` false (post-processing on the ``cpu`` queue) gets
``workers.inputs.StoredRuns`` instead of a model and loads nothing; a kind with
``reads_runs`` gets the model and ``runs=StoredRuns()`` too; a ``resumable``
kind gets ``checkpoint=StoreCheckpoint(run_id)``, so a retried attempt skips
the pieces an earlier one finished. The pieces are removed once this worker
has ended the run (succeeded, failed or cancelled), not when it lost the run.

A worker that ended a gpu run (succeeded, failed or cancelled) calls the
dispatcher right after the terminal write, so the freed slot takes the next
run in fair-share order at once (``workers.dispatch.dispatch_pending``).

The Celery task is a thin wrapper around ``execute_run``. Every way out of a
claimed run ends in exactly one terminal state written by this worker, unless
the run stopped being ours (then we write nothing and the owner decides).
"""

from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from latent_atlas.analyses import Cancelled, get_kind
from latent_atlas.lm import ModelLoadError
from latent_atlas.settings import get_settings
from models.store import ArtifactStore
from workers import lifecycle, model_cache
from workers.checkpoints import StoreCheckpoint
from workers.dispatch import GATED_QUEUE, dispatch_pending_quietly
from workers.inputs import StoredRuns

log = logging.getLogger(__name__)


def _is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _error_message(exc: BaseException, soft_time_limit: float | None = None, queue: str = "gpu") -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = soft_time_limit or get_settings().soft_time_limit
        if queue == "interactive":
            return (f"time limit exceeded ({limit:g} s, the interactive lane's limit); "
                    "choose fewer points or states, or ask an admin to lower the lane's bound")
        return f"time limit exceeded ({limit:g} s); try fewer prompts or tokens"
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"invalid parameters: {exc}"
    if _is_out_of_memory(exc):
        return f"out of memory on the device even at the smallest batch: {exc}"
    return f"{type(exc).__name__}: {exc}"


def execute_run(run_id: str, worker: str, *, soft_time_limit: float | None = None) -> str:
    """Run ``run_id`` if this worker can claim it; returns the outcome word.

    ``soft_time_limit``: the limit this task runs under when its message set one
    (the interactive lane's), named in the failure message if it is exceeded.
    """
    claim = lifecycle.claim(run_id, worker, pid=os.getpid())
    if claim is None:
        log.info("run %s not claimable here (already owned, finished or cancelled)", run_id)
        return "skipped"
    outcome = _execute(claim, worker, soft_time_limit)
    if outcome in ("succeeded", "failed", "cancelled"):
        StoreCheckpoint(run_id).clear()
        if claim.queue == GATED_QUEUE:
            dispatch_pending_quietly()  # this slot is free: the next gpu run in fair-share order
    return outcome


def _execute(claim: lifecycle.Claim, worker: str, soft_time_limit: float | None = None) -> str:
    settings = get_settings()
    run_id, attempt = claim.run_id, claim.attempt
    timings: dict[str, float] = {}
    with lifecycle.Heartbeat(run_id, attempt, settings.heartbeat_every) as beat:

        def progress(fraction: float, stage: str) -> None:
            if beat.lost.is_set():
                raise lifecycle.LostOwnership(run_id)
            lifecycle.report_progress(run_id, attempt, fraction, stage)

        try:
            kind = get_kind(claim.kind)
            params = kind.params.model_validate(claim.params)
            if kind.needs_model:
                progress(0.0, "loading model")
                started = time.perf_counter()
                lm = model_cache.get_model(params.model)
                timings["load_model_s"] = round(time.perf_counter() - started, 4)
                lifecycle.set_device(run_id, attempt, str(lm.device))
                source: Any = lm
                environment: dict[str, Any] = lm.environment()
            else:  # post-processing of stored runs: no model is loaded
                lifecycle.set_device(run_id, attempt, "cpu")
                source = StoredRuns()
                environment = {"python": platform.python_version(), "numpy": np.__version__}

            started = time.perf_counter()
            extra: dict[str, Any] = {"runs": StoredRuns()} if kind.reads_runs else {}
            if kind.resumable:
                extra["checkpoint"] = StoreCheckpoint(run_id)
            result = kind.run(params, source, progress, **extra)
            timings["analysis_s"] = round(time.perf_counter() - started, 4)

            progress(1.0, "storing results")
            started = time.perf_counter()
            store = ArtifactStore()
            stored = {name: store.write_array(array) for name, array in result.arrays.items()}
            timings["store_s"] = round(time.perf_counter() - started, 4)
            environment = {**environment, "worker": worker, "attempt": attempt}
            if "seed" in claim.params:
                environment["seed"] = claim.params["seed"]
            if lifecycle.finish(run_id, attempt, stored, result.summary, timings, environment):
                return "succeeded"
            return "lost"
        except lifecycle.LostOwnership:
            log.warning("run %s attempt %s lost ownership; stopping without writing", run_id, attempt)
            return "lost"
        except Cancelled:
            lifecycle.mark_cancelled(run_id, attempt)
            return "cancelled"
        except Exception as exc:  # every failure ends the run, never the worker
            log.exception("run %s failed", run_id)
            lifecycle.fail(run_id, attempt, _error_message(exc, soft_time_limit, claim.queue), traceback.format_exc(),
                           timings)
            return "failed"
