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
