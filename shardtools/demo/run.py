"""The built-in demo: the whole job, end to end, on real photos, in under a minute.

1. Makes a few hundred records over six classes from the photos shipped beside this file
   (random crops of each photo; some observations hold several photos), plus a few bad
   records on purpose: a malformed line, a repeated URL with another label, a URL that
   does not exist, an HTML page where an image should be, a blank image.
2. Puts most images in a download cache (md5(url).jpg) and serves the rest from a
   throttling image host on 127.0.0.1 that answers 429 with Retry-After.
3. Builds: what the cache has is written, the host rate-limits, its records wait as pending.
4. The host relents; a second build fetches the pending records and appends new shards.
5. Trains a small CNN for a few steps from the shards, with no network at all.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import textwrap
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).with_name("photos")
CROPS_PER_PHOTO = 50
CACHED_FRACTION = 0.7
HOST_RATE = 15          # requests per second the demo host allows
HOST_RETRY_AFTER_S = 2  # what it says in Retry-After; stands for minutes on a real host


def run_demo(workdir: str | Path, train_steps: int = 60, log=print) -> int:
    from ..build import run_build
    from ..config import load_config
    from ..imagehost import ImageHost
    from ..report import format_summary
    from ..status import dataset_status, format_status

    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data").mkdir(parents=True)
    rng = random.Random(7)

    with ImageHost() as host:
        log(_step(1, "Making demo records from the shipped photos"))
        records, cache_count = _make_dataset(workdir, host, rng)
        log(f"   {len(records) + 1} records (one of them malformed on purpose) over {len(list(PHOTOS.glob('*.jpg')))} classes; "
            f"{cache_count} images already in the cache ({workdir / 'image_cache'}),\n"
            f"   the rest on a demo image host at {host.base_url} that allows {HOST_RATE} "
            f"requests/s and answers 429 (Retry-After: {HOST_RETRY_AFTER_S}) beyond that.")

        config_path = _write_config(workdir, train_steps)
        config = load_config(config_path)
        host.throttle(HOST_RATE, burst=5, retry_after=HOST_RETRY_AFTER_S)

        log(_step(2, f"First build: shardtools build --config {config_path}"))
        first = run_build(config.build)
        log(textwrap.indent(format_summary(first), "   "))
        answers = "answer" if host.count_429 == 1 else "answers"
        log(f"   The host rate-limited us ({host.count_429} {answers} of 429). Nothing was faked: "
            f"the {first.pending_records} records it could not serve yet wait as pending.")

        host.relent()
        log(_step(3, "The host relents; second build over the same records"))
        second = run_build(config.build)
        log(textwrap.indent(format_summary(second), "   "))
        log(f"   New shards were appended; the {len(first.new_shards)} shards of the first build "
            "were not touched.")

    log(_step(4, f"Dataset status: shardtools status {config.build.output_dir}"))
    log(textwrap.indent(format_status(dataset_status(config.build.output_dir)), "   "))

    log(_step(5, f"Training from the shards: python -m loaders.train --config {config_path}"))
    log("   (the image host is stopped now: training reads shards only)")
    from loaders.train import train

    from ..dataset import read_manifest

    figures = train(config.train, read_manifest(config.train.dataset)["num_classes"],
                    log=lambda line: log("   " + line))
    chance = 1 / 6
    log(_step(6, "Done"))
    log(f"   val accuracy {figures['val_accuracy']:.1%} (chance would be {chance:.0%}). "
        f"Everything is in {workdir}:\n"
        f"   records in data/, the cache in image_cache/, shards, manifest.json, classes.json\n"
        f"   and ledger.jsonl (the fate of every record) in dataset/.")
    return 0 if second.pending_records == 0 else 1


def _step(number: int, text: str) -> str:
    return f"\n[{number}] {text}"


def _make_dataset(workdir: Path, host, rng: random.Random) -> tuple[list[dict], int]:
    from ..cache import ImageCache

    (workdir / "image_cache").mkdir()  # the user's existing cache, in a real build
    cache = ImageCache(workdir / "image_cache")
    records = []
    cache_count = 0
    photos = sorted(PHOTOS.glob("*.jpg"))
    observation = 0
    for class_index, photo in enumerate(photos):
        with Image.open(photo) as source:
            source = source.convert("RGB")
            remaining_in_observation = 0
            for n in range(CROPS_PER_PHOTO):
                if remaining_in_observation == 0:
                    observation += 1
                    remaining_in_observation = rng.choice((1, 1, 2, 3))
                remaining_in_observation -= 1
                path = f"/photos/{photo.stem}/{n:03d}.jpg"
                url = host.url(path)
                data = _derived_crop(source, rng)
                if rng.random() < CACHED_FRACTION:
                    cache.store(url, data)
                    cache_count += 1
                else:
                    host.add(path, data)
                records.append({"observation_id": f"obs-{observation:04d}", "image_url": url,
                                "taxon_id": 1000 + class_index, "common_name": photo.stem})

    # Repeated URLs: the same photo listed by two records; two of them disagree on the label.
    for i, original in enumerate(rng.sample(records, 8)):
        repeat = dict(original)
        if i < 2:
            repeat["taxon_id"] = 1000 + (repeat["taxon_id"] - 999) % len(photos)
        records.append(repeat)
    # A blank placeholder in the cache, an HTML page and a missing image on the host.
    blank_url = host.url("/photos/placeholder.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (0, 0, 0)).save(buffer, "JPEG")
    cache.store(blank_url, buffer.getvalue())
    host.add("/photos/login.jpg", b"<html><body>Please log in</body></html>", content_type="text/html")
    records += [
        {"observation_id": "obs-9001", "image_url": blank_url, "taxon_id": 1000},
        {"observation_id": "obs-9002", "image_url": host.url("/photos/login.jpg"), "taxon_id": 1001},
        {"observation_id": "obs-9003", "image_url": host.url("/photos/gone.jpg"), "taxon_id": 1002},
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(len(lines) // 2, '{"observation_id": "obs-9004", "image_url": ')  # cut off
    (workdir / "data" / "observations.jsonl").write_text("\n".join(lines) + "\n")
    return records, cache_count


def _derived_crop(source: Image.Image, rng: random.Random) -> bytes:
    width, height = source.size
    scale = rng.uniform(0.45, 0.85)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = source.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    crop.thumbnail((400, 400))
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _write_config(workdir: Path, train_steps: int) -> Path:
    path = workdir / "demo.yaml"
    path.write_text(textwrap.dedent(f"""\
        # Written by `shardtools demo`. Paths are relative to this file.
        build:
          records: [data/observations.jsonl]
          url_field: image_url
          label_field: taxon_id
          group_field: observation_id
          cache_dir: image_cache
          output_dir: dataset
          splits: {{train: 0.8, val: 0.1, test: 0.1}}
          split_salt: "demo"
          shard_max_samples: 64
          image: {{resize: shorter_side, size: 128, quality: 90}}
          # The demo's time scale is seconds: on a real host use the defaults
          # (backoff 60, 120, 300, 600 s) and a rate the host publishes.
          fetch: {{threads: 8, requests_per_second: 40, timeout_s: 5,
                  backoff_schedule_s: [1, 2, 4], max_backoff_s: 4,
                  contact: "shardtools demo"}}
        train:
          dataset: dataset
          batch_size: 32
          num_workers: 2
          image_size: 96
          max_steps: {train_steps}
          learning_rate: 0.05
          shuffle_buffer: 200
        """))
    return path
