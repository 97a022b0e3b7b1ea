"""Migration 0002 (credentials) upgrades a database that already has users and tokens.

On SQLite and PostgreSQL: a database at 0001 with a user and an unnamed token
is upgraded to 0002; the token still works (it was stored hashed already), gets
a name, is not revoked; the user's sessions start at version 1; the counters
table exists. Downgrading to 0001 drops the new columns and deletes revoked
tokens rather than reviving them.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from harness import make_backend
from migrations import runner

pytestmark = pytest.mark.integration

SECRETS = ("la_kept-secret", "la_revoked-secret")


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_0002_keeps_existing_tokens_and_users(tmp_path, backend_name):
    backend = make_backend(backend_name, tmp_path)
    engine = create_engine(backend.database_url)
    try:
        runner.upgrade(backend.database_url, "0001")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (id, username, password_hash, is_admin, is_active, created_at) "
                "VALUES (1, 'old', 'x', false, true, :now)"), {"now": now})
            for index, secret in enumerate(SECRETS, start=1):
                conn.execute(text(
                    "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) "
                    "VALUES (:id, 1, :name, :hash, :now)"),
                    {"id": index, "name": "" if index == 1 else "second",
                     "hash": hashlib.sha256(secret.encode()).hexdigest(), "now": now})

        runner.upgrade(backend.database_url, "0002")
        with engine.begin() as conn:
            rows = conn.execute(text(
                "SELECT id, name, revoked_at FROM api_tokens ORDER BY id")).all()
            assert [(r.id, r.name, r.revoked_at) for r in rows] == [
                (1, "token 1", None), (2, "second", None)]
            assert conn.execute(text("SELECT session_version FROM users")).scalar_one() == 1
            conn.execute(text("INSERT INTO rate_limits (key, count, expires_at) VALUES ('k', 1, 0)"))
            conn.execute(text("UPDATE api_tokens SET revoked_at = :now WHERE id = 2"), {"now": now})
        assert {c["name"] for c in inspect(engine).get_columns("api_tokens")} >= {"revoked_at"}

        runner.downgrade(backend.database_url, "0001")
        inspector = inspect(engine)
        assert "rate_limits" not in inspector.get_table_names()
        assert "session_version" not in {c["name"] for c in inspector.get_columns("users")}
        with engine.begin() as conn:
            assert conn.execute(text("SELECT id FROM api_tokens")).scalars().all() == [1]
    finally:
        engine.dispose()
        backend.cleanup()
