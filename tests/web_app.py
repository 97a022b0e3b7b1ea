"""The real Flask/Dash app in this process, on its own SQLite database, for test-client tests.

``app_env`` points the settings at a fresh data directory (SQLite database
migrated to head, SQLite broker, the given model catalogue) and restores the
environment afterwards. ``log_in`` goes through the login form like a browser:
it reads the CSRF token from the page and posts it with the credentials.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask.testing import FlaskClient

from latent_atlas.settings import get_settings


def forget_settings() -> None:
    """Drop the cached settings and the engines made from them (``session_scope()`` without a
    URL uses the database of the settings at its first call)."""
    from models.session import get_engine, get_sessionmaker

    get_settings.cache_clear()
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()

PASSWORD = "correct-horse-1"
CLEARED = ("ATLAS_DATABASE_URL", "ATLAS_BROKER_URL", "ATLAS_ARTIFACT_URL", "ATLAS_SECRET_KEY",
           "ATLAS_SECURE_COOKIES", "ATLAS_REMEMBER_DAYS", "ATLAS_LOGIN_RATE_LIMIT")


@contextmanager
def app_env(data_dir: Path, models: dict | None = None, **extra: str) -> Iterator[Path]:
    """Settings for an in-process app under ``data_dir``; ``extra``: more ``ATLAS_*`` values."""
    from migrations import runner

    saved = {name: os.environ.get(name) for name in (*CLEARED, "ATLAS_DATA_DIR", "ATLAS_MODELS",
                                                      "ATLAS_DEFAULT_MODEL", *extra)}
    try:
        for name in CLEARED:
            os.environ.pop(name, None)
        os.environ["ATLAS_DATA_DIR"] = str(data_dir)
        if models:
            os.environ["ATLAS_MODELS"] = json.dumps(models)
            os.environ["ATLAS_DEFAULT_MODEL"] = next(iter(models))
        os.environ.update(extra)
        forget_settings()
        runner.upgrade()
        yield data_dir
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        forget_settings()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(client: FlaskClient, username: str, password: str = PASSWORD, **headers: str):
    """Log in through the form (GET for the token, then POST); returns the POST's response."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token}, headers=headers)



def login_attempts(client: FlaskClient, username: str, count: int) -> list[int]:
    """``count`` wrong-password logins through the form; the status codes (401, or 429 when
    rate limited)."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return [client.post("/login", data={"username": username, "password": "wrong-password-0",
                                        "csrf_token": token}).status_code for _ in range(count)]
