"""``CscWriter``: both ways in (``add`` of any-order SparseBatches, ``add_packed`` of torch-packed
records) give the latent-major CSC of the dense activations, computed here by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_atlas.analyses.sae.harvest import CscWriter
from latent_atlas.analyses.sae.reducers import SparseBatch

D, T = 37, 500
SIZES = [0, 1, 100, 3, 0, 250, 146]


def activations(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    acts = np.where(rng.random((T, D)) < 0.2, rng.normal(size=(T, D)), 0).astype(np.float32)
    acts[:, 4] = 0.0  # a latent that never fires
    acts[7, 4] = -0.0  # a negative zero is not a firing
    return acts


def brute_csc(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = [np.flatnonzero(acts[:, lat]) for lat in range(D)]
    ptr = np.r_[0, np.cumsum([c.size for c in cols])].astype(np.int64)
    return ptr, np.concatenate(cols).astype(np.int32), np.concatenate([acts[c, lat] for lat, c in enumerate(cols)])


def assert_csc(got: tuple[np.ndarray, np.ndarray, np.ndarray], want: tuple[np.ndarray, ...]) -> None:
    for a, b, dtype in zip(got, want, (np.int64, np.int32, np.float32), strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_add_in_any_order_and_add_packed_equal_brute_force() -> None:
    acts = activations()
    rng = np.random.default_rng(0)
    shuffled, packed = CscWriter(D), CscWriter(D)
    start = 0
    for n in SIZES:
        part = acts[start:start + n]
        batch = SparseBatch.from_dense(part, start)
        perm = rng.permutation(batch.token.size)
        shuffled.add(SparseBatch(batch.token[perm], batch.latent[perm], batch.value[perm], start, n))
        feats = torch.from_numpy(part.copy())
        where = torch.nonzero(feats)
        records = CscWriter.pack(where[:, 0] + start, where[:, 1], feats[where[:, 0], where[:, 1]])
        assert records.dtype == torch.int32 and records.shape == (where.shape[0], 3)
        packed.add_packed(records if n % 2 else records.numpy())  # a tensor or its numpy array
        start += n
    want = brute_csc(acts)
    assert_csc(shuffled.finish(), want)
    assert_csc(packed.finish(), want)


def test_finish_in_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import latent_atlas.analyses.sae.harvest as harvest_module

    monkeypatch.setattr(harvest_module, "_CHUNK", 97)  # a latent's tokens span chunks
    acts = activations(2)
    writer = CscWriter(D)
    for start in range(0, T, 120):
        writer.add(SparseBatch.from_dense(acts[start:start + 120], start))
    assert_csc(writer.finish(), brute_csc(acts))


def test_batches_out_of_token_order_are_refused() -> None:
    acts = activations(3)
    writer = CscWriter(D)
    writer.add(SparseBatch.from_dense(acts[100:200], 100))
    with pytest.raises(ValueError, match="token order"):
        writer.add(SparseBatch.from_dense(acts[0:100], 0))
    feats = torch.from_numpy(acts[150:160].copy())
    where = torch.nonzero(feats)
    with pytest.raises(ValueError, match="token order"):
        writer.add_packed(CscWriter.pack(where[:, 0] + 150, where[:, 1], feats[where[:, 0], where[:, 1]]))


def test_empty_writer() -> None:
    ptr, token, value = CscWriter(D).finish()
    assert ptr.shape == (D + 1,) and not ptr.any() and token.size == 0 and value.size == 0
