"""Bulk actions on runs (``/runs`` checkboxes, ``POST /api/runs/bulk``): cancel, delete, add or remove a tag.

Invariants:

* All or nothing on permission: every named run must exist and be the actor's
  own (or the actor is an admin) before any run is touched; otherwise
  ``NotAllowed`` / ``RunNotFound`` / ``SubmissionError`` and nothing changes.
* Each run is changed through the same functions as a single change
  (``run_management``), so each change is recorded per run in its change log
  (``RunEvent``): cancel -> ``cancel``, delete -> ``delete``, a tag -> ``tags``
  (from/to). A run already in the wanted state (cancelling a finished run,
  adding a tag it has, deleting a deleted run) is left alone and recorded
  nowhere; it is reported as ``unchanged``.
* Bounds: 1..``MAX_BULK_RUNS`` distinct run IDs; a tag is required for the tag
  actions only and is cleaned like any tag (``run_params.clean_tags``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select

from models import Run, User, session_scope
from webapp import run_management
from webapp.run_params import clean_tags
from webapp.runs_service import NotAllowed, RunNotFound, SubmissionError

__all__ = ["BULK_ACTIONS", "MAX_BULK_RUNS", "BulkAction", "BulkResult", "bulk_apply", "describe"]

BulkAction = Literal["cancel", "delete", "add_tag", "remove_tag"]
BULK_ACTIONS: tuple[str, ...] = ("cancel", "delete", "add_tag", "remove_tag")
MAX_BULK_RUNS = 500
_VERBS = {"cancel": "Cancel", "delete": "Delete", "add_tag": "Add tag {tag!r} to",
          "remove_tag": "Remove tag {tag!r} from"}


@dataclass
class BulkResult:
    """What a bulk action did: the runs it changed and the ones already in the wanted state."""

    action: str
    tag: str | None = None
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "tag": self.tag, "changed": self.changed,
                "unchanged": self.unchanged}


def describe(action: str, count: int, tag: str | None = None) -> str:
    """The confirmation question: ``Delete 3 runs?``, ``Add tag 'demo' to 1 run?``."""
    verb = _VERBS.get(action, action).format(tag=tag or "")
    return f"{verb} {count} run{'s' if count != 1 else ''}?"


def _clean_ids(run_ids: Any) -> list[str]:
    if not isinstance(run_ids, list | tuple) or not all(isinstance(r, str) for r in run_ids):
        raise SubmissionError(["ids: must be a list of run IDs (strings)"])
    ids = list(dict.fromkeys(r.strip() for r in run_ids if r.strip()))
    if not ids:
        raise SubmissionError(["ids: choose at least one run"])
    if len(ids) > MAX_BULK_RUNS:
        raise SubmissionError([f"ids: at most {MAX_BULK_RUNS} runs at once"])
    return ids


def _clean_tag(action: str, tag: Any) -> str | None:
    if action not in ("add_tag", "remove_tag"):
        if tag not in (None, ""):
            raise SubmissionError([f"tag: only the tag actions take a tag, not {action!r}"])
        return None
    if not isinstance(tag, str) or not tag.strip():
        raise SubmissionError(["tag: give the tag to add or remove"])
    return clean_tags([tag])[0]


def _check(user: User, ids: list[str]) -> dict[str, Run]:
    """The runs, once every one exists and may be changed by ``user``; else raise, changing nothing."""
    with session_scope() as session:
        runs = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
        for run in runs.values():
            session.expunge(run)
    missing = [r for r in ids if r not in runs]
    if missing:
        raise RunNotFound(missing[0])
    foreign = [r for r in ids if not (user.is_admin or runs[r].owner_id == user.id)]
    if foreign:
        raise NotAllowed(f"only a run's owner or an admin may change it; {len(foreign)} of the "
                         f"{len(ids)} runs are not yours ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); nothing was changed")
    return runs


def _check_room(runs, tag: str | None) -> None:
    """Refuse (before any change) to add a tag to a run that has no room for another."""
    for run in runs:
        tags = list(run.tags or [])
        if tag not in tags and run.deleted_at is None:
            try:
                clean_tags([*tags, tag])
            except SubmissionError as exc:
                raise SubmissionError([f"run {run.id}: {m}; nothing was changed" for m in exc.messages]) from None


def bulk_apply(user: User, run_ids: Any, action: Any, tag: Any = None) -> BulkResult:
    """Apply ``action`` to every run of ``run_ids`` (see the module's invariants)."""
    if action not in BULK_ACTIONS:
        raise SubmissionError([f"action: must be one of {', '.join(BULK_ACTIONS)}"])
    ids = _clean_ids(run_ids)
    clean_tag = _clean_tag(action, tag)
    runs = _check(user, ids)
    if action == "add_tag":
        _check_room(runs.values(), clean_tag)
    result = BulkResult(action=action, tag=clean_tag)
    for run_id in ids:
        run = runs[run_id]
        changed = _apply_one(user, run, action, clean_tag)
        (result.changed if changed else result.unchanged).append(run_id)
    if action in ("cancel", "delete") and result.changed:
        _dispatch_after_change()
    return result


def _apply_one(user: User, run: Run, action: str, tag: str | None) -> bool:
    if action == "delete":
        if run.deleted_at is not None:
            return False
        run_management.delete_run(user, run.id)
        return True
    if run.deleted_at is not None:
        return False  # a deleted run is never changed again
    if action == "cancel":
        return run_management.cancel_recorded(user, run.id)
    tags = list(run.tags or [])
    if action == "add_tag":
        if tag in tags:
            return False
        new_tags = [*tags, tag]
    else:
        if tag not in tags:
            return False
        new_tags = [t for t in tags if t != tag]
    run_management.update_run(user, run.id, tags=new_tags)
    return True


def _dispatch_after_change() -> None:
    """A cancelled or deleted run may free a GPU slot: let the dispatcher fill it."""
    from webapp.queue_admin import dispatch_now

    dispatch_now()
