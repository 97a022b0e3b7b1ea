"""The login rate limit holds for the whole portal, not per web process.

Two apps (as gunicorn's workers each build one, with their own limiter and
database connections) take wrong passwords at once from two threads; together
they answer exactly ``LIMIT`` times before 429s. With per-process counters
(``memory://``) they would let twice as many through. Run on the embedded
default (counters in SQLite), on PostgreSQL with a SQLite broker (counters in
PostgreSQL) and on PostgreSQL + Redis (counters in Redis).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from web_app import PASSWORD, app_env, login_attempts

from harness import make_backend

pytestmark = pytest.mark.integration

LIMIT = 6
PER_APP = 5


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres-db", "postgres"])
def test_login_limit_is_shared_by_every_web_process(tmp_path, backend_name):
    backend = make_backend("sqlite" if backend_name == "sqlite" else "postgres", tmp_path)
    broker = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}" if backend_name == "postgres-db" else (
        backend.broker_url)
    try:
        with app_env(tmp_path, ATLAS_DATABASE_URL=backend.database_url, ATLAS_BROKER_URL=broker,
                     ATLAS_LOGIN_RATE_LIMIT=f"{LIMIT} per hour", ATLAS_SECRET_KEY=uuid.uuid4().hex):
            from latent_atlas.settings import get_settings
            from webapp import users_service
            from webapp.app import create_server
            from webapp.rate_limit import storage_uri

            expected = "redis://" if backend_name == "postgres" else "atlas+db://"
            assert storage_uri(get_settings()).startswith(expected)
            users_service.create_user("victim", PASSWORD)
            clients = [create_server().test_client() for _ in range(2)]
            with ThreadPoolExecutor(2) as pool:
                results = pool.map(lambda c: login_attempts(c, "victim", PER_APP), clients)
                codes = [code for result in results for code in result]
        assert sorted(set(codes)) == [401, 429], codes
        assert codes.count(401) == LIMIT, codes
    finally:
        backend.cleanup()
