"""The app factory: one Flask server carrying the Dash pages and the JSON API.

``create_app()`` is what gunicorn serves (``webapp.app:server``) and what tests
start. Pages live in ``webapp/pages`` (``dash.register_page``); each run kind's
view lives in ``webapp/views/<kind>.py`` and namespaces its component IDs.
"""

from __future__ import annotations

from pathlib import Path

import dash
import dash_bootstrap_components as dbc
from dash import Dash, dcc, html
from flask import Flask, jsonify

from latent_atlas.settings import get_settings
from webapp.api import api
from webapp.api_errors import init_api_errors
from webapp.auth import init_auth
from webapp.security import init_security, set_inline_script_hashes

HERE = Path(__file__).resolve().parent


def _navbar() -> dbc.Navbar:
    return dbc.Navbar(
        dbc.Container(
            [
                dbc.NavbarBrand("Latent Atlas", href="/"),
                dbc.Nav(
                    [
                        dbc.NavItem(dbc.NavLink("New run", href="/new", id="nav-new")),
                        dbc.NavItem(dbc.NavLink("Runs", href="/runs", id="nav-runs")),
                        dbc.NavItem(dbc.NavLink("Queue", href="/admin/queue", id="nav-queue")),
                        dbc.NavItem(dbc.NavLink("Users", href="/admin/users", id="nav-users")),
                        dbc.NavItem(dbc.NavLink("Log out", href="/logout", external_link=True)),
                    ],
                    navbar=True,
                ),
            ],
            fluid=True,
        ),
        color="dark",
        dark=True,
        class_name="mb-3",
    )


def create_server() -> Flask:
    settings = get_settings()
    server = Flask(__name__)
    server.secret_key = settings.ensure_secret_key()
    server.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=32 * 1024 * 1024,
    )
    init_security(server)  # before init_auth: cross-site requests are refused before anything else
    init_auth(server)
    init_api_errors(server)
    server.register_blueprint(api)

    @server.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return server


def create_app() -> Dash:
    server = create_server()
    app = Dash(
        # The package, not ``__name__``: Dash then imports each page as ``webapp.pages.<page>``, the
        # name any other import of it uses, so importing a page module elsewhere (a test, a helper)
        # never registers its path twice ("modules [...] have duplicate paths" on every request).
        "webapp",
        server=server,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(HERE / "assets"),
        suppress_callback_exceptions=True,
        title="Latent Atlas",
        update_title=None,
    )
    app.layout = html.Div(
        [dcc.Location(id="url"), _navbar(), dbc.Container(dash.page_container, fluid=True)]
    )
    set_inline_script_hashes(server, app.csp_hashes)
    return app


def wsgi() -> Flask:
    """The WSGI callable for gunicorn: ``gunicorn 'webapp.app:wsgi()'``.

    Only here, in a web worker, Plotly's one-time costs are paid in a background thread
    (``first_view.start_warm_up``), so a worker's first anatomy page does not; a CLI render,
    a script or a test that imports the views never starts it.
    """
    from webapp.views.anatomy.first_view import start_warm_up

    server = create_app().server
    start_warm_up()
    return server
