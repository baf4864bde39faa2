"""The reading plan, checked exhaustively over small layouts (pure functions, no I/O)."""

from __future__ import annotations

from collections import Counter

import pytest

from loaders import plan

LAYOUTS = [[10, 10, 4], [4] * 7 + [1], [8], [5, 1], [3] * 9, [100, 1, 1, 1], [2, 2, 2, 2, 2]]


def _positions(part, sizes):
    """(shard, index in shard) of every sample a part keeps."""
    kept, position = [], 0
    for shard in part.shards:
        for index in range(sizes[shard]):
            if (position + index) % part.stride == part.phase:
                kept.append((shard, index))
        position += sizes[shard]
    return kept


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (2, 4)])
@pytest.mark.parametrize("training", [False, True])
def test_every_sample_has_exactly_one_worker(sizes, world_size, num_workers, training):
    parts = plan.plan_epoch(sizes, world_size=world_size, num_workers=num_workers, seed=3,
                            epoch=1, training=training, batch_size=2)
    owners = Counter(p for part in parts for p in _positions(part, sizes))
    assert sorted(owners) == [(s, i) for s in range(len(sizes)) for i in range(sizes[s])]
    assert set(owners.values()) == {1}
    assert [p.num_samples for p in parts] == [len(_positions(p, sizes)) for p in parts]


@pytest.mark.parametrize("sizes,world_size,num_workers", [
    (sizes, w, n) for sizes in LAYOUTS for w, n in [(1, 2), (2, 1), (2, 2), (3, 2)]
    if len(sizes) >= w * n])
def test_with_enough_shards_no_shard_goes_to_two_workers(sizes, world_size, num_workers):
    for epoch in range(4):
        parts = plan.plan_epoch(sizes, world_size=world_size, num_workers=num_workers, seed=0,
                                epoch=epoch, training=True, batch_size=2)
        readers = Counter(s for part in parts for s in part.shards)
        assert set(readers.values()) == {1} and all(p.stride == 1 for p in parts)


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("world_size,num_workers", [(1, 2), (2, 1), (2, 2), (3, 2), (2, 4)])
def test_every_rank_gets_the_same_quota_split_by_its_workers_samples(sizes, world_size, num_workers):
    batch = 2
    per_rank = sum(sizes) // (world_size * batch)
    for epoch in range(3):
        parts = plan.plan_epoch(sizes, world_size=world_size, num_workers=num_workers, seed=0,
                                epoch=epoch, training=True, batch_size=batch)
        for rank in range(world_size):
            mine = parts[rank * num_workers:(rank + 1) * num_workers]
            assert sum(p.quota for p in mine) == per_rank
            assert all(p.quota == 0 for p in mine if p.num_samples == 0)


def test_ranks_are_balanced_before_workers():
    # 6 equal shards, 2 ranks x 2 workers: 12 samples per rank, not 16 and 8.
    parts = plan.plan_epoch([4] * 6, world_size=2, num_workers=2, seed=0, epoch=0,
                            training=False, batch_size=4)
    assert [parts[0].num_samples + parts[1].num_samples,
            parts[2].num_samples + parts[3].num_samples] == [12, 12]


def test_shard_order_changes_per_epoch_and_repeats_per_seed():
    orders = {e: plan.shard_order(12, shuffle=True, seed=5, epoch=e) for e in range(4)}
    assert len({tuple(o) for o in orders.values()}) == 4
    assert orders[2] == plan.shard_order(12, shuffle=True, seed=5, epoch=2)
    assert orders[2] != plan.shard_order(12, shuffle=True, seed=6, epoch=2)
    assert plan.shard_order(12, shuffle=False, seed=5, epoch=3) == list(range(12))


def test_group_size_falls_back_in_steps():
    assert plan.group_size(8, 2, 2) == 1      # a shard per worker
    assert plan.group_size(3, 2, 2) == 2      # a rank's workers share its shards
    assert plan.group_size(1, 2, 2) == 4      # everyone shares the one shard
