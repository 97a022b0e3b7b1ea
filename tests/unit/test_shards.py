"""The shard contract's shared parts: how many shards, even ranges, the registry."""

from __future__ import annotations

import pytest

from latent_atlas.analyses.shards import SHARDABLE, even_ranges, get_shardable, shard_count


def test_a_small_run_is_never_split() -> None:
    assert shard_count(units=10_000, idle_workers=8, min_units_per_shard=16_384) == 1
    assert shard_count(units=16_384 * 2 - 1, idle_workers=8, min_units_per_shard=16_384) == 1
    assert shard_count(units=0, idle_workers=8, min_units_per_shard=1) == 1


def test_one_idle_worker_never_splits() -> None:
    assert shard_count(units=10**9, idle_workers=1, min_units_per_shard=1) == 1
    assert shard_count(units=10**9, idle_workers=0, min_units_per_shard=1) == 1


def test_shards_are_bounded_by_workers_and_by_work() -> None:
    assert shard_count(units=160_000, idle_workers=2, min_units_per_shard=16_384) == 2
    assert shard_count(units=160_000, idle_workers=64, min_units_per_shard=16_384) == 9
    assert shard_count(units=32_768, idle_workers=8, min_units_per_shard=16_384) == 2
    for units in range(0, 200_000, 997):
        for idle in range(0, 12):
            n = shard_count(units, idle, 16_384)
            # Brute force: the most shards (one per idle worker at most, 2+ idle to split) none below the minimum.
            best = 1 if idle < 2 else max([1, *(k for k in range(1, idle + 1) if units // k >= 16_384)])
            assert n == best, (units, idle, n, best)


def test_shard_count_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        shard_count(-1, 2, 10)
    with pytest.raises(ValueError):
        shard_count(10, 2, 0)


def test_even_ranges_cover_every_piece_once() -> None:
    for pieces in range(0, 30):
        for n in range(1, 12):
            ranges = even_ranges(pieces, n)
            assert len(ranges) == max(1, min(n, pieces))  # as many as asked, but never an empty range
            assert ranges[0][0] == 0 and ranges[-1][1] == pieces
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            if pieces:
                assert all(stop > start for start, stop in ranges)
                sizes = [stop - start for start, stop in ranges]
                assert max(sizes) - min(sizes) <= 1


def test_registry_names_the_shardable_kinds() -> None:
    assert "grid" in SHARDABLE and get_shardable("grid") is SHARDABLE["grid"]
    assert get_shardable("anatomy") is None
    for name, kind in SHARDABLE.items():
        assert kind.name == name and kind.min_units_per_shard >= 1
