"""The loader streams a built dataset: every val sample once, train shuffled, no network."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from conftest import build_settings, cached_records
from loaders import make_loader
from shardtools.build import run_build


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    cached_records(root, "l", 72, seed=21, label_of=lambda i: i % 4)
    settings = build_settings(root, splits={"train": 0.5, "val": 0.3, "test": 0.2},
                              shard_max_samples=6)
    run_build(settings)
    return root / "dataset"


def _labels_by_key(dataset, split):
    """Ground truth from the shard index: the class of every sample of a split."""
    truth = []
    for line in (dataset / "shard_index.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["split"] == split:
            truth += [class_id for _, class_id, _ in entry["samples"]]
    return sorted(truth)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_splits_yield_every_sample_exactly_once(dataset, split, num_workers):
    loader = make_loader(dataset, split, batch_size=4, num_workers=num_workers, image_size=32)
    labels = []
    batches = 0
    for images, batch_labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        labels += batch_labels.tolist()
        batches += 1
    assert sorted(labels) == _labels_by_key(dataset, split)
    assert batches == len(loader)


def test_eval_order_is_fixed(dataset):
    def run():
        loader = make_loader(dataset, "val", batch_size=5, num_workers=2, image_size=16)
        return [b[0].sum().item() for b in loader]

    assert run() == run()


def _train_fingerprint(dataset, epoch, seed=0, num_workers=2):
    loader = make_loader(dataset, "train", batch_size=4, num_workers=num_workers, image_size=16,
                         seed=seed, shuffle_buffer=8)
    loader.dataset.set_epoch(epoch)
    return [tuple(labels.tolist()) for _, labels in loader]


def test_train_shuffles_per_epoch_and_repeats_for_the_same_seed(dataset):
    epoch0 = _train_fingerprint(dataset, 0)
    assert epoch0 == _train_fingerprint(dataset, 0)
    assert epoch0 != _train_fingerprint(dataset, 1)
    assert len(epoch0) == sum(1 for _ in _train_fingerprint(dataset, 1))


def test_train_batches_are_full_and_counted_from_the_manifest(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    total = manifest["splits"]["train"]["num_samples"]
    loader = make_loader(dataset, "train", batch_size=4, num_workers=2, image_size=16)
    sizes = [len(labels) for _, labels in loader]
    assert sizes == [4] * (total // 4) == [4] * len(loader)


def test_loader_never_opens_a_socket(dataset, monkeypatch):
    """IP sockets are blocked in this process and (fork) its workers while batches stream.
    Unix-domain sockets stay allowed: torch passes shared-memory handles between workers
    and the main process through them."""
    real_connect = socket.socket.connect

    def connect_local_only(sock, address):
        if sock.family != socket.AF_UNIX:
            raise AssertionError(f"the loader tried to use the network: {address!r}")
        return real_connect(sock, address)

    def refuse(*args, **kwargs):
        raise AssertionError("the loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", connect_local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for split in ("train", "val"):
        loader = make_loader(dataset, split, batch_size=4, num_workers=2, image_size=16)
        assert sum(len(labels) for _, labels in loader) > 0
