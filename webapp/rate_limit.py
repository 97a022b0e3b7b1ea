"""The login rate limit's storage, shared by every web process of the portal.

flask-limiter counts in a ``limits`` storage. ``memory://`` would be one count
per gunicorn worker (N workers let N times the limit through), so:

* with a Redis broker, the counters live in that Redis (``limits``' own
  ``RedisStorage``);
* otherwise (the embedded default, or PostgreSQL with a SQLite broker) they
  live in the portal's database, table ``rate_limits``, through ``DatabaseStorage``
  below: one atomic upsert per hit (``INSERT ... ON CONFLICT DO UPDATE ...
  RETURNING``, SQLite >= 3.35 and PostgreSQL), so concurrent processes never
  lose a count.

Only the fixed-window strategy (flask-limiter's default) is supported by the
database storage: it needs ``incr``, ``get`` and ``get_expiry``.
"""

from __future__ import annotations

import time

from limits.storage import Storage
from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from latent_atlas.settings import Settings
from models import RateLimitCounter, session_scope
from models.session import get_engine

DATABASE_SCHEME = "atlas+db"


def storage_uri(settings: Settings) -> str:
    """The ``limits`` storage URI for this portal: its Redis broker, else its database."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return f"{DATABASE_SCHEME}://"


def storage_options(settings: Settings) -> dict[str, str]:
    """Options for the storage of ``storage_uri`` (the database URL for ``DatabaseStorage``)."""
    if storage_uri(settings).startswith(DATABASE_SCHEME):
        return {"database_url": settings.database_url}
    return {}


class DatabaseStorage(Storage):
    """Fixed-window counters in the ``rate_limits`` table of the configured database."""

    STORAGE_SCHEME = [DATABASE_SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False,
                 database_url: str | None = None, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.database_url = database_url  # None: the configured database

    def _session(self):
        return session_scope(self.database_url)

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        table = RateLimitCounter.__table__
        dialect = get_engine(self.database_url).dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise RuntimeError(f"the login limit keeps its counts in SQLite or PostgreSQL, not {dialect}; use a Redis broker")
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
        expired = table.c.expires_at <= now
        statement = insert.values(key=key, count=amount, expires_at=now + expiry).on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": case((expired, amount), else_=table.c.count + amount),
                "expires_at": case((expired, now + expiry), else_=table.c.expires_at),
            },
        ).returning(table.c.count)
        with self._session() as session:
            return int(session.execute(statement).scalar_one())

    def _row(self, key: str) -> RateLimitCounter | None:
        with self._session() as session:
            row = session.scalar(select(RateLimitCounter).where(RateLimitCounter.key == key))
            if row is not None:
                session.expunge(row)
            return row

    def get(self, key: str) -> int:
        row = self._row(key)
        return row.count if row is not None and row.expires_at > time.time() else 0

    def get_expiry(self, key: str) -> float:
        row = self._row(key)
        return row.expires_at if row is not None and row.expires_at > time.time() else time.time()

    def check(self) -> bool:
        try:
            with self._session() as session:
                session.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with self._session() as session:
            return session.execute(delete(RateLimitCounter)).rowcount

    def clear(self, key: str) -> None:
        with self._session() as session:
            session.execute(delete(RateLimitCounter).where(RateLimitCounter.key == key))
