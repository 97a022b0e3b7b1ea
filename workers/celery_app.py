"""The Celery app: transport only; the database is the truth.

Invariants (DESIGN.md, job lifecycle):

* A message carries only a run ID; a task acknowledges late and is rejected
  back to the queue when its worker process dies, and each worker process
  prefetches one message, so a long job never holds other messages hostage.
* The broker's visibility timeout exceeds the hard time limit, which exceeds
  the soft one (the soft limit ends a run cleanly as ``failed``).
* Importing this module never imports torch or touches CUDA: the web process
  imports it to dispatch.
* Every message sent to the ``interactive`` queue carries the lane's soft/hard
  time limits (``settings.interactive``), whoever sends it (submit, dispatcher,
  sweeper): ``AtlasCelery.send_task`` adds them unless the caller gave its own.
  A worker applies a message's limits over its defaults (prefork pool).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from latent_atlas.settings import Settings, get_settings

EXECUTE_TASK = "atlas.execute_run"
SHARD_TASK = "atlas.execute_shard"
MERGE_TASK = "atlas.merge_run"
INTERACTIVE_QUEUE = "interactive"  # latent_atlas.analyses.lanes.INTERACTIVE
QUEUES = ("gpu", "cpu", INTERACTIVE_QUEUE)


def lane_time_limits(queue: str | None, settings: Settings | None = None) -> dict[str, int]:
    """Celery's ``soft_time_limit``/``time_limit`` options for a task on ``queue`` ({} off the lane)."""
    if queue != INTERACTIVE_QUEUE:
        return {}
    lane = (settings or get_settings()).interactive
    return {"soft_time_limit": lane.soft_time_limit, "time_limit": lane.hard_time_limit}


class AtlasCelery(Celery):
    """Celery whose ``send_task`` gives a task on the interactive queue the lane's time limits."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        for key, value in lane_time_limits(options.get("queue")).items():
            if options.get(key) is None:
                options[key] = value
        return super().send_task(name, args, kwargs, **options)


def result_backend_url(broker_url: str) -> str:
    """The result backend a chord needs: Redis with a Redis broker, SQLAlchemy (``db+``) with the SQL broker.

    Only shard tasks store results (the chord counts them); every other task ignores its result.
    """
    if broker_url.startswith("sqla+"):
        return "db+" + broker_url[len("sqla+"):]
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    raise ValueError(f"no result backend known for broker {broker_url!r}")


def make_celery() -> Celery:
    settings = get_settings()
    app = AtlasCelery("latent_atlas", broker=settings.broker_url, include=["workers.tasks"])
    if settings.broker_url.startswith("sqla+"):
        # kombu hands the SQL transport's options to create_engine(); it polls
        # every second and has no visibility timeout (the sweeper covers that).
        transport_options: dict = {"connect_args": {"timeout": 30}}
    else:
        transport_options = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_ignore_result=True,
        result_backend=result_backend_url(settings.broker_url),
        result_expires=7 * 86400,
        result_extended=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue="gpu",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = make_celery()


def dispatch_run(run_id: str, queue: str) -> None:
    """Send the task that executes ``run_id`` (by name: no worker code imported)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    app.send_task(EXECUTE_TASK, args=[run_id], queue=queue)


def send_shards(run_id: str, count: int, queue: str, task_id: str) -> None:
    """Send a sharded run: chord(group(execute_shard x count), merge_run), by name (no worker code imported).

    The chord's callback is a nudge: the last shard's success write already
    merges (``workers.execute_shard``); the database decides.
    """
    from celery import chord, group

    header = group(app.signature(SHARD_TASK, args=[run_id, idx], queue=queue, task_id=f"{task_id}.{idx}")
                   for idx in range(count))
    callback = app.signature(MERGE_TASK, args=[run_id], queue=queue, task_id=f"{task_id}.merge",
                             immutable=True)
    chord(header)(callback)


def send_shard(run_id: str, idx: int, queue: str) -> None:
    """Re-send one shard alone (a stale shard the sweeper retries)."""
    app.send_task(SHARD_TASK, args=[run_id, idx], queue=queue)
