"""Small datasets for loader tests, built by the real build from cached photo crops."""

from __future__ import annotations

import json
import tarfile

import numpy as np
from pathlib import Path

from conftest import build_settings, photo_variants, write_jsonl
from shardtools.build import run_build
from shardtools.cache import ImageCache


def build_dataset(root: Path, count: int, splits: dict, shard_max_samples: int,
                  seed: int = 0, classes: int = 4) -> Path:
    """Build `count` samples into root/dataset; every record its own observation."""
    urls = [f"http://images.invalid/{root.name}/{i}.jpg" for i in range(count)]
    cache = ImageCache(root / "cache")
    for url, data in zip(urls, photo_variants(count, seed=seed, max_side=96)):
        cache.store(url, data)
    write_jsonl(root / "records.jsonl", [{"image_url": u, "taxon_id": i % classes,
                                          "observation_id": u} for i, u in enumerate(urls)])
    settings = build_settings(root, splits=splits, shard_max_samples=shard_max_samples,
                              image={"size": 40})
    run_build(settings)
    return root / "dataset"


def manifest(dataset: Path) -> dict:
    return json.loads((dataset / "manifest.json").read_text())


def shards(dataset: Path, split: str) -> list[dict]:
    return manifest(dataset)["splits"][split]["shards"]


def members(dataset: Path, split: str, extension: str):
    """(key, bytes, shard name) of every member with this extension in a split's listed tars,
    read with the standard library."""
    for shard in shards(dataset, split):
        with tarfile.open(dataset / shard["name"]) as tar:
            for member in tar:
                key, _, found = member.name.partition(".")
                if found == extension:
                    yield key, tar.extractfile(member).read(), shard["name"]


def truth(dataset: Path, split: str) -> dict[str, tuple[int, str]]:
    """key -> (class, shard name)."""
    return {key: (int(data), name) for key, data, name in members(dataset, split, "cls")}


def expected_eval_images(dataset: Path, split: str, size: int) -> dict:
    """key -> the centre crop (HWC uint8), computed in the test process from the tar's bytes."""
    from loaders import transforms

    out = {}
    for key, data, _ in members(dataset, split, "jpg"):
        image = np.empty((size, size, 3), dtype=np.uint8)
        transforms.eval_into(image, data, size)
        out[key] = image
    return out
