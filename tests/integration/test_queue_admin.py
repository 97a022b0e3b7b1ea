"""The admin's queue, fair-share settings and bulk actions through the real API, with a real worker.

One live portal (SQLite database + SQLite broker) started with no worker, so
queued runs stay queued while the admin reorders them; then a worker starts
and the runs must start in the order the admin left. Every change is checked
in the run's change log (``events``) as well as in its effect.
"""

from __future__ import annotations

import pytest

from harness import Portal, started_portal

pytestmark = pytest.mark.integration

PARAMS = {"model": "tiny-gpt2", "prompts": ["Queue order", "fair share"], "max_tokens": 16}


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp("portal-queue")
    with started_portal(data_dir, "sqlite", {"tiny-gpt2": {"source": str(tiny_gpt2_dir)}}, "tiny-gpt2",
                        {"ATLAS_LIMITS__MAX_CONCURRENT_RUNS_PER_USER": "20"}, workers=0,
                        users=("alice", "bob"), admins=("root",)) as live:
        yield live


def _submit(portal: Portal, token: str, seed: int) -> str:
    return portal.submit(token, {**PARAMS, "seed": seed})["id"]


def _queue(portal: Portal) -> list[str]:
    answer = portal.api("GET", "/api/admin/queue", portal.root)
    assert answer.status_code == 200, answer.text
    return [row["id"] for row in answer.json()["runs"]]


def _events(portal: Portal, run_id: str) -> list[tuple[str, str, dict]]:
    detail = portal.api("GET", f"/api/runs/{run_id}", portal.alice).json()
    return [(e["user"], e["action"], e["detail"]) for e in detail["events"]]


def _plan_order(portal: Portal, monkeypatch) -> list[str]:
    """``workers.queue_plan.current_plan`` on the portal's database: gpu run IDs by position."""
    from latent_atlas.settings import get_settings
    from models.session import get_engine, get_sessionmaker

    monkeypatch.setenv("ATLAS_DATABASE_URL", portal.backend.database_url)
    monkeypatch.setenv("ATLAS_DATA_DIR", str(portal.data_dir))
    get_settings.cache_clear()
    try:
        from models import session_scope
        from workers.queue_plan import current_plan

        with session_scope() as session:
            plan = current_plan(session)
        return [p.run_id for p in sorted(plan.values(), key=lambda p: p.position or 10**9)]
    finally:
        get_sessionmaker.cache_clear()
        get_engine.cache_clear()
        get_settings.cache_clear()


def test_share_weights_and_caps_are_checked(portal):
    url = "/api/admin/members/alice"
    for token in (portal.alice, portal.bob):
        refused = portal.api("PATCH", url, token, json={"share_weight": 5})
        assert refused.status_code == 403 and "only an admin" in refused.json()["error"], refused.text
        assert portal.api("GET", "/api/admin/members", token).status_code == 403
        assert portal.api("GET", "/api/admin/queue", token).status_code == 403
    bad = [({"share_weight": 0.05}, "between 0.1 and 100"), ({"share_weight": 101}, "between 0.1 and 100"),
           ({"share_weight": "2"}, "must be a number"), ({"share_weight": True}, "must be a number"),
           ({"share_weight": None}, "must be a number"),
           ({"daily_gpu_cap_s": 59}, "between 60 and 86400"), ({"daily_gpu_cap_s": 86401}, "between 60"),
           ({"daily_gpu_cap_s": 3600.5}, "whole number"), ({"daily_gpu_cap_s": "3600"}, "whole number"),
           ({"colour": "red"}, "colour: unknown field"), ({}, "give share_weight")]
    for body, fragment in bad:
        answer = portal.api("PATCH", url, portal.root, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert any(fragment in m for m in answer.json()["messages"]), (body, answer.text)
    assert portal.api("PATCH", url, portal.root, data="[1]",
                      headers={"Content-Type": "application/json"}).status_code == 400
    missing = portal.api("PATCH", "/api/admin/members/nobody", portal.root, json={"share_weight": 2})
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]

    changed = portal.api("PATCH", url, portal.root, json={"share_weight": 2.5, "daily_gpu_cap_s": 3600})
    assert changed.status_code == 200, changed.text
    assert changed.json()["share_weight"] == 2.5 and changed.json()["daily_gpu_cap_s"] == 3600
    # Only the keys given change; null lifts the cap; an integer weight is a number too.
    lifted = portal.api("PATCH", url, portal.root, json={"daily_gpu_cap_s": None}).json()
    assert lifted["share_weight"] == 2.5 and lifted["daily_gpu_cap_s"] is None
    back = portal.api("PATCH", url, portal.root, json={"share_weight": 1}).json()
    members = {m["username"]: m for m in portal.api("GET", "/api/admin/members", portal.root).json()["members"]}
    assert back["share_weight"] == 1.0 and members["alice"]["share_weight"] == 1.0
    assert {"gpu_s_today", "recent_gpu_s", "queued", "running"} <= set(members["bob"])


def test_moves_reorder_the_plan_and_the_real_dispatch(portal, monkeypatch):
    a1, a2, a3 = (_submit(portal, portal.alice, seed) for seed in (1, 2, 3))
    b1 = _submit(portal, portal.bob, 4)
    assert set(_queue(portal)) == {a1, a2, a3, b1}  # no worker yet: everything waits
    assert _plan_order(portal, monkeypatch)[:4] == _queue(portal)

    moved = portal.api("POST", f"/api/admin/queue/{a3}/move", portal.root, json={"to": "top"})
    assert moved.status_code == 200 and moved.json()["moved"] is True, moved.text
    assert _queue(portal)[0] == a3
    assert _plan_order(portal, monkeypatch)[0] == a3
    assert portal.api("GET", f"/api/runs/{a3}", portal.alice).json()["queue_position"] == 1
    again = portal.api("POST", f"/api/admin/queue/{a3}/move", portal.root, json={"to": "top"}).json()
    assert again["moved"] is False  # already first: nothing written
    assert portal.api("POST", f"/api/admin/queue/{a1}/move", portal.root,
                      json={"to": "bottom"}).json()["moved"] is True
    order = _queue(portal)
    assert order[0] == a3 and order[-1] == a1 and _plan_order(portal, monkeypatch) == order
    assert _events(portal, a3) == [("root", "move", {"where": "top", "queue": "gpu", "from": 0, "to": 1})]
    assert _events(portal, a1) == [("root", "move", {"where": "bottom", "queue": "gpu", "from": 0, "to": -1})]

    # Refusals: a member, an unknown run, a bad body; each a JSON 4xx and nothing moved.
    assert portal.api("POST", f"/api/admin/queue/{a2}/move", portal.alice, json={"to": "top"}).status_code == 403
    assert portal.api("POST", "/api/admin/queue/nope/move", portal.root, json={"to": "top"}).status_code == 404
    for body in ({"to": "middle"}, {"to": 1}, {}, {"to": "top", "by": 2}):
        answer = portal.api("POST", f"/api/admin/queue/{a2}/move", portal.root, json=body)
        assert answer.status_code == 400 and answer.json()["messages"], (body, answer.text)
    assert portal.api("POST", f"/api/admin/queue/{b1}/cancel", portal.alice).status_code == 403
    assert _queue(portal) == order

    # The admin cancels bob's run from the queue: recorded, and it leaves the queue.
    cancelled = portal.api("POST", f"/api/admin/queue/{b1}/cancel", portal.root)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert _events(portal, b1) == [("root", "cancel", {"from": "queued", "to": "cancelled"})]
    assert b1 not in _queue(portal)

    # A worker starts: the runs start in the order the admin left (a3, a2, a1), and all succeed.
    portal.start_worker()
    done = {r: portal.wait_for(r, portal.alice, {"succeeded", "failed"}) for r in (a1, a2, a3)}
    assert all(d["status"] == "succeeded" for d in done.values()), done
    starts = sorted(done, key=lambda r: done[r]["started_at"])
    assert starts == [a3, a2, a1]
    refused = portal.api("POST", f"/api/admin/queue/{a2}/move", portal.root, json={"to": "top"})
    assert refused.status_code == 400 and "only a queued run" in refused.json()["messages"][0]


def test_bulk_actions_are_checked_and_recorded(portal):
    mine = [_submit(portal, portal.alice, seed) for seed in (11, 12)]
    for run_id in mine:
        portal.wait_for(run_id, portal.alice, {"succeeded"})

    def bulk(token: str, body: dict):
        return portal.api("POST", "/api/runs/bulk", token, json=body)

    tagged = bulk(portal.alice, {"ids": mine, "action": "add_tag", "tag": " batch "})
    assert tagged.status_code == 200, tagged.text
    assert tagged.json() == {"action": "add_tag", "tag": "batch", "changed": mine, "unchanged": []}
    assert bulk(portal.alice, {"ids": mine, "action": "add_tag", "tag": "batch"}).json()["unchanged"] == mine
    for run_id in mine:
        assert _events(portal, run_id)[-1] == ("alice", "tags", {"from": [], "to": ["batch"]})
    listed = {r["id"] for r in portal.api("GET", "/api/runs?tag=batch", portal.bob).json()["runs"]}
    assert listed == set(mine)

    # A member may not act on another's runs: the whole request is refused, nothing changes.
    before = [len(_events(portal, r)) for r in mine]
    refused = bulk(portal.bob, {"ids": mine, "action": "remove_tag", "tag": "batch"})
    assert refused.status_code == 403 and "not yours" in refused.json()["error"], refused.text
    assert [len(_events(portal, r)) for r in mine] == before
    bad = [({"ids": [], "action": "cancel"}, "ids"), ({"ids": mine, "action": "explode"}, "action"),
           ({"ids": mine, "action": "add_tag"}, "tag"), ({"ids": mine, "action": "delete", "tag": "x"}, "tag"),
           ({"ids": ["x"] * 501, "action": "cancel"}, "ids"), ({"ids": "abc", "action": "cancel"}, "ids"),
           ({"ids": mine, "action": "add_tag", "tag": "t" * 51}, "50 characters")]
    for body, fragment in bad:
        answer = bulk(portal.alice, body)
        assert answer.status_code == 400 and any(fragment in m for m in answer.json()["messages"]), answer.text
    missing = bulk(portal.alice, {"ids": [*mine, "nope"], "action": "cancel"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]

    untagged = bulk(portal.root, {"ids": mine, "action": "remove_tag", "tag": "batch"}).json()
    assert untagged["changed"] == mine
    assert _events(portal, mine[0])[-1] == ("root", "tags", {"from": ["batch"], "to": []})

    # Cancel: a finished run is left alone (unchanged); a queued one is cancelled and recorded.
    portal.kill(portal.workers.pop())
    queued = _submit(portal, portal.alice, 13)
    cancelled = bulk(portal.alice, {"ids": [mine[0], queued], "action": "cancel"}).json()
    assert cancelled["changed"] == [queued] and cancelled["unchanged"] == [mine[0]]
    assert _events(portal, queued) == [("alice", "cancel", {"from": "queued", "to": "cancelled"})]

    # Delete by the owner: gone from the list, recorded; a second delete changes nothing.
    deleted = bulk(portal.alice, {"ids": [mine[1], queued], "action": "delete"}).json()
    assert deleted["changed"] == [mine[1], queued]
    assert _events(portal, queued)[-1][:2] == ("alice", "delete")
    listed = {r["id"] for r in portal.api("GET", "/api/runs", portal.alice).json()["runs"]}
    assert mine[1] not in listed and queued not in listed and mine[0] in listed
    assert bulk(portal.alice, {"ids": [mine[1]], "action": "delete"}).json()["unchanged"] == [mine[1]]
