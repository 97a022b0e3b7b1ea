"""Sharded runs on two real workers (issue #14), on SQLite (database + broker) and on PostgreSQL + Redis.

* A 512 x 512 grid (262,144 cells, 32 resume pieces) submitted while both
  workers are idle is split into 2 shards, one per worker, sent as a chord;
  the merged run equals the same grid computed whole (``run_grid`` in this
  process with a checkpoint, as a worker runs an unsharded grid) bit for bit.
* Killing the pool child of one shard mid-way retries that shard alone (its
  attempts go to 2, the other shard's stay 1) and the merged result is unchanged.
* Cancelling a sharded run stops every shard.
The stale timeout (600 s) is far longer than any wait, so a retry within the
test can only come from the worker's report of its dead child.
"""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest

from harness import Portal, make_backend

pytestmark = pytest.mark.integration

GRID = {"model": "tiny-gpt2", "layer": 1, "size": 512, "spacing": 0.02, "plane": "random_projection",
        "seed": 3, "top_k": 3}
DONE = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def portal(request, tmp_path_factory, tiny_gpt2_dir):
    data_dir = tmp_path_factory.mktemp(f"scale-{request.param}")
    backend = make_backend(request.param, data_dir)
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    extra = {"ATLAS_HEARTBEAT_EVERY": "0.5", "ATLAS_STALE_AFTER": "600", "ATLAS_SWEEP_EVERY": "1"}
    live = Portal(data_dir, backend, models, "tiny-gpt2", extra)
    try:
        # One after the other: two workers declaring the SQL broker's queues at once race on its table.
        live.start(workers=1)
        _wait_live_slots(live, 1)
        live.start_worker()
        _wait_live_slots(live, 2)
        live.alice = live.create_user("alice")
        yield live
    finally:
        live.stop()
        backend.cleanup()


@pytest.fixture(scope="module")
def reference(tiny_gpt2, tmp_path_factory):
    """The same grid computed whole, piece by piece with a checkpoint (as a worker runs it unsharded)."""
    from latent_atlas.analyses import get_kind

    kind = get_kind("grid")

    class Memory:
        def __init__(self):
            self.pieces = {}

        def load(self, key):
            return self.pieces.get(key)

        def save(self, key, arrays):
            self.pieces[key] = dict(arrays)

    result = kind.run(kind.params.model_validate(GRID), tiny_gpt2, lambda f, s: None, checkpoint=Memory())
    return result


def _arrays(portal: Portal, run_id: str) -> dict[str, np.ndarray]:
    response = portal.api("GET", f"/api/runs/{run_id}/export?format=npz", portal.alice)
    assert response.status_code == 200, response.text
    return dict(np.load(io.BytesIO(response.content), allow_pickle=False))


def _wait_live_slots(portal: Portal, slots: int) -> None:
    import time

    from sqlalchemy import create_engine, text

    engine = create_engine(portal.backend.database_url)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                n = conn.execute(text("SELECT COUNT(*) FROM worker_slots")).scalar()
            if n >= slots:
                return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(portal.logs())


def _check_equal(portal, run_id, reference):
    got = _arrays(portal, run_id)
    assert set(reference.arrays) <= set(got), (sorted(reference.arrays), sorted(got))
    for name, array in reference.arrays.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_a_sharded_grid_equals_the_whole_grid_bit_for_bit(portal, reference):
    run = portal.submit(portal.alice, GRID, kind="grid")
    done = portal.wait_for(run["id"], portal.alice, DONE, 300)
    assert done["status"] == "succeeded", done.get("error")
    shards = done["shards"]
    assert [s["index"] for s in shards] == [0, 1] and all(s["status"] == "succeeded" for s in shards), shards
    assert len({s["worker"] for s in shards}) == 2, shards  # one shard per worker
    assert sum(s["units"] for s in shards) == 512 * 512
    assert done["environment"]["shards"] == 2
    assert not (portal.data_dir / "artifacts" / "shards" / run["id"]).exists()  # parts removed once merged
    _check_equal(portal, run["id"], reference)


def test_a_killed_shard_is_retried_alone_and_the_result_is_unchanged(portal, reference):
    run = portal.submit(portal.alice, GRID, kind="grid")
    running = portal.wait_for(run["id"], portal.alice, {"running"}, 240,
                              predicate=lambda r: any(s["status"] == "running" and s["progress"] > 0.2
                                                      for s in r.get("shards", [])))
    victim = next(s for s in running["shards"] if s["status"] == "running" and s["progress"] > 0.2)
    from sqlalchemy import create_engine, text

    engine = create_engine(portal.backend.database_url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pid FROM run_shards WHERE run_id = :r AND idx = :i"),
                           {"r": run["id"], "i": victim["index"]}).scalar()
    engine.dispose()
    assert pid
    os.kill(pid, signal.SIGKILL)
    done = portal.wait_for(run["id"], portal.alice, DONE, 300)
    assert done["status"] == "succeeded", done.get("error")
    attempts = {s["index"]: s["attempts"] for s in done["shards"]}
    assert attempts[victim["index"]] == 2, done["shards"]
    assert attempts[1 - victim["index"]] == 1, done["shards"]  # the other shard was not run again
    _check_equal(portal, run["id"], reference)


def test_cancel_stops_every_shard(portal):
    run = portal.submit(portal.alice, GRID, kind="grid")
    portal.wait_for(run["id"], portal.alice, {"running"}, 240,
                    predicate=lambda r: len(r.get("shards", [])) == 2
                    and any(s["status"] == "running" for s in r["shards"]))
    response = portal.api("POST", f"/api/runs/{run['id']}/cancel", portal.alice)
    assert response.status_code == 200, response.text
    done = portal.wait_for(run["id"], portal.alice, DONE, 120)
    assert done["status"] == "cancelled"
    assert all(s["status"] == "cancelled" for s in done["shards"]), done["shards"]
