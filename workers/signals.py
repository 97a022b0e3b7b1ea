"""Worker process signals.

* ``worker_process_init`` (in each forked child): drop database connections
  inherited from the parent, so no two processes share a socket.
* ``worker_process_init`` (in each forked child): compile UMAP's numba code in
  a background thread at the lowest CPU priority (``settings.umap_warmup``),
  so the compile is paid once per worker process, not by a run.
* ``worker_process_init`` (in each forked child): cap torch's CPU threads at
  ``settings.torch_threads`` (``ATLAS_TORCH_THREADS``, which ``latent-atlas``
  sets to the usable cores over the worker processes it starts), so the
  workers of one machine do not oversubscribe its cores; unset: torch's own.
* ``worker_ready`` (in the main process): enter this worker in the registry of
  live workers (its node name, queues and concurrency: the gpu queue's slots),
  dispatch what the new slots allow (a run submitted while no worker lived
  starts now), then start the sweeper thread, which keeps the entry fresh.
* ``worker_shutdown`` (main process): stop the sweeper, leave the registry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from latent_atlas.settings import get_settings
from models.session import get_engine, get_sessionmaker
from workers import worker_registry
from workers.worker_registry import WorkerInfo

log = logging.getLogger(__name__)

_sweeper = None
_registered: str | None = None


@worker_process_init.connect
def _reset_engines(**_: object) -> None:
    engine = get_engine()
    engine.dispose(close=False)
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()


@worker_process_init.connect
def _cap_torch_threads(**_: object) -> None:
    threads = get_settings().torch_threads
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the process's first inter-op parallel work
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())
    log.info("torch uses %d CPU threads in this worker process", threads)


def _warm_up_umap() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    except (AttributeError, OSError):
        pass
    try:
        from latent_atlas.analyses.geometry.points import warm_up_umap

        log.info("UMAP compiled in %.1f s", warm_up_umap())
    except Exception:  # a failed warm-up only means the first UMAP run compiles
        log.warning("UMAP warm-up failed", exc_info=True)


@worker_process_init.connect
def _start_umap_warmup(**_: object) -> None:
    if get_settings().umap_warmup:
        threading.Thread(target=_warm_up_umap, name="umap-warmup", daemon=True).start()


def worker_info(consumer: Any) -> WorkerInfo:
    """This worker's registry entry, from the Celery consumer ``worker_ready`` sends."""
    queues = tuple(sorted(consumer.app.amqp.queues.consume_from or ()))
    controller = getattr(consumer, "controller", None)
    concurrency = getattr(controller, "concurrency", None) or getattr(consumer.pool, "num_processes", 1)
    return WorkerInfo(name=str(consumer.hostname), queues=queues, concurrency=int(concurrency),
                      hostname=socket.gethostname(), pid=os.getpid())


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: object) -> None:
    global _sweeper, _registered
    from workers.dispatch import dispatch_pending_quietly
    from workers.sweeper import SweeperThread

    info = None
    try:
        info = worker_info(sender)
        worker_registry.register(info)
        _registered = info.name
        log.info("registered worker %s: queues %s, concurrency %s", info.name, ",".join(info.queues),
                 info.concurrency)
    except Exception:  # the sweeper thread registers it on its next round
        log.exception("could not register this worker; retrying at the next sweep")
    dispatch_pending_quietly()
    _sweeper = SweeperThread(info)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    if _registered is not None:
        try:
            worker_registry.unregister(_registered)
        except Exception:  # its heartbeat ages out of the live window instead
            log.warning("could not remove worker %s from the registry", _registered, exc_info=True)
