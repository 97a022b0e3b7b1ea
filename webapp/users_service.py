"""Accounts and API tokens (used by the login page, the admin page, the JSON API and the CLI).

Invariants: passwords and tokens are stored hashed only; a token's secret is
shown once, when created; usernames match ``USERNAME_PATTERN``.
``authenticate`` verifies exactly one password hash whether or not the user
exists (a dummy hash of the same method for unknown names), so its time does
not tell which usernames exist. ``end_sessions`` (called on logout, password
change and disable) raises the user's ``session_version``: every session and
remember-me cookie of that account stops working at once. A revoked token is
refused at once and stays revoked when its user is disabled and enabled again.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import select, update
from werkzeug.security import check_password_hash, generate_password_hash

from models import ApiToken, User, session_scope
from models.base import utcnow
from models.user import USERNAME_PATTERN, hash_token, parse_session_id

MAX_TOKEN_NAME = 100


class UserError(ValueError):
    pass


def create_user(username: str, password: str, *, is_admin: bool = False) -> User:
    if not re.fullmatch(USERNAME_PATTERN, username or ""):
        raise UserError("username must be 2-64 characters of letters, digits, '_', '.' or '-'")
    with session_scope() as session:
        if session.scalar(select(User).where(User.username == username)) is not None:
            raise UserError(f"user {username!r} already exists")
        user = User(username=username, is_admin=is_admin)
        try:
            user.set_password(password)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        session.add(user)
        session.flush()
        session.expunge(user)
        return user


def ensure_admin() -> tuple[str, str] | None:
    """Create the first admin if there is no user at all.

    Returns (username, password) when one was created, else None.
    """
    with session_scope() as session:
        if session.scalar(select(User.id).limit(1)) is not None:
            return None
    password = secrets.token_urlsafe(12)
    create_user("admin", password, is_admin=True)
    return "admin", password


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash of a random password made like real ones, verified for unknown usernames."""
    return generate_password_hash(secrets.token_urlsafe(16))


def authenticate(username: str, password: str) -> User | None:
    """The active user with this username and password, else None; one hash check either way."""
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        stored = user.password_hash if user is not None else _dummy_hash()
        matches = check_password_hash(stored, password)
        if user is None or not matches or not user.is_active:
            return None
        session.expunge(user)
        return user


def get_user(user_id: int) -> User | None:
    with session_scope() as session:
        user = session.get(User, user_id)
        if user is None or not user.is_active:
            return None
        session.expunge(user)
        return user


def user_by_name(username: str) -> User:
    """The user called ``username`` (active or not); ``UserError`` if there is none."""
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        session.expunge(user)
        return user


def user_for_session(alternative_id: str) -> User | None:
    """The active user whose current session id is ``alternative_id`` (``"<id>:<version>"``)."""
    parsed = parse_session_id(alternative_id)
    if parsed is None:
        return None
    user = get_user(parsed[0])
    if user is None or user.session_version != parsed[1]:
        return None
    return user


def end_sessions(user_id: int) -> None:
    """End every session and remember-me cookie of the user (raise ``session_version``)."""
    with session_scope() as session:
        session.execute(
            update(User).where(User.id == user_id)
            .values(session_version=User.session_version + 1)
            .execution_options(synchronize_session=False)
        )


def list_users() -> list[dict]:
    with session_scope() as session:
        return [
            {"id": u.id, "username": u.username, "is_admin": u.is_admin, "is_active": u.is_active,
             "created_at": u.created_at.isoformat(), "share_weight": u.share_weight,
             "daily_gpu_cap_s": u.daily_gpu_cap_s}
            for u in session.scalars(select(User).order_by(User.username))
        ]


def set_password(username: str, password: str) -> None:
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        try:
            user.set_password(password)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        user.session_version += 1


def set_active(username: str, active: bool) -> None:
    """Enable or disable an account; disabling ends its sessions (its tokens are refused
    while it is disabled; enabling it again does not revive revoked tokens)."""
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        user.is_active = active
        if not active:
            user.session_version += 1


def _clean_token_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise UserError("give the token a name (e.g. where it is used: laptop, cluster)")
    if len(name) > MAX_TOKEN_NAME:
        raise UserError(f"a token name has at most {MAX_TOKEN_NAME} characters")
    return name


def create_api_token(username: str, name: str) -> str:
    """Create a named token for ``username``; returns its secret (shown once)."""
    return create_token_record(username, name)["token"]


def create_token_record(username: str, name: str) -> dict[str, Any]:
    """Create a named token; its record (``token_record``) plus ``"token"``: the secret, once."""
    clean = _clean_token_name(name)
    secret = ApiToken.new_secret()
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        token = ApiToken(user_id=user.id, name=clean, token_hash=hash_token(secret))
        session.add(token)
        session.flush()
        record = token_record(token, username)
    return {**record, "token": secret}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def token_record(token: ApiToken, username: str) -> dict[str, Any]:
    """The JSON form of a token (never its secret or hash)."""
    return {"id": token.id, "user": username, "name": token.name,
            "created_at": _iso(token.created_at), "last_used_at": _iso(token.last_used_at),
            "revoked_at": _iso(token.revoked_at), "active": token.revoked_at is None}


def list_tokens(username: str | None = None) -> list[dict[str, Any]]:
    """Tokens of ``username`` (every user's when None), newest first, revoked ones included."""
    query = select(ApiToken, User.username).join(User).order_by(ApiToken.created_at.desc(),
                                                               ApiToken.id.desc())
    if username is not None:
        query = query.where(User.username == username)
    with session_scope() as session:
        return [token_record(token, name) for token, name in session.execute(query)]


def revoke_token(actor: User, token_id: int) -> dict[str, Any]:
    """Revoke one token; only its owner or an admin may. Refused from then on, at once."""
    with session_scope() as session:
        token = session.get(ApiToken, token_id)
        if token is None or (token.user_id != actor.id and not actor.is_admin):
            raise UserError(f"no token with ID {token_id} that you may revoke")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
        session.flush()
        return token_record(token, token.user.username)


def revoke_tokens_named(username: str, name: str) -> int:
    """Revoke every active token of ``username`` called ``name`` (the CLI); returns how many."""
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        tokens = session.scalars(select(ApiToken).where(
            ApiToken.user_id == user.id, ApiToken.name == name, ApiToken.revoked_at.is_(None))).all()
        for token in tokens:
            token.revoked_at = utcnow()
        return len(tokens)


def user_for_token(secret: str) -> User | None:
    """The active user of an unrevoked token with this secret, else None (marks it used)."""
    with session_scope() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
        if token is None or token.revoked_at is not None or not token.user.is_active:
            return None
        token.last_used_at = utcnow()
        user = token.user
        session.flush()
        session.expunge(user)
        return user
