"""The sae_train New-run form, run page and SAE download (pure functions, no server)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.numpy import load_file

from latent_atlas.analyses.corpus import CorpusError
from latent_atlas.analyses.sae.train_params import SaeTrainParams
from latent_atlas.settings import Settings, get_settings
from webapp.views import FormError
from webapp.views.sae_train.api import sae_zip_bytes
from webapp.views.sae_train.form import NUMBERS, params_from_form, save_upload
from webapp.views.sae_train.page import loss_figure, render, summary_rows

DEFAULTS = {name: default for name, (_label, default, *_rest) in NUMBERS.items()}


def _values(**overrides):
    return {**DEFAULTS, "lr": 0.001, "point": "resid_post", "architecture": "topk", "corpus_kind": "demo",
            **overrides}


def test_form_defaults_are_valid_params_in_strict_json_mode() -> None:
    params = params_from_form("smollm2-135m", _values(), Settings().limits)
    validated = SaeTrainParams.model_validate_json(json.dumps(params), strict=True,
                                                   context={"n_layers": 30, "models": {"smollm2-135m"}})
    assert validated.layer == 12 and validated.corpus.kind == "demo"
    assert validated.training_tokens == 150_000 and validated.hook_name == "blocks.12.hook_resid_post"


def test_form_errors_name_every_field() -> None:
    with pytest.raises(FormError) as caught:
        params_from_form(None, _values(d_sae="wide", k=2.5, lr="fast", corpus_kind="file"), Settings().limits)
    text = " | ".join(caught.value.messages)
    for fragment in ("model: choose a model", "d_sae:", "k:", "lr:", "corpus: upload"):
        assert fragment in text


def test_hub_corpus_params() -> None:
    params = params_from_form("m", _values(corpus_kind="hub", hub_dataset="Salesforce/wikitext", hub_config="wikitext-2-raw-v1",
                                           hub_split="train", hub_field="text"), Settings().limits)
    assert params["corpus"] == {"kind": "hub", "dataset": "Salesforce/wikitext", "config": "wikitext-2-raw-v1",
                                "split": "train", "text_field": "text"}
    SaeTrainParams.model_validate(params)


def test_upload_is_saved_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        name, documents = save_upload("notes.txt", b"first line\nsecond line\n")
        assert name.startswith("upload-") and name.endswith(".txt") and documents == 2
        assert (tmp_path / "corpora" / name).read_bytes() == b"first line\nsecond line\n"
        assert save_upload("again.txt", b"first line\nsecond line\n")[0] == name
        with pytest.raises(CorpusError, match="looks binary"):
            save_upload("x.txt", b"a\x00b")
        params = params_from_form("m", _values(corpus_kind="file", corpus_file=name), Settings().limits)
        assert SaeTrainParams.model_validate(params).corpus.file == name
    finally:
        get_settings.cache_clear()


def _summary(note: str | None = None) -> dict:
    summary = {"hook_name": "blocks.12.hook_resid_post", "architecture": "topk", "saved_architecture": "topk",
               "d_in": 576, "d_sae": 2048, "k": 32, "training_tokens": 250_000, "steps": 244,
               "unique_training_tokens": 250_000, "corpus": "<b>demo</b>", "timings": {"train_s": 300.0},
               "metrics": {"variance_explained": 0.8123, "l0": 32.0, "dead_fraction": 0.05, "eval_tokens": 20_000},
               "training_outliers_dropped": 3}
    if note:
        summary["corpus_note"] = note
    return summary


def test_page_shows_metrics_curve_and_links() -> None:
    arrays = {"loss_step": np.arange(5), "loss_value": np.array([5, 4, 3, 2, 1.0]), "loss_mse": np.array([4, 3, 2, 1, 0.5])}
    rows = dict(summary_rows(_summary()))
    assert rows["variance explained (held-out)"] == "81.2%" and rows["dead latents (never fired on held-out tokens)"] == "5.0%"
    assert "3 tokens" in rows["norm outliers left out"]
    page = render(SimpleNamespace(id="abc123", model="smollm2-135m", summary=_summary("<script>x</script>")), arrays)
    text = json.dumps(page.to_plotly_json(), default=lambda o: o.to_plotly_json() if hasattr(o, "to_plotly_json") else str(o))
    assert "/api/runs/abc123/sae.zip" in text and "/new?kind=sae&model=smollm2-135m&sae_run=abc123" in text
    assert "<script>x</script>" in text  # a plain text child: React escapes it, no raw HTML component
    assert "dangerouslySetInnerHTML" not in text
    figure = loss_figure(arrays)
    assert [trace.name for trace in figure.data] == ["total loss", "MSE"]
    assert list(figure.data[0].y) == [5, 4, 3, 2, 1]


def test_sae_zip_loads_with_sae_lens(tmp_path: Path) -> None:
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=8, d_sae=16, k=2, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post")))
    sae.save_inference_model(tmp_path / "saved")
    summary = {"sae_cfg": json.loads((tmp_path / "saved" / "cfg.json").read_text())}
    arrays = {f"sae__{k}": v for k, v in load_file(str(tmp_path / "saved" / "sae_weights.safetensors")).items()}
    with zipfile.ZipFile(io.BytesIO(sae_zip_bytes(summary, arrays))) as archive:
        archive.extractall(tmp_path / "unzipped")
    loaded = SAE.load_from_disk(tmp_path / "unzipped" / "sae")
    x = torch.randn(3, 8)
    with torch.no_grad():
        original = SAE.load_from_disk(tmp_path / "saved")
        torch.testing.assert_close(loaded(x), original(x))
