"""Login, logout and the guard in front of every page and endpoint.

Invariants: every path needs a logged-in user (session cookie, or an API
bearer token for ``/api/``) except ``/login``, ``/healthz`` and the static CSS
under ``/assets/``; login attempts are rate limited per client address, counted
once for the whole portal (``webapp.rate_limit``: Redis or the database, never
per process). A session is bound to the user's ``session_version``
(``users_service.user_for_session``): logging out ends every session of the
account, and so do a password change and disabling it. Logging out is a POST
with the CSRF token; a GET logs out only when the browser says it was
navigated from this portal (``Sec-Fetch-Site: same-origin``), else it asks.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlparse

from flask import Flask, g, jsonify, redirect, render_template_string, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user, login_user, logout_user

from latent_atlas.settings import get_settings
from webapp import users_service
from webapp.rate_limit import storage_options, storage_uri

PUBLIC_PREFIXES = ("/login", "/healthz", "/assets/")

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · Latent Atlas</title>
<link rel="stylesheet" href="/assets/00-bootstrap.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 420px; margin-top: 10vh">
<h1 class="h3 mb-3">Latent Atlas</h1>
<p class="text-muted">Log in to explore the latent space of language models.</p>
{% if error %}<div class="alert alert-danger" role="alert" id="login-error">{{ error }}</div>{% endif %}
<form method="post" action="/login">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  <input type="hidden" name="next" value="{{ next_url }}">
  <div class="mb-3"><label class="form-label" for="username">Username</label>
    <input class="form-control" id="username" name="username" autocomplete="username" required autofocus></div>
  <div class="mb-3"><label class="form-label" for="password">Password</label>
    <input class="form-control" id="password" name="password" type="password" autocomplete="current-password" required></div>
  <button class="btn btn-primary w-100" id="login-submit" type="submit">Log in</button>
</form></main></body></html>"""

LOGOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log out · Latent Atlas</title>
<link rel="stylesheet" href="/assets/00-bootstrap.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 420px; margin-top: 10vh">
<h1 class="h3 mb-3">Log out?</h1>
<p class="text-muted">This ends every session of your account, in every browser.</p>
<form method="post" action="/logout">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  <button class="btn btn-primary w-100" id="logout-submit" type="submit">Log out</button>
</form></main></body></html>"""


def render_login(error: str | None = None, next_url: str = "/", status: int | None = None):
    """The login page (with its CSRF token) and its status: 401 with an error, else 200."""
    code = status if status is not None else (401 if error else 200)
    return render_template_string(LOGIN_PAGE, error=error, next_url=next_url), code


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths; anything else goes home."""
    if not target:
        return "/"
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def init_auth(server: Flask) -> None:
    settings = get_settings()
    server.config.update(
        REMEMBER_COOKIE_DURATION=timedelta(days=settings.remember_days),
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        REMEMBER_COOKIE_SECURE=settings.secure_cookies,
    )
    manager = LoginManager()
    manager.init_app(server)
    manager.login_view = "login"

    @manager.user_loader
    def _load(alternative_id: str):
        return users_service.user_for_session(alternative_id)

    limiter = Limiter(get_remote_address, app=server, storage_uri=storage_uri(settings),
                      storage_options=storage_options(settings), default_limits=[])

    @server.route("/login", methods=["GET", "POST"])
    @limiter.limit(settings.login_rate_limit, methods=["POST"])
    def login():
        next_url = _safe_next(request.values.get("next"))
        if request.method == "POST":
            user = users_service.authenticate(
                request.form.get("username", ""), request.form.get("password", "")
            )
            if user is not None:
                login_user(user, remember=True)
                return redirect(next_url)
            return render_login("Unknown username or wrong password.", next_url)
        return render_login(None, next_url)

    @server.errorhandler(429)
    def _too_many(_exc):
        message = "Too many login attempts; wait a minute and try again."
        if request.path.startswith("/api/"):
            return jsonify(error=message, messages=[message]), 429
        return render_login(message, status=429)

    @server.route("/logout", methods=["GET", "POST"])
    def logout():
        if request.method == "GET" and request.headers.get("Sec-Fetch-Site") != "same-origin":
            return render_template_string(LOGOUT_PAGE)
        if current_user.is_authenticated:
            users_service.end_sessions(current_user.id)
        logout_user()
        return redirect(url_for("login"))

    @server.before_request
    def _guard():
        path = request.path
        if path.startswith(PUBLIC_PREFIXES):
            return None
        header = request.headers.get("Authorization", "")
        if path.startswith("/api/") and header.startswith("Bearer "):
            user = users_service.user_for_token(header[len("Bearer "):].strip())
            if user is None:
                return jsonify(error="invalid or revoked API token",
                               messages=["invalid or revoked API token"]), 401
            g.api_user = user
            return None
        if current_user.is_authenticated:
            return None
        if path.startswith("/api/") or request.method != "GET" or path.startswith("/_dash"):
            return jsonify(error="login required", messages=["login required"]), 401
        return redirect(url_for("login", next=request.full_path.rstrip("?")))


def request_user():
    """The user of this request: API token user or the logged-in session user."""
    return g.get("api_user") or (current_user if current_user.is_authenticated else None)
