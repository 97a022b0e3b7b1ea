"""Hand a queued run to the broker. The run row is written before the message.

If the broker is down the run stays queued with no dispatch time, and the
sweeper sends it once the broker is back: nothing accepted is lost.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import update

from models import Run, RunStatus, session_scope
from models.base import utcnow
from workers.celery_app import EXECUTE_TASK, app

log = logging.getLogger(__name__)


def dispatch(run_id: str, queue: str) -> bool:
    """Send the run's task; True when the broker accepted it."""
    task_id = f"{run_id}.{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
            .values(dispatched_at=utcnow(), task_id=task_id)
            .execution_options(synchronize_session=False)
        )
    try:
        app.send_task(EXECUTE_TASK, args=[run_id], queue=queue, task_id=task_id)
        return True
    except Exception:
        log.exception("broker unavailable: run %s stays queued for the sweeper", run_id)
        with session_scope() as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.task_id == task_id)
                .values(dispatched_at=None)
                .execution_options(synchronize_session=False)
            )
        return False


def revoke(task_id: str | None) -> None:
    """Best effort: tell workers to drop a queued message (the claim no-ops anyway)."""
    if not task_id or app.conf.broker_url.startswith("sqla+"):
        return  # the SQL transport has no broadcast; the claim makes the message a no-op
    try:
        app.control.revoke(task_id)
    except Exception:
        log.warning("could not revoke task %s", task_id, exc_info=True)
