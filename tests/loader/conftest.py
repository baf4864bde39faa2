"""Datasets shared by the loader tests (built once per session by the real build)."""

from __future__ import annotations

import pytest

from .datasets import build_dataset


@pytest.fixture(scope="session")
def uneven(tmp_path_factory):
    """train: shards of 10, 10 and 4 samples."""
    return build_dataset(tmp_path_factory.mktemp("uneven"), 24, {"train": 1.0}, 10, seed=1)


@pytest.fixture(scope="session")
def many(tmp_path_factory):
    """train and val, about 30 samples each in shards of 4."""
    return build_dataset(tmp_path_factory.mktemp("many"), 60, {"train": 0.5, "val": 0.5}, 4, seed=2)


@pytest.fixture(scope="session")
def single(tmp_path_factory):
    """train and val of one shard each."""
    return build_dataset(tmp_path_factory.mktemp("single"), 24, {"train": 0.5, "val": 0.5}, 100,
                         seed=3)
