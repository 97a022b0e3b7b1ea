"""``/compare`` says why a run given to it is not shown, instead of dropping it silently.

The real app's services on their own SQLite database; the runs are queued
(no worker), which is all the notes need: a kind and a status.
"""

from __future__ import annotations

import pytest
from web_app import PASSWORD, app_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_gpt2_dir):
    models = {"tiny-gpt2": {"source": str(tiny_gpt2_dir), "description": "tiny random GPT-2"}}
    with app_env(tmp_path_factory.mktemp("compare-notes"), models, ATLAS_UMAP_WARMUP="false"):
        from webapp import runs_service, users_service
        from webapp.app import create_app

        create_app()
        user = users_service.create_user("comparer", PASSWORD)
        geometry = runs_service.submit_run(user.id, "geometry", {"model": "tiny-gpt2", "prompts": ["hi"]})
        grid = runs_service.submit_run(user.id, "grid", {"model": "tiny-gpt2", "layer": 1, "size": 8})
        from webapp.pages import compare

        yield compare, geometry.id, grid.id


def test_every_id_not_shown_gets_a_reason(portal):
    compare, geometry, grid = portal
    ids, said = compare.notes(f"{geometry}, /runs/{grid}/ <b>bad</b> zzzzzzzzzzzz {grid} nosuchrun123")
    assert ids == [geometry, grid]
    assert said == [
        "Not a run ID, ignored: '<b>bad</b>'.",
        "Only 2 runs can be shown side by side; ignored: zzzzzzzzzzzz, nosuchrun123.",
        f"{geometry} is a geometry run; only grid runs can be shown side by side.",
        f"{grid} is queued; its map appears once it has succeeded.",
    ]
    assert compare.notes(f"nosuchrun123,{grid}")[1][0] == "nosuchrun123: no run with this ID."
    assert compare.notes(None) == ([], [])


def test_the_page_lists_the_notes_as_text(portal):
    compare, geometry, grid = portal
    page = compare.layout(runs=f"{geometry},{grid},zzzzzzzzzzzz,<script>")
    text = str(page)
    assert "compare-notes" in text and "ignored: zzzzzzzzzzzz" in text
    assert "only grid runs can be shown side by side" in text
    assert "Not a run ID, ignored: '<script>'" in text  # a text child: Dash escapes it
