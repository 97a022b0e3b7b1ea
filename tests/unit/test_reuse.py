"""The run key that decides reuse: the validated params, not the raw body.

Key order, defaults left out and canonical reorderings give one key; any real
difference (a value, the kind, what the model name points at, a corpus file's
bytes) gives another; a hub corpus is never reusable.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from models.base import utcnow

BASE = {"model": "tiny", "prompts": ["ab ab", "cd"], "max_tokens": 8}


@pytest.fixture
def use_models(monkeypatch):
    """Set the catalogue (``ATLAS_MODELS``) and forget cached settings and shapes."""
    from latent_atlas.settings import get_settings
    from webapp import model_shape

    def use(models: dict) -> None:
        monkeypatch.setenv("ATLAS_MODELS", json.dumps(models))
        get_settings.cache_clear()
        model_shape.clear_cache()

    yield use
    get_settings.cache_clear()
    model_shape.clear_cache()


@pytest.fixture
def service(monkeypatch, tmp_path, tiny_gpt2_dir, use_models):
    from webapp import runs_service

    monkeypatch.setenv("ATLAS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "tiny")
    use_models({"tiny": {"source": str(tiny_gpt2_dir)}})
    return runs_service


def _key(service, raw: dict, kind: str = "geometry") -> str:
    params = service.validate_params(kind, raw).model_dump(mode="json")
    return service.params_hash(kind, params)


def test_key_order_does_not_matter(service):
    reordered = dict(reversed(list(BASE.items())))
    assert list(reordered) != list(BASE)
    assert _key(service, reordered) == _key(service, BASE)


def test_defaults_filled_in_give_the_same_key(service):
    from latent_atlas.analyses.geometry.params import GeometryParams

    defaults = {name: GeometryParams.model_fields[name].default for name in ("reduction", "dims", "seed")}
    assert _key(service, {**BASE, **defaults}) == _key(service, BASE)


def test_canonical_reordering_gives_the_same_key(service):
    from latent_atlas.analyses.geometry.params import COMPONENTS

    assert _key(service, {**BASE, "components": list(reversed(COMPONENTS))}) == _key(service, BASE)


@pytest.mark.parametrize("over", [{"seed": 1}, {"prompts": ["ab ab"]}, {"dims": 2}, {"max_tokens": 9},
                                  {"token_ids": [[1, 2], [3]]}])
def test_a_different_value_gives_another_key(service, over):
    assert _key(service, {**BASE, **over}) != _key(service, BASE)


def test_the_kind_is_part_of_the_key(service):
    params = service.validate_params("geometry", BASE).model_dump(mode="json")
    assert service.params_hash("geometry", params) != service.params_hash("scan", params)


def test_the_model_identity_is_part_of_the_key(service, use_models, tiny_gpt2_dir):
    before = _key(service, BASE)
    use_models({"tiny": {"source": str(tiny_gpt2_dir), "dtype": "float16"}})
    assert _key(service, BASE) != before
    use_models({"tiny": {"source": str(tiny_gpt2_dir), "description": "only words changed"}})
    assert _key(service, BASE) == before


def test_a_corpus_file_is_keyed_by_its_bytes(service, tmp_path):
    from webapp.reuse import key_params

    corpora = tmp_path / "corpora"
    corpora.mkdir()
    params = {"model": "tiny", "layer": 1, "corpus": {"kind": "file", "file": "mine.txt"}}
    missing = key_params("sae_train", params)
    (corpora / "mine.txt").write_text("one text\n")
    first = key_params("sae_train", params)
    (corpora / "mine.txt").write_text("another text\n")
    second = key_params("sae_train", params)
    assert len({missing.params_hash, first.params_hash, second.params_hash}) == 3
    assert first.reusable and second.reusable


def test_a_hub_corpus_is_never_reused(service):
    from webapp.reuse import key_params

    hub = key_params("sae_train", {"model": "tiny", "corpus": {"kind": "hub", "dataset": "a/b"}})
    assert not hub.reusable
    assert key_params("geometry", {"model": "tiny", "prompts": ["x"]}).reusable


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "just now"), (59, "just now"), (60, "1 minute ago"), (3 * 3600 + 5, "3 hours ago"),
    (2 * 86_400 + 100, "2 days ago"),
])
def test_ago(seconds, words):
    from webapp.reuse import ago

    now = utcnow()
    assert ago(now - timedelta(seconds=seconds), now) == words
    assert ago(None, now) == "at an unknown time"
