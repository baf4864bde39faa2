"""Harder checks of the reused batch slots (loaders/ring.py): batches held in odd ways across
many passes and two loaders at once, storage moves, loaders closed while batches are held,
abandoned passes with a (simulated) pin thread, memory across short passes, and workers
started by spawn or forkserver."""

from __future__ import annotations

import gc
import os
import random
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as torch_mp

from loaders import make_loader, ring

from .datasets import expected_eval_images

SIZE = 16


def _expected(dataset, split):
    return expected_eval_images(dataset, split, SIZE)


def _wrong(images, keys, expected) -> list[str]:
    return [key for image, key in zip(images, keys)
            if not np.array_equal(image.permute(1, 2, 0).numpy(), expected[key])]


def _hold(images, how):
    """Keep only this (part of the) batch; returns (kept, snapshot)."""
    kept = {
        "tensor": lambda: images,
        "rows": lambda: images[1:],
        "channel": lambda: images[:, 2],
        "numpy": lambda: images.numpy(),
        "numpy slice": lambda: images.numpy()[:, :, 3:5],
        "memoryview": lambda: memoryview(images.permute(0, 2, 3, 1).numpy()),
        "storage": lambda: images.untyped_storage(),
        "detach": lambda: images.detach(),
        "dlpack": lambda: torch.from_dlpack(torch.utils.dlpack.to_dlpack(images)),
        "as_strided": lambda: images.as_strided((2, 3), (1, 1)),
    }[how]()
    return kept, bytes(kept) if isinstance(kept, (memoryview, torch.UntypedStorage)) else (
        kept.copy() if isinstance(kept, np.ndarray) else kept.clone())


def _unchanged(kept, snapshot) -> bool:
    if isinstance(kept, (memoryview, torch.UntypedStorage)):
        return bytes(kept) == snapshot
    if isinstance(kept, np.ndarray):
        return np.array_equal(kept, snapshot)
    return torch.equal(kept, snapshot)


HOLDS = ["tensor", "rows", "channel", "numpy", "numpy slice", "memoryview", "storage", "detach",
         "dlpack", "as_strided"]


@pytest.mark.parametrize("persistent", [False, True])
def test_batches_held_in_odd_ways_survive_many_passes_of_two_loaders(many, persistent):
    expected = _expected(many, "val")
    val = make_loader(many, "val", batch_size=2, num_workers=2, image_size=SIZE, keys=True,
                      persistent_workers=persistent)
    train = make_loader(many, "train", batch_size=2, num_workers=2, image_size=SIZE,
                        persistent_workers=persistent)
    rng = random.Random(persistent)
    held = []
    for epoch in range(6):
        abandon_at = rng.choice([None, None, 0, 2])
        train_batches, train_iterator, seen = 0, iter(train), 0
        for i, (images, labels, keys) in enumerate(val):
            assert not _wrong(images, keys, expected), (epoch, i)
            seen += len(keys)
            if rng.random() < 0.4:
                how = rng.choice(HOLDS)
                held.append(_hold(images, how) + (how, epoch, i))
            train_images, _ = next(train_iterator)  # the other loader, interleaved
            train_batches += 1
            if i % 2:
                held.append((train_images, train_images.clone(), "train, every other", epoch, i))
            if i == abandon_at:
                break
        if abandon_at is None:
            assert seen == len(expected)
            assert train_batches + sum(1 for _ in train_iterator) == len(train)
        del train_iterator
        rng.shuffle(held)
        del held[: rng.randint(0, 4)]
        gc.collect()
        for kept, snapshot, how, when, i in held:
            assert _unchanged(kept, snapshot), f"{how} of epoch {when} batch {i}, at epoch {epoch}"
    val.close()
    train.close()


def test_moving_a_batch_to_shared_memory_keeps_it_and_the_next_batches_intact(many):
    # torch.multiprocessing queues (and share_memory_) move a storage that is not already in
    # torch's shared memory. A ring batch is a view of a numpy array, so it moves: the
    # tensor must keep its pixels, its slot goes back, and later batches stay right.
    # (A numpy view taken *before* such a move dangles, as for any CPU tensor in torch:
    # documented in ring.py, not testable without crashing the test process.)
    expected = _expected(many, "val")
    loader = make_loader(many, "val", batch_size=2, num_workers=1, image_size=SIZE, keys=True,
                         persistent_workers=False, prefetch_factor=1)
    iterator = iter(loader)
    images, _, keys = next(iterator)
    images.share_memory_()
    assert images.is_shared()
    gc.collect()
    later = [(batch, batch_keys) for batch, _, batch_keys in iterator]
    assert not _wrong(images, keys, expected)
    assert all(not _wrong(batch, batch_keys, expected) for batch, batch_keys in later)


def test_closing_a_loader_forgets_its_workers_rings(many):
    loader = make_loader(many, "train", batch_size=2, num_workers=2, image_size=SIZE,
                         persistent_workers=True)
    for _ in loader:
        pass
    pids = {str(w.pid) for w in loader._iterator._workers}
    loader.close()
    gc.collect()
    # Otherwise every slot of every worker stays mapped in this process after the close.
    assert not [t for t in ring._received if t.split("-", 1)[0] in pids]


def test_an_abandoned_pass_with_a_slow_pin_thread_leaves_the_next_pass_intact(many, monkeypatch):
    # No GPU needed: an accelerator is pretended, and pinning is a slow copy, so the pin
    # thread lags the workers when the pass is abandoned.
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: None)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.accelerator, "set_device_index", lambda index: None)

    def slow_pin(tensor, device=None):
        time.sleep(0.02)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", slow_pin)
    expected = _expected(many, "val")
    loader = make_loader(many, "val", batch_size=2, num_workers=2, image_size=SIZE, keys=True,
                         persistent_workers=True, pin_memory=True)
    for epoch in range(4):
        for i, (images, labels, keys) in enumerate(loader):
            assert not _wrong(images, keys, expected), (epoch, i)
            if epoch % 2 == 0 and i == 1:
                break
    loader.close()


def test_memory_stays_flat_over_many_short_passes(many):
    loader = make_loader(many, "train", batch_size=2, num_workers=2, image_size=SIZE,
                         persistent_workers=True)

    def state():
        gc.collect()
        return ([w["rss_kb"] for w in loader.dataset.worker_stats()],
                len(os.listdir("/proc/self/fd")))

    for epoch in range(80):
        for i, _ in enumerate(loader):
            if i == epoch % 3:
                break
        if epoch == 10:
            rss_before, fds_before = state()
    rss_after, fds_after = state()
    assert all(after - before < 8_000 for before, after in zip(rss_before, rss_after))
    assert fds_after <= fds_before + 4
    loader.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_started_without_fork_use_the_ring(many, method):
    # forkserver is the default start method from Python 3.14 on Linux. The stream's shared
    # counters are made with the default context, so the default is what changes here.
    expected = _expected(many, "val")
    previous = torch_mp.get_start_method()
    torch_mp.set_start_method(method, force=True)
    try:
        loader = make_loader(many, "val", batch_size=2, num_workers=2, image_size=SIZE,
                             keys=True, persistent_workers=True)
    finally:
        torch_mp.set_start_method(previous, force=True)
    loader.multiprocessing_context = torch_mp.get_context(method)
    kept = []
    for _ in range(2):
        for images, labels, keys in loader:
            assert not _wrong(images, keys, expected)
            kept.append((images, keys))
    assert all(not _wrong(images, keys, expected) for images, keys in kept)
    loader.close()
