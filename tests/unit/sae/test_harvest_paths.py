"""The harvest loop: device-side reducers give the numpy result; attention-sink outliers are left out and counted.

The residual at the hook is a lookup table of the token (``forward=``), as in test_finding.py,
so planted outlier tokens have a known norm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from latent_atlas.analyses.sae.activations import OUTLIER_FACTOR as TRAIN_OUTLIER_FACTOR
from latent_atlas.analyses.sae.device_reducers import DeviceCoFiring
from latent_atlas.analyses.sae.harvest import OUTLIER_FACTOR, CscWriter, harvest
from latent_atlas.analyses.sae.reducers import HarvestReducers

D_IN, D_SAE, VOCAB, SINK = 16, 40, 50, 7  # token SINK's residual is 40x the others' norm


def setup(seed: int = 0) -> tuple[StandardSAE, torch.Tensor, list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False,
                                        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post")))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.4)
        sae.b_enc.fill_(-0.3)
    table = torch.randn(512, D_IN, generator=generator)  # rows past VOCAB: padding ids
    table /= table.norm(dim=1, keepdim=True)
    table[SINK] *= 40.0
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, VOCAB, int(rng.integers(5, 30))).tolist() for _ in range(40)]
    return sae.eval(), table, sequences


def run(lm, device: str | None, outlier_factor: float,
        as_on_gpu: bool = False) -> tuple[dict[str, np.ndarray], object, tuple]:
    sae, table, sequences = setup()
    reducers = HarvestReducers(D_SAE, top_k=6, interval_bins=3, interval_per_bin=2, hist_bins=12, seed=1,
                               device=device, device_intervals=as_on_gpu or None)
    if as_on_gpu:  # every reducer in torch (co-firing too), as off the CPU: the host only writes the CSC
        reducers.on_device.cofire, reducers.cofire = DeviceCoFiring(D_SAE, "cpu"), None
        assert not reducers.needs_host_batch
    csc = CscWriter(D_SAE)
    tokens = harvest(lm, sae, None, sequences, reducers, batch_tokens=120, skip_positions=1,
                     progress=lambda f, s: None, csc=csc, forward=lambda lm, ids, mask, hook: table[ids],
                     outlier_factor=outlier_factor)
    return reducers.result(edges_k=4), tokens, csc.finish()


@pytest.mark.parametrize("as_on_gpu", [False, True])
def test_device_reducers_in_the_harvest_equal_the_numpy_ones(tiny_gpt2, as_on_gpu: bool) -> None:
    host, tokens, csc = run(tiny_gpt2, None, OUTLIER_FACTOR)
    device, tokens_d, csc_d = run(tiny_gpt2, "cpu", OUTLIER_FACTOR, as_on_gpu)
    assert host.keys() == device.keys()
    for name, array in host.items():
        if array.dtype.kind == "f":
            np.testing.assert_allclose(device[name], array, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(device[name], array, err_msg=name)
    for a, b in zip(csc, csc_d, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (host["fire_count"] > 0).sum() > D_SAE // 2  # the test harvest is not empty


def test_outliers_are_stored_counted_and_never_encoded(tiny_gpt2) -> None:
    assert OUTLIER_FACTOR == TRAIN_OUTLIER_FACTOR  # the same rule as sae_train
    arrays, tokens, (ptr, lat_token, _) = run(tiny_gpt2, None, OUTLIER_FACTOR)
    sink = np.flatnonzero((tokens.token_id == SINK) & (tokens.token_pos >= 1))
    assert sink.size > 0 and tokens.outliers_dropped == sink.size
    assert not np.isin(lat_token, sink).any()  # no activation stored at an outlier
    assert (tokens.token_id == SINK).sum() > 0  # but the token is kept for windows
    encoded = int((tokens.token_pos >= 1).sum()) - sink.size
    np.testing.assert_allclose(arrays["density"], arrays["fire_count"] / encoded, rtol=1e-6)
    # with the rule off the same tokens are encoded (and at 40x the norm they fire)
    arrays_off, tokens_off, (_, lat_token_off, _) = run(tiny_gpt2, None, 0.0)
    assert tokens_off.outliers_dropped == 0 and np.isin(lat_token_off, sink).any()


def test_global_token_indices_must_fit_int32(tiny_gpt2) -> None:
    sae, table, sequences = setup()
    reducers = HarvestReducers(D_SAE, top_k=2, interval_bins=2, interval_per_bin=1, hist_bins=4)
    for offset in (-1, 2**31 - 5):
        with pytest.raises(ValueError, match="2\\*\\*31"):
            harvest(tiny_gpt2, sae, None, sequences, reducers, batch_tokens=120, skip_positions=1,
                    progress=lambda f, s: None, forward=lambda lm, ids, mask, hook: table[ids], token_offset=offset)
