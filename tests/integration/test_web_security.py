"""Credentials, sessions, cross-site requests and framing on the real app (Flask test client).

One app for the module, on its own SQLite database and broker (``web_app.app_env``).
Every test creates its own users, so the order of the tests does not matter.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
from web_app import PASSWORD, app_env, csrf_from, log_in

pytestmark = pytest.mark.integration

XHR = {"X-Requested-With": "XMLHttpRequest"}
EVIL = "http://127.0.0.1:9999"  # another port of the same host: same-site, not same-origin


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with app_env(tmp_path_factory.mktemp("web-security"), models, ATLAS_UMAP_WARMUP="false",
                 ATLAS_LOGIN_RATE_LIMIT="1000 per minute"):
        from webapp.app import create_app

        yield create_app()


@pytest.fixture
def server(app):
    return app.server


def _user(admin: bool = False) -> str:
    from webapp import users_service

    name = f"u{uuid.uuid4().hex[:10]}"
    users_service.create_user(name, PASSWORD, is_admin=admin)
    return name


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _submit(server, secret: str) -> str:
    response = server.test_client().post("/api/runs", headers=_bearer(secret), json={
        "kind": "geometry", "params": {"model": "tiny-gpt2", "prompts": ["hello there"]}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


# -- API tokens ----------------------------------------------------------------------------


def test_tokens_are_named_listed_and_revoked_one_by_one(server):
    from webapp import users_service

    name = _user()
    first = users_service.create_api_token(name, "laptop")
    second = users_service.create_api_token(name, "cluster")
    client = server.test_client()
    assert client.get("/api/runs", headers=_bearer(first)).status_code == 200

    listed = client.get("/api/tokens", headers=_bearer(second)).get_json()["tokens"]
    by_name = {t["name"]: t for t in listed}
    assert set(by_name) == {"laptop", "cluster"} and all(t["active"] for t in listed)
    assert by_name["laptop"]["last_used_at"] is not None and by_name["laptop"]["created_at"]
    assert not any("token" in t or "token_hash" in t for t in listed)

    revoked = client.delete(f"/api/tokens/{by_name['laptop']['id']}", headers=_bearer(second))
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None
    refused = client.get("/api/runs", headers=_bearer(first))
    assert refused.status_code == 401 and "revoked" in refused.get_json()["error"]
    assert client.get("/api/runs", headers=_bearer(second)).status_code == 200


def test_only_the_owner_or_an_admin_revokes_a_token(server):
    from webapp import users_service

    alice, bob, admin = _user(), _user(), _user(admin=True)
    alice_token = users_service.create_token_record(alice, "script")
    bob_secret = users_service.create_api_token(bob, "bob")
    admin_secret = users_service.create_api_token(admin, "admin")
    client = server.test_client()
    assert client.delete(f"/api/tokens/{alice_token['id']}", headers=_bearer(bob_secret)).status_code == 404
    assert client.get(f"/api/tokens?user={alice}", headers=_bearer(bob_secret)).status_code == 403
    assert client.get("/api/runs", headers=_bearer(alice_token["token"])).status_code == 200
    assert client.delete(f"/api/tokens/{alice_token['id']}", headers=_bearer(admin_secret)).status_code == 200
    assert client.get("/api/runs", headers=_bearer(alice_token["token"])).status_code == 401


def test_create_token_through_the_api_stores_only_a_hash(server):
    from sqlalchemy import select

    from models import ApiToken, session_scope

    name = _user()
    client = server.test_client()
    assert log_in(client, name).status_code == 302
    created = client.post("/api/tokens", json={"name": "notebook"}, headers=XHR)
    assert created.status_code == 201
    secret = created.get_json()["token"]
    with session_scope() as session:
        stored = session.scalar(select(ApiToken).where(ApiToken.id == created.get_json()["id"]))
        assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (stored.token_hash, stored.name)
    assert client.post("/api/tokens", json={"name": "  "}, headers=XHR).status_code == 400
    assert client.post("/api/tokens", json={"name": 5}, headers=XHR).status_code == 400


def test_disable_refuses_every_token_and_enable_does_not_revive_revoked_ones(server):
    from webapp import users_service

    name = _user()
    kept = users_service.create_token_record(name, "kept")
    dropped = users_service.create_token_record(name, "dropped")
    users_service.revoke_token(users_service.get_user(kept_user_id(name)), dropped["id"])
    client = server.test_client()
    users_service.set_active(name, False)
    assert client.get("/api/runs", headers=_bearer(kept["token"])).status_code == 401
    users_service.set_active(name, True)
    assert client.get("/api/runs", headers=_bearer(kept["token"])).status_code == 200
    assert client.get("/api/runs", headers=_bearer(dropped["token"])).status_code == 401


def kept_user_id(username: str) -> int:
    from sqlalchemy import select

    from models import User, session_scope

    with session_scope() as session:
        return session.scalar(select(User.id).where(User.username == username))


# -- sessions ------------------------------------------------------------------------------


def _cookies(client) -> dict[str, str]:
    return {c.key: c.value for c in client._cookies.values()}


def _client_with(server, cookies: dict[str, str]):
    client = server.test_client()
    for key, value in cookies.items():
        client.set_cookie(key, value)
    return client


def test_logout_ends_copied_session_cookies_and_remember_tokens(server):
    name = _user()
    browser = server.test_client()
    assert log_in(browser, name).status_code == 302
    copied = _cookies(browser)
    assert {"session", "remember_token"} <= set(copied)
    assert _client_with(server, copied).get("/api/runs").status_code == 200
    only_remember = {"remember_token": copied["remember_token"]}
    assert _client_with(server, only_remember).get("/api/runs").status_code == 200

    token = csrf_from(browser.get("/logout").get_data(as_text=True))
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 302

    assert _client_with(server, copied).get("/api/runs").status_code == 401
    assert _client_with(server, only_remember).get("/api/runs").status_code == 401
    assert browser.get("/api/runs").status_code == 401


@pytest.mark.parametrize("change", ["password", "disable"])
def test_password_change_and_disable_end_every_session(server, change):
    from webapp import users_service

    name = _user()
    browser = server.test_client()
    assert log_in(browser, name).status_code == 302
    copied = _cookies(browser)
    if change == "password":
        users_service.set_password(name, "another-horse-2")
    else:
        users_service.set_active(name, False)
        users_service.set_active(name, True)
    assert browser.get("/api/runs").status_code == 401
    assert _client_with(server, {"remember_token": copied["remember_token"]}).get(
        "/api/runs").status_code == 401
    password = "another-horse-2" if change == "password" else PASSWORD
    assert log_in(server.test_client(), name, password).status_code == 302


def test_remember_cookie_lasts_the_configured_fortnight(server):
    response = log_in(server.test_client(), _user())
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("remember_token="))
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", cookie).group(1))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=14))) < timedelta(minutes=5)
    assert "HttpOnly" in cookie and "Secure" not in cookie


def test_secure_cookies_setting(tmp_path):
    with app_env(tmp_path, ATLAS_SECURE_COOKIES="true"):
        from webapp import users_service
        from webapp.app import create_server

        users_service.create_user("sam", PASSWORD)
        client = create_server().test_client()
        page = client.get("/login", base_url="https://portal.example")
        response = client.post(
            "/login", base_url="https://portal.example",
            headers={"Referer": "https://portal.example/login"},
            data={"username": "sam", "password": PASSWORD,
                  "csrf_token": csrf_from(page.get_data(as_text=True))})
        assert response.status_code == 302
        cookies = response.headers.getlist("Set-Cookie") + page.headers.getlist("Set-Cookie")
        names = {c.split("=", 1)[0] for c in cookies}
        assert {"session", "remember_token", "_csrf_token"} <= names
        assert all("Secure" in c for c in cookies), cookies
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_login_checks_one_password_hash_for_unknown_users_too(server, monkeypatch):
    """Same work for a known and an unknown username: exactly one hash check of the same kind."""
    from webapp import users_service

    checked: list[str] = []
    real = users_service.check_password_hash

    def counting(pwhash: str, password: str) -> bool:
        checked.append(pwhash.rsplit("$", 2)[0])  # the method and its cost parameters
        return real(pwhash, password)

    monkeypatch.setattr(users_service, "check_password_hash", counting)
    name = _user()
    assert users_service.authenticate(name, "wrong-password-0") is None
    assert users_service.authenticate(f"nobody-{name}", "wrong-password-0") is None
    assert len(checked) == 2 and checked[0] == checked[1], checked


# -- cross-site requests -------------------------------------------------------------------


def test_login_form_needs_its_csrf_token_and_same_origin(server):
    name = _user()
    forged = server.test_client().post("/login", data={"username": name, "password": PASSWORD})
    assert forged.status_code == 400 and "_user_id" not in str(_cookies(server.test_client()))
    client = server.test_client()
    cross = log_in(client, name, Origin=EVIL)
    assert cross.status_code == 403 and client.get("/api/runs").status_code == 401
    cross_site = log_in(client, name, **{"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403 and client.get("/api/runs").status_code == 401
    same = log_in(client, name, Origin="http://localhost", **{"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 302 and client.get("/api/runs").status_code == 200


def test_cookie_api_writes_need_a_custom_header_and_same_origin(server):
    from webapp import users_service

    name = _user()
    run_id = _submit(server, users_service.create_api_token(name, "submit"))
    browser = server.test_client()
    assert log_in(browser, name).status_code == 302
    cancel = f"/api/runs/{run_id}/cancel"

    form_like = browser.post(cancel, data={"x": "1"})  # what a cross-site form can send
    assert form_like.status_code == 403 and "X-Requested-With" in form_like.get_json()["error"]
    other_port = browser.post(cancel, headers={**XHR, "Origin": EVIL})
    assert other_port.status_code == 403
    same_site = browser.post(cancel, headers={**XHR, "Sec-Fetch-Site": "same-site"})
    assert same_site.status_code == 403
    assert browser.get(f"/api/runs/{run_id}").get_json()["status"] == "queued"

    own_page = browser.post(cancel, headers={**XHR, "Origin": "http://localhost",
                                             "Sec-Fetch-Site": "same-origin"})
    assert own_page.status_code == 200 and own_page.get_json()["status"] == "cancelled"


def test_bearer_clients_are_not_affected(server):
    from webapp import users_service

    secret = users_service.create_api_token(_user(), "script")
    run_id = _submit(server, secret)
    response = server.test_client().post(f"/api/runs/{run_id}/cancel", headers=_bearer(secret))
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"


def _page_router_call(client) -> dict:
    """A real Dash callback request: the pages router, for path ``/runs``."""
    callbacks = client.get("/_dash-dependencies").get_json()
    router = next(c for c in callbacks if "_pages_content.children" in c["output"])
    return {
        "output": router["output"],
        "outputs": [{"id": o.split(".")[0], "property": o.split(".")[1]}
                    for o in router["output"].strip(".").split("...")],
        "inputs": [{"id": i["id"], "property": i["property"],
                    "value": "/runs" if i["property"] == "pathname" else ""}
                   for i in router["inputs"]],
        "changedPropIds": ["_pages_location.pathname"],
        "state": [{"id": s["id"], "property": s["property"]} for s in router["state"]],
    }


def test_dash_callbacks_need_the_token_dash_renderer_sends(server):
    browser = server.test_client()
    assert log_in(browser, _user()).status_code == 302
    page = browser.get("/runs")
    token = browser.get_cookie("_csrf_token")
    assert page.status_code == 200 and token is not None and not token.http_only
    body = _page_router_call(browser)

    without = browser.post("/_dash-update-component", json=body)
    assert without.status_code == 400 and "CSRF" in without.get_json()["error"]
    wrong = browser.post("/_dash-update-component", json=body, headers={"X-CSRFToken": "forged"})
    assert wrong.status_code == 400
    cross = browser.post("/_dash-update-component", json=body,
                         headers={"X-CSRFToken": token.value, "Origin": EVIL})
    assert cross.status_code == 403
    ok = browser.post("/_dash-update-component", json=body, headers={"X-CSRFToken": token.value})
    assert ok.status_code == 200, ok.get_data(as_text=True)[:500]
    assert "runs-page" in ok.get_data(as_text=True)


def test_logout_by_a_cross_site_link_only_asks(server):
    browser = server.test_client()
    assert log_in(browser, _user()).status_code == 302
    asked = browser.get("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert asked.status_code == 200 and 'action="/logout"' in asked.get_data(as_text=True)
    assert browser.get("/api/runs").status_code == 200
    assert browser.post("/logout", headers={"Origin": EVIL}).status_code == 403
    assert browser.post("/logout").status_code == 400  # no CSRF token
    assert browser.get("/api/runs").status_code == 200
    navbar = browser.get("/logout", headers={"Sec-Fetch-Site": "same-origin"})
    assert navbar.status_code == 302 and browser.get("/api/runs").status_code == 401


# -- framing and content security ------------------------------------------------------------


def _inline_scripts(html: str) -> list[str]:
    html = re.sub(r"<!--.*?-->", "", html, flags=re.S)  # e.g. the IE-only warning
    scripts = []
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S):
        if "src=" in attrs or "application/json" in attrs:
            continue  # external (allowed by 'self') or data, never executed
        scripts.append(body)
    return scripts


@pytest.mark.parametrize("path", ["/", "/runs", "/new", "/login", "/api/runs"])
def test_every_page_forbids_framing_and_allows_only_its_own_scripts(server, path):
    browser = server.test_client()
    assert log_in(browser, _user()).status_code == 302
    response = browser.get(path)
    assert response.status_code == 200
    assert response.headers["X-Frame-Options"] == "DENY"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    script_src = re.search(r"script-src ([^;]+)", csp).group(1).split()
    assert "'unsafe-inline'" not in script_src
    for body in _inline_scripts(response.get_data(as_text=True)):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src, body[:200]
