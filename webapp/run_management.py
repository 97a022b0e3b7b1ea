"""Run management: rename, tags, a note, stars and deletion, each change recorded.

Invariants:

* Only the run's owner or an admin may rename, re-tag, annotate or delete it;
  any member may star or unstar a run for themselves.
* Every change that changes something writes one ``RunEvent`` (who, when,
  what: ``{"from": ..., "to": ...}``) in the same transaction as the change; a
  change to the value already there writes nothing.
* A deleted run keeps its row and events (its page says who deleted it and
  when); its artifact rows go in the deleting transaction, and each file is
  removed from the store after it only when no artifact row refers to it any
  more (the store is content-addressed: runs share files). A deleted run is
  left out of ``/runs`` and of reuse, cannot be changed again, and exports
  nothing. A queued or running run is cancelled first (so its worker stops).
* Cancels (``cancel_recorded``: the run page, bulk actions, the admin queue)
  and admin queue moves (``webapp.queue_admin``) are recorded the same way.
* Titles, tags and notes are bounded and free of NUL; they are shown escaped
  (the note as Markdown without raw HTML).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from models import Artifact, Run, User, session_scope
from models.base import utcnow
from models.run import RunEvent, RunStar
from models.store import ArtifactStore
from webapp.run_params import clean_tags, clean_title
from webapp.runs_service import (
    NotAllowed,
    RunNotFound,
    SubmissionError,
    cancel_run,
    get_run,
)

__all__ = ["MAX_NOTE_CHARS", "cancel_recorded", "delete_run", "record_event", "run_events", "set_star",
           "starred_by", "update_run"]

MAX_NOTE_CHARS = 20_000


def _clean_note(note: Any) -> str:
    if not isinstance(note, str):
        raise SubmissionError(["note: must be a string"])
    if "\x00" in note:
        raise SubmissionError(["note: may not contain NUL characters"])
    if len(note) > MAX_NOTE_CHARS:
        raise SubmissionError([f"note: at most {MAX_NOTE_CHARS} characters"])
    return note.strip()


def _changeable(user: User, run: Run, what: str) -> None:
    if not (user.is_admin or run.owner_id == user.id):
        raise NotAllowed(f"only the run's owner or an admin may {what} it")
    if run.deleted_at is not None:
        raise SubmissionError([f"run {run.id} was deleted; it cannot be changed"])


def update_run(user: User, run_id: str, *, title: str | None = None, tags: Any = None,
               note: str | None = None) -> Run:
    """Rename, re-tag and/or annotate a run (``None``: leave that part as it is)."""
    run = get_run(run_id)
    _changeable(user, run, "change")
    wanted: dict[str, Any] = {}
    if title is not None:
        wanted["title"] = clean_title(title)
    if tags is not None:
        wanted["tags"] = clean_tags(tags)
    if note is not None:
        wanted["note"] = _clean_note(note)
    actions = {"title": "rename", "tags": "tags", "note": "note"}
    with session_scope() as session:
        row = session.get(Run, run_id)
        for field, value in wanted.items():
            old = getattr(row, field)
            if (list(old or []) if field == "tags" else old) == value:
                continue
            setattr(row, field, value)
            session.add(RunEvent(run_id=run_id, user_id=user.id, action=actions[field],
                                 detail={"from": old, "to": value}))
    return get_run(run_id)


def record_event(user: User, run_id: str, action: str, detail: dict[str, Any]) -> None:
    """Add one entry to the run's change log (for changes made elsewhere: a queue move, a cancel)."""
    with session_scope() as session:
        session.add(RunEvent(run_id=run_id, user_id=user.id, action=action, detail=detail))


def cancel_recorded(user: User, run_id: str) -> bool:
    """Cancel a queued or running run (``runs_service.cancel_run``: owner or admin) and record it.

    Returns False, recording nothing, when the run was already finished or its
    cancel already requested; else the change log gets a ``cancel`` entry with
    the status before and after (``cancelled``, or ``running`` with a stop requested).
    """
    run = get_run(run_id)
    if run.is_terminal or run.cancel_requested:
        cancel_run(user, run_id)  # checks the permission all the same
        return False
    after = cancel_run(user, run_id)
    record_event(user, run_id, "cancel", {"from": run.status, "to": after.status})
    return True


def set_star(user: User, run_id: str, starred: bool) -> bool:
    """Star or unstar ``run_id`` for ``user``; returns whether it is starred now."""
    run = get_run(run_id)
    if run.deleted_at is not None:
        raise SubmissionError([f"run {run.id} was deleted; it cannot be changed"])
    with session_scope() as session:
        present = session.get(RunStar, (run_id, user.id)) is not None
        if present == starred:
            return starred
        if starred:
            session.add(RunStar(run_id=run_id, user_id=user.id))
        else:
            session.execute(delete(RunStar).where(RunStar.run_id == run_id, RunStar.user_id == user.id))
        session.add(RunEvent(run_id=run_id, user_id=user.id, action="star" if starred else "unstar",
                             detail={}))
    return starred


def starred_by(user_id: int, run_ids: list[str] | None = None) -> set[str]:
    """The IDs of the runs ``user_id`` has starred (among ``run_ids`` when given)."""
    query = select(RunStar.run_id).where(RunStar.user_id == user_id)
    if run_ids is not None:
        query = query.where(RunStar.run_id.in_(run_ids))
    with session_scope() as session:
        return set(session.scalars(query))


def delete_run(user: User, run_id: str) -> Run:
    """Delete a run (owner or admin): the row stays as a tombstone; unshared files are removed."""
    run = get_run(run_id)
    _changeable(user, run, "delete")
    if not run.is_terminal:
        cancel_run(user, run_id)
    with session_scope() as session:
        row = session.get(Run, run_id)
        if row is None:
            raise RunNotFound(run_id)
        uris = sorted({a.uri for a in row.artifacts})
        row.deleted_at = utcnow()
        row.deleted_by_id = user.id
        session.execute(delete(Artifact).where(Artifact.run_id == run_id))
        session.add(RunEvent(run_id=run_id, user_id=user.id, action="delete",
                             detail={"artifacts": len(uris)}))
    _remove_unreferenced(uris)
    return get_run(run_id)


def _remove_unreferenced(uris: list[str]) -> int:
    """Remove the files among ``uris`` that no artifact row refers to; how many went."""
    if not uris:
        return 0
    with session_scope() as session:
        kept = set(session.scalars(select(Artifact.uri).where(Artifact.uri.in_(uris))
                                   .group_by(Artifact.uri).having(func.count() > 0)))
    store = ArtifactStore()
    return sum(store.delete(uri) for uri in uris if uri not in kept)


def run_events(run_id: str) -> list[dict[str, Any]]:
    """The run's recorded changes, oldest first, as JSON."""
    with session_scope() as session:
        events = session.scalars(select(RunEvent).where(RunEvent.run_id == run_id)
                                 .order_by(RunEvent.at, RunEvent.id))
        return [{"at": event.at.isoformat(), "user": event.user.username if event.user else None,
                 "action": event.action, "detail": event.detail} for event in events]
