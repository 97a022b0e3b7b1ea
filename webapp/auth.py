"""Login, logout and the guard in front of every page and endpoint.

Invariants: every path needs a logged-in user (session cookie, or an API
bearer token for ``/api/``) except ``/login``, ``/healthz`` and the static CSS
under ``/assets/``; login attempts are rate limited per client address.
"""

from __future__ import annotations

from urllib.parse import urlparse

from flask import Flask, g, jsonify, redirect, render_template_string, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user, login_user, logout_user

from latent_atlas.settings import get_settings
from webapp import users_service

PUBLIC_PREFIXES = ("/login", "/healthz", "/assets/")

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · Latent Atlas</title>
<link rel="stylesheet" href="/assets/00-bootstrap.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 420px; margin-top: 10vh">
<h1 class="h3 mb-3">Latent Atlas</h1>
<p class="text-muted">Log in to explore the latent space of language models.</p>
{% if error %}<div class="alert alert-danger" role="alert" id="login-error">{{ error }}</div>{% endif %}
<form method="post" action="/login">
  <input type="hidden" name="next" value="{{ next_url }}">
  <div class="mb-3"><label class="form-label" for="username">Username</label>
    <input class="form-control" id="username" name="username" autocomplete="username" required autofocus></div>
  <div class="mb-3"><label class="form-label" for="password">Password</label>
    <input class="form-control" id="password" name="password" type="password" autocomplete="current-password" required></div>
  <button class="btn btn-primary w-100" id="login-submit" type="submit">Log in</button>
</form></main></body></html>"""


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
    manager = LoginManager()
    manager.init_app(server)
    manager.login_view = "login"

    @manager.user_loader
    def _load(user_id: str):
        try:
            return users_service.get_user(int(user_id))
        except ValueError:
            return None

    storage = settings.broker_url if settings.broker_url.startswith("redis") else "memory://"
    limiter = Limiter(get_remote_address, app=server, storage_uri=storage, default_limits=[])

    @server.route("/login", methods=["GET", "POST"])
    @limiter.limit(settings.login_rate_limit, methods=["POST"])
    def login():
        next_url = _safe_next(request.values.get("next"))
        error = None
        if request.method == "POST":
            user = users_service.authenticate(
                request.form.get("username", ""), request.form.get("password", "")
            )
            if user is not None:
                login_user(user, remember=True)
                return redirect(next_url)
            error = "Unknown username or wrong password."
        return render_template_string(LOGIN_PAGE, error=error, next_url=next_url), (
            401 if error else 200
        )

    @server.errorhandler(429)
    def _too_many(_exc):
        return render_template_string(
            LOGIN_PAGE, error="Too many login attempts; wait a minute and try again.", next_url="/"
        ), 429

    @server.route("/logout")
    def logout():
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
                return jsonify(error="invalid API token"), 401
            g.api_user = user
            return None
        if current_user.is_authenticated:
            return None
        if path.startswith("/api/") or request.method != "GET" or path.startswith("/_dash"):
            return jsonify(error="login required"), 401
        return redirect(url_for("login", next=request.full_path.rstrip("?")))


def request_user():
    """The user of this request: API token user or the logged-in session user."""
    return g.get("api_user") or (current_user if current_user.is_authenticated else None)
