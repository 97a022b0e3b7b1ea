"""Worker process signals.

* ``worker_process_init`` (in each forked child): drop database connections
  inherited from the parent, so no two processes share a socket.
* ``worker_process_init`` (in each forked child): compile UMAP's numba code in
  a background thread at the lowest CPU priority (``settings.umap_warmup``),
  so the compile is paid once per worker process, not by a run.
* ``worker_ready`` (in the main process): start the sweeper thread.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from latent_atlas.settings import get_settings
from models.session import get_engine, get_sessionmaker

log = logging.getLogger(__name__)

_sweeper = None


@worker_process_init.connect
def _reset_engines(**_: object) -> None:
    engine = get_engine()
    engine.dispose(close=False)
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()


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


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    global _sweeper
    from workers.sweeper import SweeperThread

    _sweeper = SweeperThread()
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()
