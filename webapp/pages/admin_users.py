"""Users and API tokens: ``/admin/users``.

Admins see the user table, create users and reset passwords; every user may
create named API tokens for themselves (a secret is shown once), sees when each
was created and last used, and revokes them one by one (an admin sees and may
revoke everyone's). Admins also set each member's fair share of the GPU: a share
weight and a daily cap of GPU-seconds (``queue_admin.set_member_share`` checks
the bounds). Invariant: each callback checks ``current_user`` itself
(``users_service.revoke_token`` refuses another member's token); hiding a
control from non-admins is not the protection.
"""

from __future__ import annotations

import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from flask_login import current_user

from models.user import DAILY_CAP_BOUNDS, SHARE_WEIGHT_BOUNDS
from webapp import queue_admin, users_service
from webapp.components import format_duration, format_time
from webapp.runs_service import NotAllowed, SubmissionError
from webapp.users_service import UserError

dash.register_page(__name__, path="/admin/users", name="Users", title="Users · Latent Atlas")

USER_COLUMNS = [
    {"field": "username", "headerName": "Username", "flex": 1},
    {"field": "role", "headerName": "Role", "width": 110},
    {"field": "active", "headerName": "Active", "width": 100},
    {"field": "share_weight", "headerName": "Share weight", "width": 130},
    {"field": "daily_cap", "headerName": "Daily GPU cap", "width": 150},
    {"field": "created", "headerName": "Created", "width": 210},
]


def user_rows(users: list[dict]) -> list[dict]:
    return [{"username": u["username"], "role": "admin" if u["is_admin"] else "member",
             "active": "yes" if u["is_active"] else "no", "created": format_time(u["created_at"]),
             "share_weight": f"{u['share_weight'] if u['share_weight'] is not None else 1.0:g}",
             "daily_cap": (f"{u['daily_gpu_cap_s']} s ({format_duration(u['daily_gpu_cap_s'])})"
                           if u["daily_gpu_cap_s"] is not None else "none")}
            for u in users]


TOKEN_COLUMNS = [
    {"field": "name", "headerName": "Name", "flex": 1},
    {"field": "user", "headerName": "User", "width": 120},
    {"field": "created", "headerName": "Created", "width": 190},
    {"field": "last_used", "headerName": "Last used", "width": 190},
    {"field": "status", "headerName": "Status", "width": 190},
]


def _visible_tokens() -> list[dict]:
    """The current user's tokens; every user's for an admin."""
    return users_service.list_tokens(None if current_user.is_admin else current_user.username)


def token_rows(tokens: list[dict]) -> list[dict]:
    return [{"id": t["id"], "name": t["name"], "user": t["user"],
             "created": format_time(t["created_at"]),
             "last_used": format_time(t["last_used_at"]) if t["last_used_at"] else "never",
             "status": "active" if t["active"] else f"revoked {format_time(t['revoked_at'])}"}
            for t in tokens]


def token_options(tokens: list[dict]) -> list[dict]:
    """Revocable (active) tokens for the dropdown: "name (user, created ...)"."""
    return [{"label": f"{t['name']} ({t['user']}, created {format_time(t['created_at'])})",
             "value": str(t["id"])} for t in tokens if t["active"]]


def _token_list_card():
    tokens = _visible_tokens()
    return dbc.Card(
        [
            dbc.CardHeader("API tokens" + (" of every user" if current_user.is_admin else "")),
            dbc.CardBody([
                dag.AgGrid(
                    id="users-tokens-grid", columnDefs=TOKEN_COLUMNS, rowData=token_rows(tokens),
                    defaultColDef={"sortable": True, "filter": True, "resizable": True},
                    getRowId="params.data.id", className="ag-theme-quartz",
                    dashGridOptions={"domLayout": "autoHeight"},
                ),
                dbc.InputGroup([
                    dbc.Select(id="users-token-revoke-choice", options=token_options(tokens),
                               placeholder="Token to revoke"),
                    dbc.Button("Revoke", id="users-token-revoke", color="danger", n_clicks=0),
                ], class_name="mt-3"),
                html.Div(id="users-token-revoke-result", className="mt-2"),
            ]),
        ],
        class_name="mb-3",
    )


def _token_card():
    return dbc.Card(
        [
            dbc.CardHeader("API token"),
            dbc.CardBody([
                html.P(["Scripts call the JSON API (", html.Code("/api/runs"), ") with ",
                        html.Code("Authorization: Bearer <token>"), ". A token acts as you, ",
                        html.Strong(current_user.username), "."], className="small"),
                dbc.InputGroup([
                    dbc.Input(id="users-token-name", placeholder="Token name (e.g. laptop)",
                              maxlength=100),
                    dbc.Button("Create token", id="users-token-create", color="primary",
                               n_clicks=0),
                ]),
                html.Div(id="users-token-result", className="mt-3"),
            ]),
        ],
        class_name="mb-3",
    )


def _admin_cards():
    users = users_service.list_users()
    usernames = [{"label": u["username"], "value": u["username"]} for u in users]
    return [
        dbc.Card([
            dbc.CardHeader("Users"),
            dbc.CardBody(dag.AgGrid(
                id="users-grid", columnDefs=USER_COLUMNS, rowData=user_rows(users),
                defaultColDef={"sortable": True, "filter": True, "resizable": True},
                getRowId="params.data.username",
                className="ag-theme-quartz", dashGridOptions={"domLayout": "autoHeight"},
            )),
        ], class_name="mb-3"),
        dbc.Row([
            dbc.Col(dbc.Card([
                dbc.CardHeader("Create a user"),
                dbc.CardBody([
                    dbc.Input(id="users-new-username", placeholder="Username", class_name="mb-2",
                              autocomplete="off"),
                    dbc.Input(id="users-new-password", placeholder="Password (8+ characters)",
                              type="password", class_name="mb-2", autocomplete="new-password"),
                    dbc.Switch(id="users-new-admin", label="Administrator", value=False),
                    dbc.Button("Create user", id="users-create", color="primary", n_clicks=0),
                    html.Div(id="users-create-result", className="mt-2"),
                ]),
            ], class_name="mb-3"), md=6),
            dbc.Col(dbc.Card([
                dbc.CardHeader("Reset a password"),
                dbc.CardBody([
                    dcc.Dropdown(id="users-reset-username", options=usernames,
                                 placeholder="User", className="mb-2"),
                    dbc.Input(id="users-reset-password", placeholder="New password (8+ characters)",
                              type="password", class_name="mb-2", autocomplete="new-password"),
                    dbc.Button("Set password", id="users-reset", color="warning", n_clicks=0),
                    html.Div(id="users-reset-result", className="mt-2"),
                ]),
            ], class_name="mb-3"), md=6),
        ]),
        _share_card(usernames),
    ]


def _share_card(usernames: list[dict]):
    low, high = SHARE_WEIGHT_BOUNDS
    low_cap, high_cap = DAILY_CAP_BOUNDS
    return dbc.Card([
        dbc.CardHeader("Fair share of the GPU"),
        dbc.CardBody([
            html.P([f"A member with weight 2 gets twice the GPU time of weight 1 ({low:g} to {high:g}). "
                    f"A daily cap holds their GPU runs once they used that many GPU-seconds in the UTC "
                    f"day ({low_cap} to {high_cap}; empty: no cap). The ",
                    dcc.Link("Queue", href="/admin/queue"), " page shows each member's use."],
                   className="small text-muted"),
            dbc.Row([
                dbc.Col(dbc.Select(id="users-share-username", options=usernames, placeholder="User"), md=4),
                dbc.Col(dbc.InputGroup([dbc.InputGroupText("Weight"),
                                        dbc.Input(id="users-share-weight", type="number", step="any",
                                                  placeholder="1")]), md=3),
                dbc.Col(dbc.InputGroup([dbc.InputGroupText("Daily cap"),
                                        dbc.Input(id="users-share-cap", type="number", step="any",
                                                  placeholder="no cap"),
                                        dbc.InputGroupText("s")]), md=3),
                dbc.Col(dbc.Button("Save", id="users-share-save", color="primary", n_clicks=0), md=2),
            ], class_name="g-2"),
            html.Div(id="users-share-result", className="mt-2"),
        ]),
    ], class_name="mb-3")


def layout(**_kwargs):
    children = [html.H1("Users" if current_user.is_admin else "Your API tokens",
                        className="h3 mb-3")]
    if current_user.is_admin:
        children.extend(_admin_cards())
    else:
        children.append(html.P("Only administrators manage accounts; ask one to create a user "
                               "or reset a password.", className="text-muted"))
    children.append(_token_card())
    children.append(_token_list_card())
    return html.Div(children, id="users-page", className="atlas-narrow")


def _alert(text: str, colour: str):
    return dbc.Alert(text, color=colour, class_name="py-2 mb-0")


@callback(
    Output("users-create-result", "children"),
    Output("users-grid", "rowData"),
    Output("users-reset-username", "options"),
    Output("users-new-password", "value"),
    Input("users-create", "n_clicks"),
    State("users-new-username", "value"),
    State("users-new-password", "value"),
    State("users-new-admin", "value"),
    prevent_initial_call=True,
)
def _create_user(_clicks, username, password, is_admin):
    if not current_user.is_admin:
        return _alert("Only administrators may create users.", "danger"), *([dash.no_update] * 3)
    try:
        user = users_service.create_user((username or "").strip(), password or "",
                                         is_admin=bool(is_admin))
    except UserError as exc:
        return _alert(str(exc), "danger"), *([dash.no_update] * 3)
    users = users_service.list_users()
    role = "administrator" if user.is_admin else "member"
    return (_alert(f"Created {role} {user.username}.", "success"), user_rows(users),
            [{"label": u["username"], "value": u["username"]} for u in users], "")


@callback(
    Output("users-reset-result", "children"),
    Output("users-reset-password", "value"),
    Input("users-reset", "n_clicks"),
    State("users-reset-username", "value"),
    State("users-reset-password", "value"),
    prevent_initial_call=True,
)
def _reset_password(_clicks, username, password):
    if not current_user.is_admin:
        return _alert("Only administrators may reset passwords.", "danger"), dash.no_update
    if not username:
        return _alert("Choose a user.", "warning"), dash.no_update
    try:
        users_service.set_password(username, password or "")
    except UserError as exc:
        return _alert(str(exc), "danger"), dash.no_update
    return _alert(f"New password set for {username}.", "success"), ""


@callback(
    Output("users-token-result", "children"),
    Output("users-tokens-grid", "rowData", allow_duplicate=True),
    Output("users-token-revoke-choice", "options", allow_duplicate=True),
    Input("users-token-create", "n_clicks"),
    State("users-token-name", "value"),
    prevent_initial_call=True,
)
def _create_token(_clicks, name):
    try:
        secret = users_service.create_api_token(current_user.username, (name or "").strip())
    except UserError as exc:
        return _alert(str(exc), "danger"), dash.no_update, dash.no_update
    tokens = _visible_tokens()
    return _secret_alert(secret), token_rows(tokens), token_options(tokens)


@callback(
    Output("users-token-revoke-result", "children"),
    Output("users-tokens-grid", "rowData", allow_duplicate=True),
    Output("users-token-revoke-choice", "options", allow_duplicate=True),
    Output("users-token-revoke-choice", "value"),
    Input("users-token-revoke", "n_clicks"),
    State("users-token-revoke-choice", "value"),
    prevent_initial_call=True,
)
def _revoke_token(_clicks, token_id):
    if not isinstance(token_id, str) or not token_id.isdigit():
        return _alert("Choose a token to revoke.", "warning"), *([dash.no_update] * 3)
    try:
        record = users_service.revoke_token(current_user, int(token_id))
    except UserError as exc:
        return _alert(str(exc), "danger"), *([dash.no_update] * 3)
    tokens = _visible_tokens()
    return (_alert(f"Revoked token {record['name']} of {record['user']}; it is refused from now on.",
                   "success"), token_rows(tokens), token_options(tokens), "")


def _secret_alert(secret: str):
    return dbc.Alert(
        [
            html.Div("Your new token (copy it now: it is shown only once and stored hashed):"),
            html.Div([html.Code(secret, id="users-token-secret", className="me-2 user-select-all"),
                      dcc.Clipboard(target_id="users-token-secret", title="Copy",
                                    style={"display": "inline-block"})],
                     className="my-2 atlas-secret"),
            html.Small("Anyone with this token can act as you through the API. If it leaks, "
                       "revoke it below: it is refused at once."),
        ],
        color="success",
        class_name="mb-0",
    )


@callback(
    Output("users-share-weight", "value"),
    Output("users-share-cap", "value"),
    Input("users-share-username", "value"),
    prevent_initial_call=True,
)
def _share_fill(username):
    """Show the chosen member's current weight and cap."""
    if not current_user.is_admin or not username:
        return dash.no_update, dash.no_update
    for user in users_service.list_users():
        if user["username"] == username:
            return user["share_weight"], user["daily_gpu_cap_s"]
    return dash.no_update, dash.no_update


@callback(
    Output("users-share-result", "children"),
    Output("users-grid", "rowData", allow_duplicate=True),
    Input("users-share-save", "n_clicks"),
    State("users-share-username", "value"),
    State("users-share-weight", "value"),
    State("users-share-cap", "value"),
    prevent_initial_call=True,
)
def _share_save(_clicks, username, weight, cap):
    if not username:
        return _alert("Choose a user.", "warning"), dash.no_update
    if weight is None:
        return _alert("Give a weight (a number; 1 is the default).", "warning"), dash.no_update
    if isinstance(cap, float) and cap.is_integer():
        cap = int(cap)
    try:
        member = queue_admin.set_member_share(current_user, username,
                                              {"share_weight": weight, "daily_gpu_cap_s": cap})
    except (NotAllowed, SubmissionError) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, SubmissionError) else str(exc)
        return _alert(text, "danger"), dash.no_update
    except queue_admin.MemberNotFound:
        return _alert(f"No user {username!r}.", "danger"), dash.no_update
    cap_text = f"{member['daily_gpu_cap_s']} s a day" if member["daily_gpu_cap_s"] is not None else "no cap"
    return (_alert(f"{username}: weight {member['share_weight']:g}, {cap_text}.", "success"),
            user_rows(users_service.list_users()))
