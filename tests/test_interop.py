"""The shards read with webdataset alone, with wids through the build's shard index, and
with Hugging Face datasets' webdataset loader."""

from __future__ import annotations

import json
import os

import pytest

# datasets must not look for anything on the Hub: the loader here is its packaged one.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import build_settings, cached_records
from shardtools.build import run_build
from shardtools.cache import url_key


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    urls = cached_records(root, "i", 20, seed=8)
    run_build(build_settings(root, splits={"train": 0.5, "val": 0.5}, shard_max_samples=4))
    return root / "dataset", {url_key(u): str(i % 2) for i, u in enumerate(urls)}


def _classes(dataset_dir):
    data = json.loads((dataset_dir / "classes.json").read_text())
    return {c["id"]: c["label"] for c in data["classes"]}


def test_wids_reads_every_sample_through_the_shard_index(dataset):
    wids = pytest.importorskip("wids")
    dataset_dir, labels = dataset
    classes = _classes(dataset_dir)
    seen = {}
    for split in ("train", "val"):
        index = dataset_dir / f"{split}.wids.json"
        ds = wids.ShardListDataset(str(index), transformations=[])
        manifest = json.loads((dataset_dir / "manifest.json").read_text())
        assert len(ds) == manifest["splits"][split]["num_samples"]
        for i in range(len(ds)):
            sample = ds[i]
            key = sample["__key__"]
            seen[key] = classes[int(sample[".cls"].read())]
            assert sample[".jpg"].read()[:3] == b"\xff\xd8\xff"
        ds.close()
    assert seen == labels


def test_hugging_face_datasets_reads_the_shards(dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset_dir, labels = dataset
    classes = _classes(dataset_dir)
    files = sorted(str(p) for p in (dataset_dir / "train").glob("*.tar"))
    loaded = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert len(loaded) == manifest["splits"]["train"]["num_samples"]
    for row in loaded:
        assert classes[int(row["cls"])] == labels[row["__key__"]]
        assert row["jpg"].size[0] > 0  # decoded to a PIL image
        assert row["json"]["url"].startswith("http://images.invalid/")
