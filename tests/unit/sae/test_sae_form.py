"""The sae New-run form gives exactly the raw params ``SaeParams`` validates, for every SAE and corpus choice."""

from __future__ import annotations

import base64
import json

import pytest

from latent_atlas.analyses.sae.params import SaeParams
from webapp.views import FormError
from webapp.views.sae.form import params_from_form


def _validated(raw: dict) -> SaeParams:
    return SaeParams.model_validate_json(json.dumps(raw), strict=True)


@pytest.mark.parametrize(("values", "sae"), [
    ({"sae_kind": "catalogue", "sae_name": "demo-sae"}, {"kind": "catalogue", "name": "demo-sae"}),
    ({"sae_kind": "disk", "sae_path": "mine"}, {"kind": "disk", "path": "mine"}),
    ({"sae_kind": "run", "sae_run_id": "abc_123"}, {"kind": "run", "run_id": "abc_123"}),
    ({"sae_kind": "pretrained", "sae_release": "gpt2-small-res-jb", "sae_id": "blocks.7.hook_resid_pre"},
     {"kind": "pretrained", "release": "gpt2-small-res-jb", "sae_id": "blocks.7.hook_resid_pre"}),
])
def test_sae_sources(values, sae):
    raw = params_from_form("tiny-gpt2", {**values, "corpus_kind": "demo", "n_tokens": 5000}, None)
    params = _validated(raw)
    assert params.sae.model_dump(exclude_none=True) == sae
    assert params.n_tokens == 5000 and params.corpus.kind == "demo"


def test_corpora_prompts_and_hub():
    raw = params_from_form("tiny-gpt2", {"sae_kind": "run", "sae_run_id": "r1", "corpus_kind": "prompts",
                                         "prompts": "one line\n\n two \n"}, None)
    assert _validated(raw).corpus.prompts == ["one line", "two"]
    raw = params_from_form("tiny-gpt2", {"sae_kind": "run", "sae_run_id": "r1", "corpus_kind": "hub",
                                         "hub_dataset": "Salesforce/wikitext", "hub_config": "wikitext-2-raw-v1"},
                           None)
    corpus = _validated(raw).corpus
    assert (corpus.dataset, corpus.config, corpus.split, corpus.text_field) == (
        "Salesforce/wikitext", "wikitext-2-raw-v1", "train", "text")


def test_file_corpus_is_sampled_with_the_models_tokenizer(tiny_gpt2_dir, monkeypatch):
    from webapp.views.geometry import form as geometry_form

    monkeypatch.setitem(geometry_form._tokenizers, "tiny-gpt2", _tiny_tokenizer(tiny_gpt2_dir))
    text = "\n".join(f"line {i} of the corpus with some words" for i in range(200)).encode()
    upload = json.dumps({"name": "c.txt", "contents": "data:text/plain;base64," + base64.b64encode(text).decode()})
    raw = params_from_form("tiny-gpt2", {"sae_kind": "run", "sae_run_id": "r1", "corpus_kind": "file",
                                         "corpus_file": upload, "n_tokens": 160, "context_len": 16}, None)
    corpus = _validated(raw).corpus
    assert corpus.kind == "tokens" and len(corpus.token_ids) == 10
    assert all(len(row) == 16 for row in corpus.token_ids) and corpus.info.tokens_per_sequence == 16


def _tiny_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def test_form_errors_name_every_problem():
    with pytest.raises(FormError) as info:
        params_from_form(None, {"sae_kind": "disk", "corpus_kind": "prompts", "top_k": "2.5", "window": -1}, None)
    text = " | ".join(info.value.messages)
    for fragment in ("model: choose a model", "needs path", "at least one line", "top_k", "window"):
        assert fragment in text
    with pytest.raises(FormError, match="attach a text or JSONL file"):
        params_from_form("tiny-gpt2", {"sae_kind": "run", "sae_run_id": "r", "corpus_kind": "file"}, None)


def _find(component, wanted_name: str):
    """The component whose pattern ID names ``wanted_name`` (depth first)."""
    cid = getattr(component, "id", None)
    if isinstance(cid, dict) and cid.get("name") == wanted_name:
        return component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children] if children is not None else []:
        found = _find(child, wanted_name)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(("prefill", "kind", "run_id"), [
    ({"sae_run": "abc_123-x"}, "run", "abc_123-x"),
    ({"sae_run": "../etc"}, "catalogue", None),  # not a run id: ignored
    ({}, "catalogue", None),
])
def test_prefill_from_a_sae_train_run(prefill, kind, run_id):
    from types import SimpleNamespace

    from webapp.views.sae.form import form_fields

    settings = SimpleNamespace(saes={"demo-sae": SimpleNamespace(model="tiny")})
    fields = form_fields(settings, prefill=prefill)
    radio = next(_find(f, "sae_kind") for f in fields if _find(f, "sae_kind") is not None)
    run_input = next(_find(f, "sae_run_id") for f in fields if _find(f, "sae_run_id") is not None)
    assert radio.value == kind and run_input.value == run_id
