"""Shared builders for tests: real-photo images, records files, configs, a loopback host."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from shardtools.config import config_from_dict

PHOTOS = sorted((Path(__file__).parent.parent / "shardtools" / "demo" / "photos").glob("*.jpg"))


def photo_variants(count: int, seed: int = 0, max_side: int = 200) -> list[bytes]:
    """`count` distinct JPEGs cut from the shipped photos (different crops, never equal)."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in PHOTOS]
    out = []
    for i in range(count):
        source = sources[i % len(sources)]
        w, h = source.size
        cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = source.crop((left, top, left + cw, top + ch))
        crop.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as stream:
        for row in rows:
            stream.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def cached_records(root: Path, prefix: str, count: int, seed: int, label_of=lambda i: i % 2,
                   records: str = "records.jsonl") -> list[str]:
    """`count` real-photo images in root/cache under http://images.invalid/PREFIX/N.jpg,
    and a records file naming them (observation id = URL). Returns the URLs."""
    from shardtools.cache import ImageCache

    urls = [f"http://images.invalid/{prefix}/{i}.jpg" for i in range(count)]
    cache = ImageCache(root / "cache")
    for url, data in zip(urls, photo_variants(count, seed=seed)):
        cache.store(url, data)
    write_jsonl(root / records, [{"image_url": u, "taxon_id": label_of(i), "observation_id": u}
                                 for i, u in enumerate(urls)])
    return urls


def hosted_records(root: Path, host, prefix: str, count: int, seed: int) -> list[str]:
    """`count` real-photo images served by `host` under /PREFIX/N.jpg, and a records file
    naming them. Returns the URLs."""
    urls = []
    for i, data in enumerate(photo_variants(count, seed=seed)):
        host.add(f"/{prefix}/{i}.jpg", data)
        urls.append(host.url(f"/{prefix}/{i}.jpg"))
    write_jsonl(root / "records.jsonl",
                [{"image_url": u, "taxon_id": i % 3, "observation_id": f"obs-{i}"}
                 for i, u in enumerate(urls)])
    return urls


def build_settings(tmp_path: Path, records="records.jsonl", **overrides):
    """BuildSettings for a dataset under tmp_path, through the public config path."""
    fetch = {"threads": 4, "requests_per_second": 1000, "burst": 50, "timeout_s": 5,
             "backoff_schedule_s": [60, 120, 300, 600], "max_backoff_s": 600,
             **overrides.pop("fetch", {})}
    build = {
        "records": [records] if isinstance(records, str) else records,
        "url_field": "image_url", "label_field": "taxon_id", "group_field": "observation_id",
        "cache_dir": "cache", "output_dir": "dataset",
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2}, "split_salt": "test",
        # processes 0: decode in the build's threads; a pool per test costs seconds.
        "shard_max_samples": 8, "image": {"size": 64, "processes": 0, **overrides.pop("image", {})},
        "fetch": fetch, **overrides,
    }
    return config_from_dict({"build": build}, base_dir=tmp_path).build


@pytest.fixture(autouse=True, scope="session")
def _no_proxies():
    """Loopback traffic must not be sent to a proxy a CI machine may have configured."""
    import os

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().endswith("_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield
    os.environ.pop("NO_PROXY", None)
    os.environ.pop("no_proxy", None)
    os.environ.update(saved)


@pytest.fixture
def image_host():
    from shardtools.imagehost import ImageHost

    with ImageHost() as host:
        yield host
