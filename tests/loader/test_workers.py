"""Real DataLoader workers: counts, epochs, warnings and memory across persistent workers."""

from __future__ import annotations

import logging

import pytest
from torch.utils.data import DataLoader

from loaders import make_loader
from loaders import stream as stream_module

from .datasets import manifest, truth


def _keys(loader):
    return [tuple(keys) for _, _, keys in loader]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_unequal_worker_quotas_still_give_len_batches_on_every_rank(uneven, num_workers):
    # Shards of 10, 10 and 4 with batch 4: workers get different quotas; the DataLoader's
    # round-robin must still deliver exactly len(loader) full batches on each rank.
    counts = []
    for rank in range(2):
        loader = make_loader(uneven, "train", batch_size=4, num_workers=num_workers,
                             image_size=16, rank=rank, world_size=2, persistent_workers=False)
        sizes = [len(labels) for _, labels in loader]
        assert sizes == [4] * len(loader)
        counts.append(len(sizes))
    assert counts == [24 // 8] * 2


def test_no_sample_repeats_within_an_epoch_when_there_are_enough(many):
    loader = make_loader(many, "train", batch_size=4, num_workers=2, image_size=16, keys=True,
                         shuffle_buffer=100)
    keys = [k for batch in _keys(loader) for k in batch]
    assert len(keys) == len(set(keys)) == len(loader) * 4


def test_forgetting_set_epoch_still_changes_the_order_and_set_epoch_reproduces_it(many):
    with make_loader(many, "train", batch_size=4, num_workers=2, image_size=16, keys=True) as auto:
        first, second = _keys(auto), _keys(auto)
    assert first != second and auto.dataset.epoch == 1
    with make_loader(many, "train", batch_size=4, num_workers=2, image_size=16,
                     keys=True) as explicit:
        explicit.set_epoch(1)
        assert _keys(explicit) == second
        explicit.set_epoch(1)  # chosen again: the same epoch again, not the next
        assert _keys(explicit) == second


def test_persistent_workers_see_each_epoch_and_keep_memory_and_files_flat(many):
    loader = make_loader(many, "train", batch_size=4, num_workers=2, image_size=32, keys=True,
                         persistent_workers=True)
    fresh = make_loader(many, "train", batch_size=4, num_workers=2, image_size=32, keys=True,
                        persistent_workers=False)
    stats = []
    for epoch in range(8):
        loader.set_epoch(epoch)
        seen = _keys(loader)
        if epoch in (0, 3):
            fresh.set_epoch(epoch)
            assert seen == _keys(fresh)
        stats.append(loader.dataset.worker_stats())
    loader.close()
    for worker in range(2):
        assert [s[worker]["open_shards"] for s in stats] == [0] * len(stats)
        rss = [s[worker]["rss_kb"] for s in stats]
        # Allocator noise is a few hundred kB; a leak of batches or buffers would be MBs.
        assert rss[-1] - rss[2] < 4096, rss


def test_few_shards_warning_comes_once_and_only_from_rank_0(single, caplog, monkeypatch):
    monkeypatch.setattr(stream_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="loaders"):
        for rank in (0, 1, 0):
            for _ in range(2):
                make_loader(single, "train", batch_size=2, num_workers=2, image_size=16,
                            rank=rank, world_size=2)
    warnings = [r.getMessage() for r in caplog.records if "shards for" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 shards for 2 ranks x 2 workers" in warnings[0] and "shard_max_samples" in warnings[0]


def test_a_dataloader_with_other_worker_counts_is_refused_not_skewed(many):
    loader = make_loader(many, "val", batch_size=4, num_workers=2, image_size=16)
    assert "planned for 2 workers but the DataLoader has 1" in _error_of(
        DataLoader(loader.dataset, batch_size=None, num_workers=1))


def _error_of(loader) -> str:
    # Stop the failed iterator's workers here: left to the garbage collector (the
    # traceback keeps it in a cycle), torch's shutdown waits out a 5 s status interval.
    iterator = iter(loader)
    try:
        list(iterator)
    except ValueError as exc:
        return str(exc)
    finally:
        iterator._shutdown_workers()
    return "no error"


def test_iterating_in_the_main_process_gives_the_whole_share(many):
    loader = make_loader(many, "val", batch_size=4, num_workers=2, image_size=16, keys=True)
    keys = [k for _, _, batch in loader.dataset for k in batch]
    assert sorted(keys) == sorted(truth(many, "val"))


def test_too_few_samples_for_one_batch_per_rank_is_refused_with_advice(single):
    total = manifest(single)["splits"]["train"]["num_samples"]
    with pytest.raises(ValueError, match="lower batch_size"):
        make_loader(single, "train", batch_size=total, num_workers=0, rank=0, world_size=2)
