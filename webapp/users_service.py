"""Accounts and API tokens (used by the login page, the admin page and the CLI).

Invariants: passwords and tokens are stored hashed only; a token's secret is
shown once, when created; usernames match ``USERNAME_PATTERN``.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select

from models import ApiToken, User, session_scope
from models.base import utcnow
from models.user import USERNAME_PATTERN, hash_token


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


def authenticate(username: str, password: str) -> User | None:
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or not user.is_active or not user.check_password(password):
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


def list_users() -> list[dict]:
    with session_scope() as session:
        return [
            {"id": u.id, "username": u.username, "is_admin": u.is_admin, "is_active": u.is_active,
             "created_at": u.created_at.isoformat()}
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


def set_active(username: str, active: bool) -> None:
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        user.is_active = active


def create_api_token(username: str, name: str = "") -> str:
    """Create a token for ``username``; returns its secret (shown once)."""
    secret = ApiToken.new_secret()
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise UserError(f"no user {username!r}")
        session.add(ApiToken(user_id=user.id, name=name[:100], token_hash=hash_token(secret)))
    return secret


def user_for_token(secret: str) -> User | None:
    with session_scope() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
        if token is None or not token.user.is_active:
            return None
        token.last_used_at = utcnow()
        user = token.user
        session.flush()
        session.expunge(user)
        return user
