"""Peak memory of a build as the number of records grows (tiny cached images).

    python benchmarks/build_memory.py [--sizes 50000 100000 200000]

Each size is built in a fresh subprocess from a full cache; the figure is that process's
peak resident memory (ru_maxrss), worker processes reported separately. Target: under
1 GiB at 200k records, and flat as records grow: what grows is only the compact
per-record index, not images or ledger rows.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_cache(folder: Path, count: int) -> list[str]:
    """`count` distinct 24x24 noise JPEGs (never blank, never equal) in md5(url).jpg files."""
    from PIL import Image

    from shardtools.cache import ImageCache

    cache = ImageCache(folder)
    rng = random.Random(0)
    urls = []
    for i in range(count):
        url = f"http://photos.invalid/m/{i}.jpg"
        image = Image.frombytes("RGB", (24, 24), rng.randbytes(24 * 24 * 3))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        (folder / cache.path_for(url).name).write_bytes(buffer.getvalue())
        urls.append(url)
    return urls


def build_child(work: str, count: int, processes: int) -> None:
    """Runs in the subprocess: build the first `count` records, print peak memory."""
    from shardtools.build import run_build
    from shardtools.config import config_from_dict

    work = Path(work)
    records = work / f"records-{count}.jsonl"
    with open(work / "records-all.jsonl") as source, open(records, "w") as out:
        for _, line in zip(range(count), source):
            out.write(line)
    settings = config_from_dict({"build": {
        "records": [records.name], "cache_dir": "cache", "output_dir": f"dataset-{count}",
        "shard_max_samples": 5000, "image": {"size": 24, "min_side": 8, "processes": processes},
        "fetch": {"threads": 8},
    }}, base_dir=work).build
    started = time.perf_counter()
    summary = run_build(settings)
    elapsed = time.perf_counter() - started
    assert summary.new_samples == count, (summary.new_samples, count)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"records": count, "peak_mb": own, "worker_peak_mb": children,
                      "seconds": elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    parser.add_argument("--processes", type=int, default=0,
                        help="image.processes for the builds (0: decode in the build process)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build_child(args.child[0], int(args.child[1]), args.processes)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        largest = max(args.sizes)
        started = time.perf_counter()
        urls = make_cache(work / "cache", largest)
        with open(work / "records-all.jsonl", "w") as stream:
            for i, url in enumerate(urls):
                stream.write(json.dumps({"image_url": url, "taxon_id": i % 5000,
                                         "observation_id": i // 2}) + "\n")
        print(f"made {largest:,} cached images in {time.perf_counter() - started:.0f} s")
        rows = []
        for count in sorted(args.sizes):
            out = subprocess.run([sys.executable, __file__, "--child", str(work), str(count),
                                  "--processes", str(args.processes)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['records']:>8,} records: peak {row['peak_mb']:,.0f} MB "
                  f"(workers {row['worker_peak_mb']:,.0f} MB), {row['seconds']:.0f} s, "
                  f"{row['records'] / row['seconds']:,.0f} records/s")
            shutil.rmtree(work / f"dataset-{count}", ignore_errors=True)
        first, last = rows[0], rows[-1]
        per_record = (last["peak_mb"] - first["peak_mb"]) * 1024 * 1024 / max(1, last["records"] - first["records"])
        print(f"growth: {per_record:,.0f} bytes per extra record; peak at {last['records']:,}: "
              f"{last['peak_mb']:,.0f} MB (target < 1024 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
