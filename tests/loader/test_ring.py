"""Reused shared-memory batch slots (loaders/ring.py), with real DataLoader workers.

The promise: a batch the consumer still holds is never written over. A worker reuses a
slot only after every tensor on that batch is gone, and a worker with no free slot sends
a fresh batch instead of waiting.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from loaders import make_loader, ring
from loaders.stream import ShardStream, read_split

from .datasets import expected_eval_images

SIZE = 16


def _expected_eval_images(dataset, split):
    return expected_eval_images(dataset, split, SIZE)


def _fallbacks(loader) -> int:
    return sum(stats["ring_fallbacks"] for stats in loader.dataset.worker_stats())


@pytest.mark.parametrize("persistent", [False, True])
def test_batches_kept_by_the_consumer_are_never_written_over(many, persistent):
    expected = _expected_eval_images(many, "val")
    loader = make_loader(many, "val", batch_size=2, num_workers=2, image_size=SIZE, keys=True,
                         persistent_workers=persistent)
    kept = list(loader)  # every batch held at once: far more than the slots
    seen = {}
    for images, labels, keys in kept:
        for image, key in zip(images, keys):
            seen[key] = image.permute(1, 2, 0).numpy()
    assert seen.keys() == expected.keys()
    for key, image in seen.items():
        assert np.array_equal(image, expected[key]), key
    # More batches were held than there are slots, so workers sent fresh ones instead.
    assert _fallbacks(loader) > 0
    loader.close()


def test_slots_come_back_when_the_consumer_lets_batches_go(many):
    loader = make_loader(many, "train", batch_size=2, num_workers=1, image_size=SIZE,
                         prefetch_factor=1, persistent_workers=False)
    for images, labels in loader:  # each batch dropped before the next is asked for
        del images, labels
    # The consumer held at most one batch, one more was in flight and one was being
    # filled: the ring (prefetch_factor + 2 = 3 slots) always had a free slot.
    assert _fallbacks(loader) == 0


def test_an_abandoned_pass_does_not_hang_and_its_held_batch_stays_intact(many):
    loader = make_loader(many, "train", batch_size=2, num_workers=2, image_size=SIZE,
                         persistent_workers=True)
    iterator = iter(loader)
    held, _ = next(iterator)
    snapshot = held.clone()
    del iterator  # abandoned after one batch; its other batches are dropped
    for epoch in range(3):  # the same persistent workers, slots reclaimed at each pass
        batches = sum(1 for _ in loader)
        assert batches == len(loader)
    assert torch.equal(held, snapshot)
    loader.close()


def test_a_view_or_numpy_array_keeps_the_batch_alive(many):
    loader = make_loader(many, "val", batch_size=2, num_workers=1, image_size=SIZE,
                         persistent_workers=False, prefetch_factor=1)
    iterator = iter(loader)
    images, _ = next(iterator)
    first_image = images[0, 1].numpy()  # a numpy view of one channel of one sample
    copy = first_image.copy()
    del images
    gc.collect()
    for _ in iterator:  # the worker keeps filling; it must not reuse that slot
        pass
    assert np.array_equal(first_image, copy)


def test_batches_are_channels_last_uint8_views(many):
    loader = make_loader(many, "train", batch_size=4, num_workers=1, image_size=SIZE,
                         persistent_workers=False)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64
    images.add_(1)  # writable: the consumer owns it until it lets go


def test_a_plain_dataloader_over_the_stream_gets_plain_tensors(many):
    # The ring is make_loader's: a ShardStream used directly never sends a RingBatch.
    paths, sizes, _ = read_split(many, "val")
    stream = ShardStream(paths, sizes, training=False, batch_size=4, image_size=SIZE,
                         num_workers=2)
    batches = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert batches and all(isinstance(images, torch.Tensor) for images, _ in batches)
    assert sum(len(labels) for _, labels in batches) == sum(sizes)


def test_the_main_process_forgets_the_rings_of_workers_that_exited(many):
    before = set(ring._received)
    loader = make_loader(many, "val", batch_size=4, num_workers=2, image_size=SIZE,
                         persistent_workers=False)
    for _ in range(2):
        assert sum(len(labels) for _, labels in loader) > 0
    # Each pass had its own workers; their mappings went with the end of the pass.
    assert set(ring._received) - before == set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_pinned_batches_are_copies_and_free_their_slot_at_once(many):
    loader = make_loader(many, "train", batch_size=4, num_workers=2, image_size=SIZE,
                         pin_memory=True, persistent_workers=False)
    kept = list(loader)
    assert all(images.is_pinned() and labels.is_pinned() for images, labels in kept)
    assert _fallbacks(loader) == 0
