"""The sae run page's data layer, graph scopes, figures and server-side clouds on a contract-shaped fake harvest.

Arrays are written to a real ``ArtifactStore`` (a temporary directory), so the
row and range reads the page makes are the real ones.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from sae_fake import fake_harvest

from latent_atlas.analyses.sae.cloud import full_reconstruction
from models.store import ArtifactStore
from webapp.views.sae import cloud_state
from webapp.views.sae import graph as sg
from webapp.views.sae.data import LatentError, SaeData, latent_document, parse_latent
from webapp.views.sae.export import export_figures
from webapp.views.sae.figures import graph_figure, umap_figure


@pytest.fixture
def stored(tmp_path):
    arrays, summary = fake_harvest(d_sae=30, d_in=6, n_tokens=500, seed=4)
    summary["vocab"]["3"] = "<b>bold</b>\n"
    summary["window"] = 3
    store = ArtifactStore(f"file://{tmp_path}")
    uris = {name: store.write_array(array).uri for name, array in arrays.items()}
    return SaeData("run1", summary, uris, store=store), arrays, summary


def test_store_range_reads_match_slices(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}")
    array = np.arange(60, dtype=np.float32).reshape(20, 3)
    uri = store.write_array(array).uri
    np.testing.assert_array_equal(store.read_range(uri, 4, 9), array[4:9])
    np.testing.assert_array_equal(store.read_range(uri, 18, 99), array[18:])
    assert store.read_range(uri, 7, 7).shape == (0, 3)


def test_parse_latent_gives_clear_errors():
    assert parse_latent(" 12 ", 30) == 12 and parse_latent(0, 30) == 0
    for raw, fragment in (("30", "does not exist"), ("-1", "does not exist"), ("abc", "not a latent id"),
                          ("", "type a latent id"), (True, "whole number"), (2.5, "whole number"),
                          ("1e3", "not a latent id"), ("9" * 40, "not a latent id")):
        with pytest.raises(LatentError, match=fragment) as info:
            parse_latent(raw, 30)
        assert "0" in str(info.value) and "29" in str(info.value)


def test_latent_reads_match_the_arrays(stored):
    data, arrays, summary = stored
    j = int(np.argmax(arrays["fire_count"]))
    latent = data.latent(j)
    assert latent.fire_count == arrays["fire_count"][j]
    tokens, values = data.activations(j)
    start, stop = arrays["lat_ptr"][j], arrays["lat_ptr"][j + 1]
    np.testing.assert_array_equal(tokens, arrays["lat_token"][start:stop])
    np.testing.assert_array_equal(values, arrays["lat_value"][start:stop])
    np.testing.assert_array_equal(data.decoder_row(j), arrays["decoder"][j])
    assert [x.token for x in latent.top] == [int(t) for t in arrays["top_token"][j] if t >= 0]
    for example in latent.top + latent.intervals:
        # The window is the token's own document, centred on it, and highlights this latent's activations.
        assert example.token in example.tokens
        assert len(set(arrays["token_doc"][example.tokens])) == 1
        assert max(example.tokens) - example.token <= 3 and example.token - min(example.tokens) <= 3
        dense = np.zeros(summary["n_tokens"])
        dense[tokens] = values
        np.testing.assert_allclose(example.acts, dense[example.tokens], rtol=1e-6)
        assert example.acts[example.tokens.index(example.token)] == pytest.approx(example.value)
    assert latent.edges["cosine"][0][0] == int(arrays["edge_cosine_idx"][j, 0])


def test_latent_document_is_plain_json_and_keeps_token_text(stored):
    data, arrays, _ = stored
    j = int(np.argmax(arrays["fire_count"]))
    document = latent_document(data, j)
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text)["latent"] == j
    assert document["histogram"]["counts"] == arrays["hist_counts"][j].tolist()
    assert len(document["top_examples"]) == int((arrays["top_token"][j] >= 0).sum())
    with pytest.raises(LatentError):
        latent_document(data, 30)


def test_search_finds_labels_and_ids(stored):
    data, _, _ = stored
    label = data.labels[5]
    assert 5 in data.search(label.split(" / ")[0])
    assert data.search("7")[0] == 7
    assert data.search("no such label anywhere") == []


def test_graph_scopes(stored):
    data, arrays, _ = stored
    idx, val = data.edges("cosine")
    sub = sg.neighbourhood(4, idx, val, 2, depth=2)
    assert sub.nodes[0] == 4 and set(idx[4, :2]) <= set(sub.nodes.tolist())
    assert len(set(sub.nodes.tolist())) == len(sub.nodes)
    edges = sg.edge_list(idx, val, 2)
    assert all(a < b for a, b, _ in edges) and len({(a, b) for a, b, _ in edges}) == len(edges)
    expected = {tuple(sorted((i, int(idx[i, c])))) for i in range(30) for c in range(2) if idx[i, c] >= 0}
    assert {(a, b) for a, b, _ in edges} == expected
    members = data.cluster_members(4)
    cluster = sg.cluster(4, members, data.small["umap"], idx, val, 4)
    assert set(cluster.nodes.tolist()) == set(members)
    assert all(a in members and b in members for a, b, _ in cluster.edges)


def test_figures_are_webgl_with_ids_and_escaped_hover(stored):
    data, arrays, _ = stored
    fig = umap_figure(data.small["umap"], ["<script>x</script>"] * 30, colour="cluster",
                      clusters=data.small["cluster_components"], highlight=3)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    ids = np.concatenate([np.asarray(t.customdata) for t in fig.data[:2]])
    assert sorted(ids.tolist()) == list(range(30)) and list(fig.data[2].customdata) == [3]
    assert all("<script>" not in text for t in fig.data for text in (t.text or []))
    sub = sg.everything(data.small["umap"], *data.edges("jaccard"), 3, None)
    graph = graph_figure(sub.nodes, sub.xy, sub.edges, data.labels)
    assert graph.layout.meta["edges"] == len(sub.edges) and len(graph.data[0].x) == 3 * len(sub.edges)


def test_server_cloud_moves_incrementally_and_matches_a_full_rebuild(stored):
    data, arrays, _ = stored
    key = "test-key"
    entry, update = cloud_state.update(data, key, [1, 2, 3])
    assert update.added == [1, 2, 3] and not update.removed
    entry, update = cloud_state.update(data, key, [2, 3, 9])
    assert update.added == [9] and update.removed == [1] and update.incremental
    assert update.touched == arrays["fire_count"][1] + arrays["fire_count"][9]
    tokens, recon = entry.cloud.reconstruction()
    ref_tokens, ref = full_reconstruction([2, 3, 9], data.activations, data.decoder_row)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(recon, ref, atol=1e-9)
    # Another key (another tab or process) builds its own cloud, and says so.
    _, other = cloud_state.update(data, "other-key", [2, 3, 9])
    assert not other.incremental
    with pytest.raises(ValueError, match="at most"):
        cloud_state.update(data, key, list(range(cloud_state.MAX_PICKED + 1)))


def test_static_export_figures(stored):
    data, _, _ = stored
    views = export_figures(data)
    slugs = [slug for slug, *_ in views]
    assert slugs == ["umap-clusters", "umap-density", "graph-cosine", "cluster-cloud", "histograms"]
    cloud = dict((slug, fig) for slug, _, _, fig in views)["cluster-cloud"]
    assert cloud.layout.meta["points"] > 0
