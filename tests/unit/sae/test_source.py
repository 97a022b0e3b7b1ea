"""SAE sources, loading, the hook convention and ``decoder_rows`` == ``sae.decode``.

Small random SAEs are built here with sae-lens's own classes, one per supported
architecture, with random biases and decoder rows of random (non-unit) norm so
that every rule of the SAE's decode shows: ``apply_b_dec_to_input``, TopK's
rescaling by decoder norm, JumpReLU thresholds, training SAEs, and what sae-lens
saves after training (a BatchTopK SAE is saved as a JumpReLU SAE, a rescaling
TopK SAE with the norms folded in).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import (
    SAE,
    AbsTopKSAE,
    AbsTopKSAEConfig,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata

from latent_atlas.analyses.sae.source import (
    SaeLoadError,
    SaeSource,
    check_sae_fits,
    decoder_bias,
    decoder_rows,
    load_sae,
    parse_hook_name,
    sae_config,
    sae_hook,
    sae_hook_layer,
)
from latent_atlas.settings import Settings

D_IN, D_SAE = 16, 48


def _meta(hook: str = "blocks.1.hook_resid_post") -> SAEMetadata:
    return SAEMetadata(hook_name=hook, model_name="tiny")


def _randomise(sae, seed: int) -> None:
    """Random weights and biases; decoder rows of norms in [0.3, 3] (never unit)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        norms = torch.rand(D_SAE, 1, generator=generator) * 2.7 + 0.3
        sae.W_dec.copy_(sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True) * norms)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(D_SAE, generator=generator) * 0.3)


def _standard(apply_b_dec: bool):
    return StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec, metadata=_meta()))


ARCHITECTURES = {
    "standard": lambda: _standard(True),
    "standard-no-b_dec-input": lambda: _standard(False),
    "gated": lambda: GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_meta())),
    "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_meta())),
    "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, metadata=_meta())),
    "topk-rescaled": lambda: TopKSAE(
        TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True, metadata=_meta())
    ),
    "abstopk": lambda: AbsTopKSAE(AbsTopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, metadata=_meta())),
    "topk-training": lambda: TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True, metadata=_meta())
    ),
    "batchtopk-training": lambda: BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True, metadata=_meta())
    ),
}


def _assert_rows_decode(sae, seed: int = 1) -> None:
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        acts = sae.encode(x)
        assert int((acts != 0).sum()) > 0, "the test needs latents that fire"
        decoded = sae.decode(acts).numpy()
    mine = acts.numpy() @ decoder_rows(sae) + decoder_bias(sae)
    np.testing.assert_allclose(mine, decoded, rtol=1e-5, atol=1e-5)
    # and latent by latent, as the views sum them: one latent alone adds exactly its row
    rows = decoder_rows(sae)
    one = torch.zeros(1, D_SAE)
    one[0, 3] = 1.7
    with torch.no_grad():
        single = sae.decode(one).numpy()[0]
    np.testing.assert_allclose(single - decoder_bias(sae), 1.7 * rows[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_decoder_rows_agree_with_decode(arch: str) -> None:
    sae = ARCHITECTURES[arch]()
    _randomise(sae, seed=7)
    _assert_rows_decode(sae)


def test_rescaled_topk_rows_are_unit_and_differ_from_w_dec() -> None:
    sae = ARCHITECTURES["topk-rescaled"]()
    _randomise(sae, seed=3)
    rows = decoder_rows(sae)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(rows, sae.W_dec.detach().numpy())


@pytest.mark.parametrize("arch", ["topk-training", "batchtopk-training"])
def test_saved_training_sae_loads_and_decodes_the_same(arch: str, tmp_path: Path) -> None:
    """What sae-lens saves after training (norms folded; BatchTopK as JumpReLU) decodes by the rows too."""
    sae = ARCHITECTURES[arch]()
    _randomise(sae, seed=11)
    if arch == "batchtopk-training":
        sae.topk_threshold = torch.tensor(0.05, dtype=torch.double)
    sae.save_inference_model(tmp_path / "saes" / "trained")
    loaded = load_sae(SaeSource(kind="disk", path="trained"), settings=Settings(data_dir=tmp_path))
    expected = "jumprelu" if arch == "batchtopk-training" else "topk"
    assert loaded.cfg.architecture() == expected
    _assert_rows_decode(loaded)
    if arch == "topk-training":  # folding the norms keeps the function the training SAE computes
        x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), sae(x).numpy(), rtol=1e-4, atol=1e-4)


def test_runtime_normalisation_is_refused() -> None:
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm", metadata=_meta()))
    with pytest.raises(ValueError, match="normalises its input at run time"):
        decoder_rows(sae)


def test_hook_convention() -> None:
    hook = parse_hook_name("blocks.7.hook_resid_post")
    assert (hook.layer, hook.point, hook.hidden_state_index) == (7, "resid_post", 8)
    pre = parse_hook_name("blocks.7.hook_resid_pre")
    assert (pre.layer, pre.point, pre.hidden_state_index) == (7, "resid_pre", 7)
    assert parse_hook_name("blocks.0.hook_mlp_out").point == "mlp_out"
    with pytest.raises(ValueError, match="hook_resid_post"):
        parse_hook_name("blocks.3.attn.hook_z")
    sae = ARCHITECTURES["topk"]()
    assert sae_hook_layer(sae) == 1
    assert sae_hook({"metadata": {"hook_name": "blocks.4.hook_resid_pre"}}).layer == 4
    assert sae_hook({"hook_name": "blocks.2.hook_resid_post"}).layer == 2  # pre-6.0 configs


def test_check_sae_fits_messages() -> None:
    check_sae_fits(576, 29, 576, 30)
    check_sae_fits(576, 3, None, None)
    with pytest.raises(ValueError, match="the SAE reads vectors of size 768 but model smol has hidden size 576"):
        check_sae_fits(768, 3, 576, 30, model_name="smol")
    with pytest.raises(ValueError, match=r"the SAE hooks layer 40 but model smol has 30 layers \(0..29\)"):
        check_sae_fits(576, 40, 576, 30, model_name="smol")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "pretrained", "release": "gpt2-small-res-jb"}, "needs sae_id"),
        ({"kind": "disk"}, "needs path"),
        ({"kind": "run", "run_id": "abc", "path": "/x"}, "takes no path"),
        ({"kind": "run", "run_id": "../../etc"}, "pattern"),
        ({"kind": "catalogue", "name": "x", "extra": 1}, "Extra inputs"),
        ({"kind": "hub"}, "kind"),
    ],
)
def test_source_fields_per_kind(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SaeSource.model_validate(raw)


def test_disk_paths_outside_the_users_root_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    for path in ("/etc", "../secret_key", str(tmp_path / "artifacts")):
        with pytest.raises(SaeLoadError, match="must lie under"):
            load_sae(SaeSource(kind="disk", path=path), settings=settings)
    with pytest.raises(SaeLoadError, match="does not exist"):
        load_sae(SaeSource(kind="disk", path="missing"), settings=settings)
    (tmp_path / "saes" / "half").mkdir(parents=True)
    (tmp_path / "saes" / "half" / "cfg.json").write_text("{}")
    with pytest.raises(SaeLoadError, match="has no sae_weights.safetensors"):
        load_sae(SaeSource(kind="disk", path="half"), settings=settings)


def test_catalogue_and_run_sources(tmp_path: Path) -> None:
    sae = ARCHITECTURES["jumprelu"]()
    _randomise(sae, seed=2)
    sae.save_model(tmp_path / "elsewhere" / "mine")
    settings = Settings(
        data_dir=tmp_path / "data",
        saes={"mine": {"source": "disk", "path": str(tmp_path / "elsewhere" / "mine"), "model": "gpt2"}},
    )
    loaded = load_sae(SaeSource(kind="catalogue", name="mine"), settings=settings)
    np.testing.assert_array_equal(decoder_rows(loaded), decoder_rows(sae))
    assert sae_config(SaeSource(kind="catalogue", name="mine"), settings=settings)["d_in"] == D_IN
    with pytest.raises(SaeLoadError, match=r"not in this portal's SAE catalogue \(allowed: mine\)"):
        load_sae(SaeSource(kind="catalogue", name="other"), settings=settings)

    def resolver(run_id: str) -> Path:
        if run_id != "run1":
            raise ValueError(f"run {run_id} does not exist")
        return tmp_path / "elsewhere" / "mine"

    from_run = load_sae(SaeSource(kind="run", run_id="run1"), run_dir_resolver=resolver, settings=settings)
    assert from_run.cfg.d_sae == D_SAE
    with pytest.raises(SaeLoadError, match="run nope does not exist"):
        load_sae(SaeSource(kind="run", run_id="nope"), run_dir_resolver=resolver, settings=settings)
    with pytest.raises(SaeLoadError, match="needs the portal"):
        load_sae(SaeSource(kind="run", run_id="run1"), settings=settings)


def test_corrupt_directory_is_a_clear_error(tmp_path: Path) -> None:
    sae = ARCHITECTURES["standard"]()
    sae.save_model(tmp_path / "saes" / "bad")
    cfg = json.loads((tmp_path / "saes" / "bad" / "cfg.json").read_text())
    cfg["architecture"] = "no-such-architecture"
    (tmp_path / "saes" / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeLoadError, match="could not load the SAE in"):
        load_sae(SaeSource(kind="disk", path="bad"), settings=Settings(data_dir=tmp_path))


def test_pretrained_with_the_hub_unreachable_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``SAE.from_pretrained`` path, with the hub off (as it is on this machine anyway)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = SaeSource(kind="pretrained", release="gpt2-small-res-jb", sae_id="blocks.7.hook_resid_pre")
    with pytest.raises(SaeLoadError, match="Hugging Face hub is unreachable"):
        load_sae(source)
    with pytest.raises(SaeLoadError, match="Hugging Face hub is unreachable"):
        sae_config(source)
    with pytest.raises(SaeLoadError, match="not found in release"):
        load_sae(SaeSource(kind="pretrained", release="gpt2-small-res-jb", sae_id="no-such-id"))


def test_loaded_sae_is_a_sae_lens_sae(tmp_path: Path) -> None:
    sae = ARCHITECTURES["topk"]()
    sae.save_model(tmp_path / "saes" / "t")
    loaded = load_sae(SaeSource(kind="disk", path=str(tmp_path / "saes" / "t")), settings=Settings(data_dir=tmp_path))
    assert isinstance(loaded, SAE) and not loaded.training
