"""Build speed, side by side in one run, on the same real-photo records all in the cache.

    python benchmarks/build.py [--images 2000] [--skip-peer]

(a) this build (shardtools.build.run_build) from a full md5(url).jpg cache;
(b) img2dataset 1.47 (output_format webdataset, image_size 256, processes 2, encode
    quality 90) fetching the same images from a loopback HTTP server, since it cannot
    read a local cache; it runs from its own virtual environment, which this script sets
    up under benchmarks/.venv-img2dataset (skipped with a message when that fails);
(c) the limit: one process per core that decodes, resizes and encodes each image with
    the same settings and nothing else.
Targets: (a) >= 2 x (b) and (a) >= 0.7 x (c). Figures are images per second.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.photos import derived_photos  # noqa: E402
from shardtools.build import run_build  # noqa: E402
from shardtools.cache import ImageCache  # noqa: E402
from shardtools.config import config_from_dict  # noqa: E402

PEER_VENV = REPO / "benchmarks" / ".venv-img2dataset"
PEER_SPEC = "img2dataset==1.47.0"
SIZE, QUALITY = 256, 90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=os.cpu_count(),
                        help="this build's image.processes (default: one per core)")
    parser.add_argument("--skip-peer", action="store_true", help="do not run img2dataset")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        images = derived_photos(args.images)
        print(f"{len(images)} real-photo images (~{sum(map(len, images)) / len(images) / 1e3:.0f} KB "
              f"each, up to 640 px) on {os.cpu_count()} cores")
        results = {}
        results["limit"] = _limit(images)
        results["this build"] = _this_build(work, images, args.processes)
        if args.skip_peer:
            print("img2dataset: skipped (--skip-peer)")
        else:
            results["img2dataset"] = _peer(work, images)
        _report(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- (a) this build ---------------------------------------------------------------------

def _this_build(work: Path, images: list[bytes], processes: int) -> float:
    urls = [f"http://photos.invalid/b/{i}.jpg" for i in range(len(images))]
    cache = ImageCache(work / "cache")
    for url, data in zip(urls, images):
        cache.store(url, data)
    with open(work / "records.jsonl", "w") as stream:
        for i, url in enumerate(urls):
            stream.write(json.dumps({"image_url": url, "taxon_id": i % 50}) + "\n")
    settings = config_from_dict({"build": {
        "records": ["records.jsonl"], "cache_dir": "cache", "output_dir": "dataset",
        "image": {"size": SIZE, "quality": QUALITY, "processes": processes},
        "fetch": {"threads": int(os.environ.get("BENCH_THREADS", 16))},
    }}, base_dir=work).build
    started = time.perf_counter()
    summary = run_build(settings)
    elapsed = time.perf_counter() - started
    assert summary.new_samples == len(images), summary
    rate = len(images) / elapsed
    print(f"this build: {len(images)} images in {elapsed:.1f} s = {rate:,.0f} images/s "
          f"(image.processes={processes})")
    return rate


# --- (c) the limit -----------------------------------------------------------------------

def _transcode(data: bytes) -> int:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (SIZE, SIZE))
    image = image.convert("RGB")
    scale = SIZE / min(image.size)
    if scale < 1:
        # The build's default filter (image.resample: bilinear), antialiased like it.
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, subsampling="4:2:0", optimize=False)  # as the build
    return out.tell()


def _limit(images: list[bytes]) -> float:
    processes = os.cpu_count()
    with get_context("spawn").Pool(processes) as pool:
        pool.map(_transcode, images[:processes * 4])  # warm the workers
        started = time.perf_counter()
        pool.map(_transcode, images, chunksize=16)
        elapsed = time.perf_counter() - started
    rate = len(images) / elapsed
    print(f"limit: decode+resize+encode only, {processes} processes: {rate:,.0f} images/s")
    return rate


# --- (b) img2dataset ---------------------------------------------------------------------

def _peer(work: Path, images: list[bytes]) -> float | None:
    python = _peer_python()
    if python is None:
        return None
    from shardtools.imagehost import ImageHost

    with ImageHost() as host:
        urls = []
        for i, data in enumerate(images):
            host.add(f"/p/{i}.jpg", data)
            urls.append(host.url(f"/p/{i}.jpg"))
        (work / "urls.txt").write_text("\n".join(urls) + "\n")
        out = work / "img2dataset"
        command = [str(python.parent / "img2dataset"), "--url_list", str(work / "urls.txt"),
                   "--output_folder", str(out), "--output_format", "webdataset",
                   "--image_size", str(SIZE), "--processes_count", "2", "--thread_count", "32",
                   "--encode_quality", str(QUALITY), "--resize_mode", "keep_ratio",
                   "--resize_only_if_bigger", "True", "--enable_wandb", "False"]
        started = time.perf_counter()
        # Its albumentations dependency asks PyPI for updates at import unless told not to.
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
        result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        print(f"img2dataset: failed (exit {result.returncode}); last output:\n{result.stderr[-2000:]}")
        return None
    written = 0
    for stats in out.glob("*_stats.json"):
        written += json.loads(stats.read_text()).get("successes", 0)
    rate = written / elapsed
    print(f"img2dataset {PEER_SPEC.split('==')[1]}: {written} images in {elapsed:.1f} s = "
          f"{rate:,.0f} images/s (from loopback, processes 2)")
    return rate


def _peer_python() -> Path | None:
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"setting up {PEER_VENV} with {PEER_SPEC} (once)...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_SPEC], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        print(f"img2dataset: skipped, its environment could not be set up "
              f"({(exc.stderr or '').strip()[-500:]})")
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        return None
    return python


def _report(results: dict) -> None:
    this, limit, peer = results["this build"], results["limit"], results.get("img2dataset")
    print("\nimages/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in results.items() if v))
    print(f"this build / limit = {this / limit:.2f} (target >= 0.70)")
    if peer:
        print(f"this build / img2dataset = {this / peer:.2f} (target >= 2.00)")


if __name__ == "__main__":
    main()
