"""Cross-site request and framing protection for every route a cookie authenticates.

Invariants (``init_security``; run before ``init_auth`` so its checks come first):

* Every state-changing request (anything but GET/HEAD/OPTIONS) that a session
  cookie could authenticate must come from this portal's own pages:
  - a ``Sec-Fetch-Site`` header other than ``same-origin``/``none``, or an
    ``Origin`` whose host differs from the request's ``Host``, is refused (403);
  - HTML forms (``/login``, ``/logout``) carry Flask-WTF's CSRF token;
  - Dash's callback POSTs (``/_dash-update-component``) carry the same token in
    the ``X-CSRFToken`` header: dash-renderer copies it from the ``_csrf_token``
    cookie, which ``_csrf_cookie`` keeps valid (readable by our own scripts
    only; ``SameSite=Strict``);
  - the JSON API (``/api/``) with a cookie needs a custom header a cross-site
    form cannot send (``X-Requested-With`` or a valid ``X-CSRFToken``; any
    cross-origin fetch with one needs a CORS preflight this portal never grants).
  Requests with ``Authorization: Bearer <token>`` carry no cookie authority and
  are not affected.
* Every response forbids framing (``X-Frame-Options: DENY``, CSP
  ``frame-ancestors 'none'``) and sends a Content-Security-Policy that allows
  scripts from this origin plus Dash's own inline scripts by hash
  (``Dash.csp_hashes``); ``'unsafe-eval'`` is needed by Plotly's WebGL traces
  (regl compiles with ``Function``), ``'unsafe-inline'`` styles by Plotly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import urlparse

from flask import Flask, Response, jsonify, request
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf, validate_csrf
from wtforms import ValidationError

from latent_atlas.settings import get_settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_COOKIE = "_csrf_token"  # the name dash-renderer reads
CSRF_HEADER = "X-CSRFToken"  # the header dash-renderer sends
API_HEADERS = ("X-Requested-With", CSRF_HEADER, "X-CSRF-Token")
STATIC_PREFIXES = ("/assets/", "/_dash-component-suites/", "/healthz", "/_favicon.ico")

csrf = CSRFProtect()


def _bearer() -> bool:
    return request.path.startswith("/api/") and request.headers.get(
        "Authorization", ""
    ).startswith("Bearer ")


def cross_site_problem() -> str | None:
    """Why this request looks cross-site (``Sec-Fetch-Site``, ``Origin``), else None."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin == "null" or urlparse(origin).netloc.lower() != request.host.lower():
            return "cross-site request refused (its Origin is not this portal)"
    return None


def _token_valid(value: str | None) -> bool:
    if not value:
        return False
    try:
        validate_csrf(value)
    except ValidationError:
        return False
    return True


def api_csrf_problem() -> str | None:
    """Why a cookie-authenticated state-changing ``/api/`` request is refused, else None."""
    if request.headers.get("X-Requested-With"):
        return None
    if _token_valid(request.headers.get(CSRF_HEADER) or request.headers.get("X-CSRF-Token")):
        return None
    return ("a request authenticated by the session cookie must send the header "
            "X-Requested-With (or X-CSRFToken); scripts use Authorization: Bearer <token>")


def content_security_policy(inline_hashes: Sequence[str]) -> str:
    script = " ".join(["'self'", "'unsafe-eval'", *inline_hashes])
    return "; ".join([
        "default-src 'self'",
        f"script-src {script}",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def _refuse(message: str, status: int = 403):
    if request.path.startswith(("/api/", "/_dash")):
        return jsonify(error=message, messages=[message]), status
    return Response(message, status=status, mimetype="text/plain")


def set_inline_script_hashes(server: Flask, hashes: Callable[[], Sequence[str]]) -> None:
    """Where the CSP hashes of the pages' inline scripts come from (``Dash.csp_hashes``).

    Called per HTML response, so callbacks Dash registers late are included.
    """
    server.extensions["atlas_inline_script_hashes"] = hashes


def init_security(server: Flask) -> None:
    """CSRF protection, cross-site checks and security headers on ``server``."""
    settings = get_settings()
    server.config.update(
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as the session that holds its secret
        WTF_CSRF_HEADERS=[CSRF_HEADER, "X-CSRF-Token"],
        WTF_CSRF_SSL_STRICT=True,
        WTF_CSRF_CHECK_DEFAULT=False,  # _cross_site below decides which requests need the token
    )
    csrf.init_app(server)

    @server.before_request
    def _cross_site():
        if request.method in SAFE_METHODS or _bearer():
            return None
        problem = cross_site_problem()
        if problem is None and request.path.startswith("/api/"):
            problem = api_csrf_problem()
        if problem is not None:
            return _refuse(problem)
        if not request.path.startswith("/api/"):
            csrf.protect()  # forms and Dash callbacks: the token (raises CSRFError)
        return None

    @server.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        if request.path == "/login":
            from webapp.auth import render_login

            return render_login("The login form expired or came from another site; "
                                "log in again.", status=400)
        return _refuse(f"CSRF check failed: {exc.description} Reload the page.", 400)

    @server.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        hashes = server.extensions.get("atlas_inline_script_hashes", tuple)
        inline = hashes() if response.mimetype == "text/html" else ()
        response.headers.setdefault("Content-Security-Policy", content_security_policy(inline))
        if settings.secure_cookies:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        _csrf_cookie(response)
        return response

    def _csrf_cookie(response: Response) -> None:
        """Keep a valid CSRF token in the cookie dash-renderer reads (pages only)."""
        if request.path.startswith(STATIC_PREFIXES) or request.path.startswith("/api/"):
            return
        if _token_valid(request.cookies.get(CSRF_COOKIE)):
            return
        response.set_cookie(CSRF_COOKIE, generate_csrf(), httponly=False, samesite="Strict",
                            secure=settings.secure_cookies, path="/")
