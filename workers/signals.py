"""Worker process signals.

* ``worker_process_init`` (in each forked child): drop database connections
  inherited from the parent, so no two processes share a socket.
* ``worker_ready`` (in the main process): start the sweeper thread.
"""

from __future__ import annotations

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from models.session import get_engine, get_sessionmaker

_sweeper = None


@worker_process_init.connect
def _reset_engines(**_: object) -> None:
    engine = get_engine()
    engine.dispose(close=False)
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()


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
