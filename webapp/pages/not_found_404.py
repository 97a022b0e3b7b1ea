"""The page for any path no other page claims."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import html

dash.register_page(__name__, path="/404", title="Not found · Latent Atlas")


def layout(**_kwargs):
    return html.Div(
        [
            html.H1("Page not found", className="h3"),
            html.P("There is no page at this address."),
            dbc.Button("Home", href="/", color="primary", class_name="me-2"),
            dbc.Button("Browse runs", href="/runs", color="secondary", outline=True),
        ],
        id="not-found-page",
    )
