"""The protections on a live portal: gunicorn with two web workers on the embedded default.

What the test client cannot show: a chunked body streamed through gunicorn is
refused with a JSON 413 (not read as "malformed JSON"), the login limit holds
across gunicorn's two workers, and a cross-origin write with a real session
cookie is refused.
"""

from __future__ import annotations

import re

import pytest
import requests
from sqlalchemy import create_engine, text

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-1"


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-security")
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    # workers=0: no Celery worker, nothing here needs a run to execute
    with started_portal(data_dir, "sqlite", models, "tiny-gpt2", {"ATLAS_LOGIN_RATE_LIMIT": "10 per hour"},
                        workers=0, users=("alice", "target"), password=PASSWORD) as live:
        yield live


def _log_in(portal: Portal, session: requests.Session, username: str, password: str) -> int:
    page = session.get(portal.url + "/login", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return session.post(portal.url + "/login", allow_redirects=False, timeout=30, data={
        "username": username, "password": password, "csrf_token": token}).status_code


def test_a_chunked_body_over_the_limit_is_a_json_413(portal):
    def body():
        yield b'{"kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": ["'
        for _ in range(50):
            yield b"x" * 2**20
        yield b'"]}}'

    response = portal.api("POST", "/api/runs", portal.alice, data=body(),
                          headers={"Content-Type": "application/json"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text[:300]
    assert "too large" in response.json()["error"]


def test_the_login_limit_holds_across_gunicorn_workers(portal):
    codes = []
    try:
        for _ in range(14):  # a fresh connection each time: gunicorn spreads them over its workers
            with requests.Session() as session:
                codes.append(_log_in(portal, session, "target", "wrong-password-0"))
    finally:  # the limit is per client address: let the other tests log in again
        engine = create_engine(portal.backend.database_url)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM rate_limits"))
        engine.dispose()
    assert codes.count(401) == 10 and codes.count(429) == 4, codes


def test_a_cross_origin_write_with_the_session_cookie_is_refused(portal):
    run = portal.submit(portal.alice, {"model": "tiny-gpt2", "prompts": ["hello there"]})
    with requests.Session() as browser:
        assert _log_in(portal, browser, "alice", PASSWORD) == 302
        cancel = f"{portal.url}/api/runs/{run['id']}/cancel"
        other_port = "http://127.0.0.1:1"
        refused = browser.post(cancel, timeout=30, headers={
            "Origin": other_port, "X-Requested-With": "XMLHttpRequest"})
        assert refused.status_code == 403, refused.text
        form = browser.post(cancel, timeout=30, data={"a": "b"})
        assert form.status_code == 403
        assert portal.api("GET", f"/api/runs/{run['id']}", portal.alice).json()["status"] == "queued"
        page = browser.get(portal.url + "/runs", timeout=30)
        assert page.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        allowed = browser.post(cancel, timeout=30, headers={"X-Requested-With": "XMLHttpRequest"})
        assert allowed.status_code == 200 and allowed.json()["status"] == "cancelled"
