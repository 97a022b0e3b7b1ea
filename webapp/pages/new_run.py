"""New run: pick a kind and a model, fill in the kind's own form, submit.

The kind's fields come from its view module (``webapp.views.<kind>.form_fields``)
and are collected through pattern-matching IDs, so a new kind needs no change
here. Rejections (form or service) are listed in a danger alert as plain text,
until the next submit or a change of kind or model (they name that form's fields).
A form identical to a succeeded run (``webapp.reuse``) queues nothing: the page
offers that run ("open it") or a new one ("run again", a forced submission).
"""

from __future__ import annotations

import inspect

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, callback, ctx, dcc, html
from flask_login import current_user

from latent_atlas.analyses import KINDS, AnalysisKind
from latent_atlas.settings import get_settings
from webapp import runs_service
from webapp.components import error_alert
from webapp.reuse import ago
from webapp.runs_service import SubmissionError
from webapp.views import FIELD_TYPE, FormError, form_values, get_view

dash.register_page(__name__, path="/new", name="New run", title="New run · Latent Atlas")


def _model_options() -> list[dict]:
    settings = get_settings()
    options = []
    for name, entry in settings.models.items():
        label = html.Div([html.Span(name, className="fw-semibold"),
                          html.Small(entry.description, className="text-muted ms-2")]
                         if entry.description else [html.Span(name, className="fw-semibold")])
        options.append({"label": label, "value": name, "search": f"{name} {entry.description}"})
    return options


def kind_form(kind: str, prefill: dict[str, str] | None = None):
    """The kind's fields; ``prefill`` (the page's query string) reaches views whose ``form_fields``
    take it (``sae``: ``sae_run=<run id>`` from a sae_train run's "use this SAE" button)."""
    view = get_view(kind)
    if view is None:
        return dbc.Alert(f"The portal has no form for run kind {kind!r} yet.", color="warning")
    if prefill and "prefill" in inspect.signature(view.form_fields).parameters:
        return view.form_fields(get_settings(), prefill=prefill)
    return view.form_fields(get_settings())


def _starts_fresh(kind: AnalysisKind) -> bool:
    """Kinds submitted from this form: a model and nothing else (others start from a run's page).

    A kind that may read stored runs is offered too when its view has a New-run
    form (``sae``: an SAE trained by a run); child kinds (a lens of a run) have none.
    """
    if not kind.needs_model:
        return False
    return not kind.reads_runs or hasattr(get_view(kind.name), "form_fields")


def layout(kind: str | None = None, model: str | None = None, **query):
    """``/new?kind=K&model=M&...``: an unknown kind or model falls back to the defaults; the rest of
    the query prefills the kind's form where it accepts it (strings only, checked by the view)."""
    settings = get_settings()
    kind = kind if kind in KINDS and _starts_fresh(KINDS[kind]) else next(iter(KINDS))
    model = model if isinstance(model, str) and model in settings.models else settings.default_model
    prefill = {key: value for key, value in query.items() if isinstance(value, str)}
    return html.Div(
        [
            dcc.Location(id="new-location", refresh="callback-nav"),
            html.H1("New run", className="h3 mb-3"),
            dbc.Card(
                dbc.CardBody(
                    [
                        dbc.Row([
                            dbc.Col([
                                dbc.Label("Kind"),
                                dbc.Select(id="new-kind", value=kind,
                                           options=[{"label": k.title, "value": name}
                                                    for name, k in KINDS.items()
                                                    if _starts_fresh(k)]),  # others start from a run
                            ], md=4),
                            dbc.Col([
                                dbc.Label("Model"),
                                dcc.Dropdown(id="new-model", options=_model_options(),
                                             value=model, clearable=False,
                                             className="atlas-model-dropdown"),
                            ], md=8),
                        ], class_name="mb-3"),
                        html.Div(kind_form(kind, prefill), id="new-kind-form", className="mb-3"),
                        dbc.Label("Title (optional)"),
                        dbc.Input(id="new-title", type="text",
                                  maxlength=settings.limits.max_title_chars,
                                  placeholder="e.g. capitals, GPT-2 vs SmolLM2"),
                        html.Div(id="new-errors", className="mt-3"),
                        _reuse_offer(),
                        dbc.Button("Submit run", id="new-submit", color="primary",
                                   class_name="mt-2", n_clicks=0),
                    ]
                )
            ),
        ],
        id="new-page",
        className="atlas-narrow",
    )


def _reuse_offer():
    """Shown when the form matches a succeeded run: open it, or run again (``force``)."""
    return dbc.Alert(
        [
            html.Span(id="new-reuse-text"),
            html.Div([
                dcc.Link("Open it", id="new-reuse-open", href="/runs", className="btn btn-primary btn-sm me-2"),
                dbc.Button("Run again", id="new-again", color="secondary", size="sm", n_clicks=0),
            ], className="mt-2"),
        ],
        id="new-reuse", color="info", is_open=False, class_name="mt-3",
    )


@callback(Output("new-kind-form", "children"), Output("new-errors", "children", allow_duplicate=True),
          Output("new-reuse", "is_open", allow_duplicate=True),
          Input("new-kind", "value"), prevent_initial_call=True)
def _switch_kind(kind: str):
    """Another kind's form; the last rejection (or offer) spoke of the old form, so it goes."""
    return kind_form(kind), None, False


@callback(Output("new-errors", "children", allow_duplicate=True),
          Output("new-reuse", "is_open", allow_duplicate=True), Input("new-model", "value"),
          prevent_initial_call=True)
def _switch_model(_model: str):
    """A rejection may depend on the model (token counts, layers): it no longer applies."""
    return None, False


@callback(
    Output("new-errors", "children"),
    Output("new-location", "href"),
    Output("new-reuse", "is_open"),
    Output("new-reuse-text", "children"),
    Output("new-reuse-open", "href"),
    Input("new-submit", "n_clicks"),
    Input("new-again", "n_clicks"),
    State("new-kind", "value"),
    State("new-model", "value"),
    State("new-title", "value"),
    State({"type": FIELD_TYPE, "kind": ALL, "name": ALL}, "value"),
    prevent_initial_call=True,
    running=[(Output("new-submit", "disabled"), True, False),
             (Output("new-again", "disabled"), True, False)],
)
def _submit(_clicks, _again, kind, model, title, _field_values):
    keep = dash.no_update
    view = get_view(kind or "")
    if view is None:
        return error_alert([f"unknown run kind {kind!r}"]), keep, False, keep, keep
    values = form_values(kind, ctx.states_list[-1])
    force = ctx.triggered_id == "new-again"
    try:
        params = view.params_from_form(model, values, get_settings().limits)
        submitted = runs_service.submit(current_user.id, kind, params, title=title, force=force)
    except (FormError, SubmissionError) as exc:
        return error_alert(exc.messages), keep, False, keep, keep
    run = submitted.run
    if submitted.reused:
        named = f" ({run.title})" if run.title else ""
        text = (f"Identical to run {run.id}{named}, finished {ago(run.finished_at)}: "
                "open it, or run again.")
        return None, keep, True, text, f"/runs/{run.id}"
    return None, f"/runs/{run.id}", False, keep, keep
