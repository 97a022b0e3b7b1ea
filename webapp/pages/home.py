"""Home: what the portal is, where to start, and the user's latest runs."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import html
from flask_login import current_user

from webapp import runs_service
from webapp.components import card, recent_runs_table
from webapp.runs_service import RunFilter

dash.register_page(__name__, path="/", name="Home", title="Latent Atlas")


def layout(**_kwargs):
    runs = runs_service.list_runs(RunFilter(owner=current_user.username, limit=10))
    return html.Div(
        [
            html.Div(
                [
                    html.H1("Latent Atlas", className="h2"),
                    html.P(
                        "Look inside language models: pick a model, type prompts and ask how "
                        "their hidden states move through the layers. Every run gets a "
                        "permanent page you can share with the lab, browse later and export.",
                        className="lead",
                    ),
                    dbc.Button("New run", href="/new", color="primary", class_name="me-2",
                               id="home-new"),
                    dbc.Button("Browse runs", href="/runs", color="secondary", outline=True,
                               id="home-runs"),
                ],
                className="atlas-hero mb-4",
            ),
            card(f"Your recent runs ({current_user.username})",
                 recent_runs_table(runs), id="home-recent"),
        ],
        id="home-page",
    )
