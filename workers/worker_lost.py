"""Notice a dead worker process at once, from the worker's main process.

When a pool child dies (SIGKILL, the kernel's OOM killer, a segfault in a
native library), Celery's main process reports it to the task's ``Request``
as ``WorkerLostError`` (billiard >= 4.3 may report the child's ``SystemExit``
first; Celery treats both as a lost worker). With ``task_acks_late`` and
``task_reject_on_worker_lost`` Celery then requeues the message at once; the
``task_failure`` signal is *not* sent on that path, so the hook is a custom
``Request`` (Celery's documented extension point, ``Task.Request``).

Invariant: ``AtlasRequest.on_failure`` records the loss in the database
(``lifecycle.mark_worker_lost``) *before* Celery requeues the message, so the
redelivered message finds the run claimable and the retry starts within
seconds instead of after ``stale_after``. If the database write fails, nothing
is lost: the sweeper still reaps the run when its heartbeat goes stale.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.worker.request import Request

log = logging.getLogger(__name__)


def lost_worker_reason(exc: BaseException, cancelled: bool) -> str | None:
    """Why the process is gone, when ``exc`` means that the pool child died; else None.

    ``cancelled``: Celery itself stopped the child (revoke with terminate), which
    is not a lost worker.
    """
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, WorkerLostError):
        return str(exc) or "worker process lost"
    if isinstance(exc, SystemExit | KeyboardInterrupt) and not cancelled:
        return f"worker process exited ({type(exc).__name__}: {exc})"
    return None


class AtlasRequest(Request):
    """A request that tells the database when the process running it died."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):
        cancelled = bool(getattr(self, "_already_cancelled", False) or getattr(self, "_already_revoked", False))
        reason = lost_worker_reason(exc_info.exception, cancelled)
        if reason is not None and self.args:
            try:
                from workers import lifecycle
                from workers.celery_app import SHARD_TASK

                if self.task_name == SHARD_TASK:  # a shard (run id, index): only that shard is retried
                    from workers import shards

                    status = shards.mark_lost(str(self.args[0]), int(self.args[1]), self.hostname,
                                              self.worker_pid, f"{reason} (pid {self.worker_pid})")
                    log.warning("run %s shard %s: worker process %s lost (%s); shard is now %s",
                                self.args[0], self.args[1], self.worker_pid, reason, status)
                    return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
                status = lifecycle.mark_worker_lost(str(self.args[0]), self.hostname, self.worker_pid,
                                                    f"{reason} (pid {self.worker_pid})")
                log.warning("run %s: worker process %s lost (%s); run is now %s",
                            self.args[0], self.worker_pid, reason, status)
                if status in ("failed", "cancelled"):  # ended here: no attempt will resume it
                    from workers.checkpoints import StoreCheckpoint

                    StoreCheckpoint(str(self.args[0])).clear()
            except Exception:  # the sweeper's stale timeout still covers the run
                log.exception("could not record the lost worker of run %s", self.args[0])
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class AtlasTask(Task):
    """The base of the portal's tasks: its requests report lost worker processes."""

    Request = AtlasRequest
