"""Thin Celery tasks: each one hands a run ID to ``workers.execute``."""

from __future__ import annotations

from workers.celery_app import EXECUTE_TASK, MERGE_TASK, SHARD_TASK, app
from workers.execute import execute_run
from workers.execute_shard import execute_shard as run_shard
from workers.execute_shard import merge_run
from workers.worker_lost import AtlasTask

# Signal handlers (sweeper thread, post-fork engine reset) register on import.
from workers import signals  # noqa: F401  isort: skip


@app.task(name=EXECUTE_TASK, bind=True, base=AtlasTask)
def execute(self, run_id: str) -> str:
    # A message's own limits (the interactive lane's) are (hard, soft) in request.timelimit.
    soft_time_limit = (self.request.timelimit or (None, None))[1]
    return execute_run(run_id, self.request.hostname or "worker", soft_time_limit=soft_time_limit)


# ignore_result=False: the chord counts its shards' results in the result backend.
@app.task(name=SHARD_TASK, bind=True, base=AtlasTask, ignore_result=False)
def execute_shard(self, run_id: str, idx: int) -> str:
    return run_shard(run_id, int(idx), self.request.hostname or "worker")


@app.task(name=MERGE_TASK, bind=True, base=AtlasTask)
def merge(self, run_id: str) -> str:
    return merge_run(run_id, self.request.hostname or "worker")
