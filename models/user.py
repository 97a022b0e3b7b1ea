"""Users and their API tokens. Passwords and tokens are stored hashed only.

Invariants: a login session carries ``User.get_id()`` = ``"<id>:<session_version>"``
(Flask-Login's alternative id, also inside the remember-me cookie), so raising
``session_version`` ends every session of that account at once; a token with
``revoked_at`` set is refused, whatever the state of its user.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from models.base import Base, UTCDateTime, utcnow

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{2,64}$"
MIN_PASSWORD_LENGTH = 8
SHARE_WEIGHT_BOUNDS = (0.1, 100.0)
DAILY_CAP_BOUNDS = (60, 86_400)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Raised on logout, password change and disable: every older session cookie stops working.
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Fair share (workers.fair_share): weight 2 gets twice the GPU time of weight 1
    # (bounds SHARE_WEIGHT_BOUNDS); a daily cap of GPU-seconds (UTC day) holds the member's
    # gpu runs once reached (None: no cap; bounds DAILY_CAP_BOUNDS).
    share_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    daily_gpu_cap_s: Mapped[int | None] = mapped_column(Integer, nullable=True)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def set_password(self, password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    # Flask-Login protocol (kept here so the web layer needs no wrapper class).
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        """The alternative id Flask-Login keeps in the session and the remember cookie."""
        return session_id(self.id, self.session_version)


def session_id(user_id: int, version: int) -> str:
    return f"{user_id}:{version}"


def parse_session_id(value: str) -> tuple[int, int] | None:
    """``(user_id, session_version)`` from ``"<id>:<version>"``; ``None`` for anything else."""
    head, sep, tail = value.partition(":")
    if not sep or not head.isdigit() or not tail.isdigit():
        return None
    return int(head), int(tail)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(Base):
    """A named per-user bearer token for scripts. Only its sha256 is stored (the secret is
    32 random bytes, so a fast hash suffices); a revoked token stays listed, refused."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    user: Mapped[User] = relationship(back_populates="tokens")

    @staticmethod
    def new_secret() -> str:
        return "la_" + secrets.token_urlsafe(32)
