"""The scan's logit lens applies Gemma 2's final logit soft-cap: at the last layer it is the model's own.

A tiny Gemma 2 (``tiny_models``: ``final_logit_softcapping`` 0.3, small enough
to change the probabilities) is scanned in diff mode; the last frame's KL / JS
divergence and the hover lens of the last position must equal those of the
model's own logits (``model(...).logits``, which transformers soft-caps), and
differ measurably from the uncapped ones, so a lens without the cap fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from latent_atlas.analyses.scan import ScanParams, run_scan
from latent_atlas.lm import LanguageModel, load_model
from tiny_models import build_tiny_model

A = "The capital of France is"
B = "The capital of Spain is, maybe"


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    path: Path = build_tiny_model(tmp_path_factory.mktemp("scan-gemma2"), "gemma2")
    lm = load_model(str(path), name="tiny")
    assert lm.adapter.softcap_of(lm.model) == pytest.approx(0.3)
    return lm


def _last_logits(lm: LanguageModel, prompt: str, capped: bool) -> torch.Tensor:
    """The model's own next-token logits of ``prompt`` (float64), or the same without the soft-cap."""
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        if capped:
            return lm.model(input_ids=ids).logits[0, -1].double()
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]  # final-normed
        return lm.adapter.unembedding_of(lm.model)(hidden).double()


def _kl_js(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    return float(rel_entr(p, q).sum() / np.log(2)), float(jensenshannon(p, q, base=2) ** 2)


def test_scan_lens_at_the_last_layer_is_the_models_softcapped_distribution(gemma2: LanguageModel) -> None:
    params = ScanParams(model="tiny", mode="diff", prompt_a=A, prompt_b=B)
    result = run_scan(params, gemma2)
    capped = [torch.softmax(_last_logits(gemma2, t, True), -1).numpy() for t in (A, B)]
    uncapped = [torch.softmax(_last_logits(gemma2, t, False), -1).numpy() for t in (A, B)]
    kl, js = _kl_js(*capped)
    kl_raw, js_raw = _kl_js(*uncapped)
    assert abs(kl - kl_raw) > 1e-3 * max(kl, 1e-3)  # the cap matters here, so the check can fail
    assert result.arrays["div_kl"][-1] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert result.arrays["div_js"][-1] == pytest.approx(js, rel=1e-4, abs=1e-7)
    # Hover lens of prompt A's last position at the last frame: the model's top-1 and its probability.
    n_a = len(gemma2.tokenizer(A)["input_ids"])
    assert int(result.arrays["lens_ids"][-1, n_a - 1]) == int(capped[0].argmax())
    assert float(result.arrays["lens_probs"][-1, n_a - 1]) == pytest.approx(float(capped[0].max()), rel=2e-3)
    assert abs(float(capped[0].max()) / float(uncapped[0].max()) - 1) > 0.05  # and that differs uncapped
