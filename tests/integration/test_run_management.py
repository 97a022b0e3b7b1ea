"""Run management through the real API and a real worker: rename, tags, note, star, delete, history.

One live portal (SQLite database + SQLite broker). Deletion is checked against
the content-addressed store itself: a file goes only when no run refers to it.
The run page's parts for a deleted run and the escaped note are checked in this
process against the portal's database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

PARAMS = {"model": "tiny-gpt2", "prompts": ["Shared files", "between runs"], "max_tokens": 32}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-manage")
    with started_portal(data_dir, "sqlite", {"tiny-gpt2": {"source": str(tiny_gpt2_dir)}}, "tiny-gpt2",
                        {"ATLAS_LIMITS__MAX_CONCURRENT_RUNS_PER_USER": "20"},
                        users=("alice", "bob"), admins=("root",)) as live:
        yield live


def _done(portal: Portal, params: dict) -> dict:
    run = portal.submit(portal.alice, params)
    done = portal.wait_for(run["id"], portal.alice, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done.get("error")
    return done


def _patch(portal: Portal, token: str, run_id: str, body: dict):
    return portal.api("PATCH", f"/api/runs/{run_id}", token, json=body)


def _uris(portal: Portal, run_id: str | None = None) -> set[str]:
    query = "SELECT uri FROM artifacts" + (" WHERE run_id = :r" if run_id else "")
    with create_engine(portal.backend.database_url).connect() as conn:
        return {row[0] for row in conn.execute(text(query), {"r": run_id})}


def test_rename_tags_and_note_are_recorded(portal):
    run = _done(portal, {**PARAMS, "seed": 1})
    changed = _patch(portal, portal.alice, run["id"], {"title": "capitals", "tags": ["demo", " pca "],
                                                       "note": "**bold** <script>alert(1)</script>"})
    assert changed.status_code == 200, changed.text
    detail = changed.json()
    assert detail["title"] == "capitals" and detail["tags"] == ["demo", "pca"]
    assert detail["note"] == "**bold** <script>alert(1)</script>"
    assert [(e["user"], e["action"]) for e in detail["events"]] == [
        ("alice", "rename"), ("alice", "tags"), ("alice", "note")]
    assert detail["events"][0]["detail"] == {"from": "", "to": "capitals"}
    # The same values again change nothing and record nothing; an admin may change it, bob may not.
    again = _patch(portal, portal.alice, run["id"], {"title": "capitals", "tags": ["demo", "pca"]}).json()
    assert len(again["events"]) == 3
    by_admin = _patch(portal, portal.root, run["id"], {"title": "capitals v2"}).json()
    assert by_admin["events"][-1]["user"] == "root" and by_admin["title"] == "capitals v2"
    refused = _patch(portal, portal.bob, run["id"], {"title": "mine now"})
    assert refused.status_code == 403 and "owner or an admin" in refused.json()["error"]
    for body, fragment in [({"note": 5}, "note"), ({"tags": "demo"}, "tags"), ({"title": "a\x00b"}, "NUL"),
                           ({"colour": "red"}, "colour")]:
        bad = _patch(portal, portal.alice, run["id"], body)
        assert bad.status_code == 400 and any(fragment in m for m in bad.json()["messages"]), bad.text
    tagged = portal.api("GET", "/api/runs?tag=pca", portal.bob).json()["runs"]
    assert [r["id"] for r in tagged] == [run["id"]]
    assert portal.api("GET", "/api/runs?tag=pc", portal.bob).json()["runs"] == []  # whole tags only


def test_the_client_manages_runs(portal):
    from latent_atlas.client import ApiError, Atlas

    alice, bob = Atlas(portal.url, portal.alice), Atlas(portal.url, portal.bob)
    run = alice.run(_done(portal, {**PARAMS, "seed": 3})["id"])
    run.update(title="by the client", tags=["client"], note="*hi*")
    assert run.record["title"] == "by the client" and run.record["note"] == "*hi*"
    assert [r.id for r in bob.runs(tag="client")] == [run.id]
    bob.run(run.id).star()
    assert [r.id for r in bob.runs(starred=True)] == [run.id] and alice.runs(starred=True) == []
    with pytest.raises(ApiError) as refused:
        bob.run(run.id).delete()
    assert refused.value.status == 403
    assert run.delete().record["deleted_at"]
    with pytest.raises(ApiError) as gone:
        run.arrays()
    assert gone.value.status == 410 and "deleted" in str(gone.value)


def test_stars_are_each_members_own(portal):
    run = _done(portal, {**PARAMS, "seed": 2})
    starred = portal.api("POST", f"/api/runs/{run['id']}/star", portal.bob, json={"starred": True}).json()
    assert starred["starred"] is True and starred["events"][-1]["action"] == "star"
    assert portal.api("GET", f"/api/runs/{run['id']}", portal.alice).json()["starred"] is False
    mine = portal.api("GET", "/api/runs?starred=true", portal.bob).json()["runs"]
    assert [r["id"] for r in mine] == [run["id"]]
    assert portal.api("GET", "/api/runs?starred=true", portal.alice).json()["runs"] == []
    assert portal.api("POST", f"/api/runs/{run['id']}/star", portal.bob, json={"starred": 1}).status_code == 400
    off = portal.api("POST", f"/api/runs/{run['id']}/star", portal.bob, json={"starred": False}).json()
    assert off["starred"] is False and off["events"][-1]["action"] == "unstar"


def test_delete_removes_files_no_run_refers_to(portal, monkeypatch):
    first = _done(portal, PARAMS)
    second = _done(portal, PARAMS)  # the harness forces a second run: its files may be the same ones
    first_files, second_files = _uris(portal, first["id"]), _uris(portal, second["id"])
    store = portal.data_dir / "artifacts"
    assert portal.api("DELETE", f"/api/runs/{first['id']}", portal.bob).status_code == 403

    gone = portal.api("DELETE", f"/api/runs/{first['id']}", portal.alice)
    assert gone.status_code == 200, gone.text
    record = gone.json()
    assert record["deleted_at"] and record["artifacts"] == []
    assert record["events"][-1]["user"] == "alice" and record["events"][-1]["action"] == "delete"
    remaining = _uris(portal)
    for uri in first_files:
        assert (store / uri).exists() == (uri in remaining), uri  # shared files stay, the others go
    assert all((store / uri).exists() for uri in second_files)
    assert portal.api("GET", f"/api/runs/{second['id']}/export?format=npz", portal.alice).status_code == 200
    export = portal.api("GET", f"/api/runs/{first['id']}/export?format=npz", portal.alice)
    assert export.status_code == 410 and "deleted" in export.json()["error"]
    listed = [r["id"] for r in portal.api("GET", "/api/runs", portal.alice).json()["runs"]]
    assert first["id"] not in listed and second["id"] in listed
    assert _patch(portal, portal.alice, first["id"], {"title": "back"}).status_code == 400

    # By an admin; afterwards an identical submission is not handed a deleted run.
    assert portal.api("DELETE", f"/api/runs/{second['id']}", portal.root).status_code == 200
    remaining = _uris(portal)
    assert all((store / uri).exists() == (uri in remaining) for uri in first_files | second_files)
    fresh = portal.api("POST", "/api/runs", portal.alice, json={"kind": "geometry", "params": PARAMS})
    assert fresh.status_code == 201 and fresh.json()["reused"] is False

    # The run page's parts, from the same database.
    from latent_atlas.settings import get_settings
    from models.session import get_engine, get_sessionmaker

    monkeypatch.setenv("ATLAS_DATABASE_URL", portal.backend.database_url)
    monkeypatch.setenv("ATLAS_DATA_DIR", str(portal.data_dir))
    get_settings.cache_clear()
    try:
        from webapp import run_manage, runs_service
        from webapp.app import create_app

        app = create_app()  # Dash pages register on an app
        from webapp.pages import run as run_page

        _owner_sees_controls(app.server, run_page, runs_service.get_run(fresh.json()["id"]))
        deleted = runs_service.get_run(first["id"])
        banner = run_manage.deleted_banner(deleted)
        assert "deleted by alice" in banner.children and banner.id == "run-deleted"
        assert "deleted" in run_page.view_part(deleted).children
        assert "nothing to export" in run_page.exports_part(deleted).children
        assert run_manage.deleted_banner(runs_service.get_run(fresh.json()["id"])) is None
    finally:
        get_sessionmaker.cache_clear()
        get_engine.cache_clear()
        get_settings.cache_clear()


def _ids(component) -> set[str]:
    """Every component ID in a Dash layout tree."""
    found, stack = set(), [component]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "to_plotly_json"):
            if getattr(item, "id", None):
                found.add(item.id)
            stack.append(getattr(item, "children", None))
    return found


def _owner_sees_controls(server, run_page, run) -> None:
    """The owner gets the edit and delete controls on the run page; another member only the star."""
    from flask_login import login_user

    from models import User, session_scope

    with session_scope() as session:
        users = {u.username: u for u in session.query(User).all()}
        for user in users.values():
            session.expunge(user)
    with server.test_request_context():
        login_user(users["alice"])
        owner = _ids(run_page.layout(run.id))
        login_user(users["bob"])
        other = _ids(run_page.layout(run.id))
    assert {"run-star", "run-delete", "run-edit-title", "run-edit-note", "run-history"} <= owner
    assert "run-star" in other and not {"run-delete", "run-edit-title"} & other


def test_the_note_is_markdown_without_html():
    from webapp.run_manage import note_view

    view = note_view("**bold** <script>alert(1)</script>")
    assert type(view).__name__ == "Markdown"
    assert not getattr(view, "dangerously_allow_html", False)
    assert view.children == "**bold** <script>alert(1)</script>"
