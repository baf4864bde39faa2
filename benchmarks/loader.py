"""Loader throughput, side by side on the same shards: `python benchmarks/loader.py`.

Builds (once, under --workdir) a dataset from crops of real photos through shardtools'
own build, from a md5(url).jpg cache this script fills, then measures samples per second:

  (a) loaders.make_loader, with 1 and 2 workers; also on its general path (whole-image
      decode + torch resize, the region decoder switched off), to show what each part buys;
  (b) a plain WebDataset pipeline written the usual way (.decode("pil"), PIL crop/resize
      and flip, float tensor), same workers;
  (c) the predecessor's way: a map-style Dataset over the JSONL and the cache files at
      their original size, PIL decode and resize every step, same workers;
  (d) the decode floor: one process that only decodes each whole stored JPEG, with each
      decoder installed (Pillow, simplejpeg, and the region decoder's libjpeg-turbo); the
      fastest is the floor. For context, also as many decode-only processes at once as
      the most workers measured: what each busy core of this machine gives.

Rates are steady state: every pipeline runs with persistent workers, one warm-up epoch is
not timed, then epochs are timed, each from the moment every worker has delivered its
first batch, for at least 2 s in all. Peak memory is each worker's
VmHWM. Every pipeline is measured --rounds times, the rounds interleaved so that a slow
spell of a shared machine hits all of them alike, and the table shows each one's median. It prints the table and the ratios; it asserts nothing.
`--profile` runs pyinstrument over (a) in the main process instead.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.photos import derived_photos, photo_paths  # noqa: E402
from loaders import make_loader  # noqa: E402
from loaders import transforms as loader_transforms  # noqa: E402
from shardtools.build import run_build  # noqa: E402
from shardtools.cache import ImageCache  # noqa: E402
from shardtools.config import config_from_dict  # noqa: E402


BUILD_VERSION = 2  # bump when build() changes what it makes


def photo_dir() -> Path:
    return photo_paths()[0].parent


# --- the dataset ------------------------------------------------------------------------

def build(workdir: Path, samples: int, stored_size: int, classes: int) -> Path:
    dataset = workdir / "dataset"
    # Reused only if built from the same photos with the same settings by this script.
    photos = [p.name for p in photo_paths()]
    recipe = hashlib.sha256(json.dumps([BUILD_VERSION, samples, stored_size, classes, str(photo_dir()),
                                        photos]).encode()).hexdigest()[:12]
    marker = workdir / f"built-{recipe}"
    if marker.exists():
        return dataset
    if dataset.exists() or (workdir / "cache").exists():  # another recipe's: start afresh
        shutil.rmtree(dataset, ignore_errors=True)
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        for old in workdir.glob("built-*"):
            old.unlink()
    (workdir / "cache").mkdir(parents=True)  # this script fills it: nothing is downloaded
    cache = ImageCache(workdir / "cache")
    records = []
    # Distinct crops of real photos at the originals' ~640 px, as for the build benchmark.
    for i, data in enumerate(derived_photos(samples)):
        url = f"http://photos.invalid/bench/{i}.jpg"
        cache.store(url, data)
        records.append({"image_url": url, "taxon_id": i % classes, "observation_id": i})
    with open(workdir / "records.jsonl", "w") as stream:
        stream.writelines(json.dumps(r) + "\n" for r in records)
    settings = config_from_dict({"build": {
        "records": ["records.jsonl"], "cache_dir": "cache", "output_dir": "dataset",
        "url_field": "image_url", "label_field": "taxon_id", "group_field": "observation_id",
        "splits": {"train": 1.0}, "shard_max_samples": 250,
        "image": {"size": stored_size, "resize": "shorter_side", "quality": 90},
        "fetch": {"requests_per_second": 1000, "burst": 50}}}, base_dir=workdir).build
    run_build(settings)
    marker.touch()
    return dataset


def shard_urls(dataset: Path) -> list[str]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return [str(dataset / s["name"]) for s in manifest["splits"]["train"]["shards"]]


# --- (b) and (c): the usual ways, in PIL ------------------------------------------------

def pil_random_resized_crop(image: Image.Image, size: int, rng=random) -> Image.Image:
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(0.25, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            left, top = rng.randint(0, width - cw), rng.randint(0, height - ch)
            image = image.crop((left, top, left + cw, top + ch))
            break
    image = image.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    # What ToTensor does: HWC uint8 -> CHW float in [0, 1].
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def webdataset_loader(urls, batch_size, workers, size):
    import webdataset as wds

    pipeline = (wds.WebDataset(urls, shardshuffle=len(urls), workersplitter=wds.split_by_worker,
                               nodesplitter=wds.split_by_node, empty_check=False)
                .shuffle(1000).decode("pil").to_tuple("jpg", "cls")
                .map_tuple(lambda im: pil_to_tensor(pil_random_resized_crop(im, size)), int)
                .batched(batch_size, partial=False))
    return DataLoader(pipeline, batch_size=None, num_workers=workers,
                      persistent_workers=workers > 0)


class CacheDataset(Dataset):
    """The predecessor: JSONL records, md5(url).jpg files, decode and resize every step."""

    def __init__(self, records_path: Path, cache: ImageCache, size: int):
        self.records = [json.loads(line) for line in open(records_path)]
        self.cache = cache
        self.size = size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = Image.open(self.cache.path_for(record["image_url"])).convert("RGB")
        return pil_to_tensor(pil_random_resized_crop(image, self.size)), record["taxon_id"]


def predecessor_loader(workdir, batch_size, workers, size):
    dataset = CacheDataset(workdir / "records.jsonl", ImageCache(workdir / "cache"), size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0)


# --- measuring --------------------------------------------------------------------------

def worker_peaks_mb(iterator, peaks: dict) -> dict:
    """Update {pid: peak MB} with the live workers' VmHWM."""
    for worker in getattr(iterator, "_workers", []):
        try:
            with open(f"/proc/{worker.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                        peaks[worker.pid] = max(peak, peaks.get(worker.pid, 0))
        except OSError:
            pass  # already gone
    return peaks


def measure(loader, min_seconds: float = 2.0) -> tuple[float, list[float]]:
    """Samples per second in steady state, after one warm-up epoch, for at least
    `min_seconds` of timed batches.

    As in training with persistent workers and long epochs: worker start-up, the first
    shard opens and cold caches fall in the warm-up epoch. In each timed epoch the clock
    starts once every worker has delivered its first batch, so the pipeline refilling at
    an epoch's start (which a 2,000-sample epoch would pay out of all proportion to a
    real one) is not counted; the samples of those first batches are not counted either.
    """
    peaks: dict = {}
    iterator = iter(loader)
    for _ in iterator:
        worker_peaks_mb(iterator, peaks)
    refill = max(1, getattr(loader, "num_workers", 0))
    timed, count = 0.0, 0
    while count == 0 or timed < min_seconds:
        iterator = iter(loader)
        started = None
        for index, batch in enumerate(iterator):
            if index + 1 == refill:
                started = time.perf_counter()
            elif started is not None:
                count += len(batch[1])
            worker_peaks_mb(iterator, peaks)
        if started is not None:
            timed += time.perf_counter() - started
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown:
        shutdown()
    return count / timed, list(peaks.values())


def stored_jpegs(dataset: Path) -> list[bytes]:
    out = []
    for url in shard_urls(dataset):
        with tarfile.open(url) as tar:
            out += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    return out


def _pil_decode(data):
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def whole_image_decoders() -> dict:
    decoders = {"pillow": _pil_decode}
    if loader_transforms.simplejpeg is not None:
        decoders["simplejpeg"] = loader_transforms.simplejpeg.decode_jpeg
    if loader_transforms._cropdecode is not None:
        decoders["region decoder, whole image"] = loader_transforms._cropdecode.decode_whole
    return decoders


def decode_rate(decode, jpegs: list[bytes]) -> float:
    started = time.perf_counter()
    for data in jpegs:
        decode(data)
    return len(jpegs) / (time.perf_counter() - started)


def decode_floor(jpegs: list[bytes]) -> dict[str, float]:
    return {name: decode_rate(decode, jpegs) for name, decode in whole_image_decoders().items()}


def _decode_in_child(name, jpegs, start, results):
    start.wait()
    results.put(decode_rate(whole_image_decoders()[name], jpegs))


def parallel_decode_rate(name: str, jpegs: list[bytes], processes: int) -> float:
    """Per-process rate of `processes` decode-only processes running at once: what the
    machine gives each of that many busy cores (shared caches, memory, the neighbours)."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=_decode_in_child, args=(name, jpegs, start, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    start.set()
    rates = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(timeout=60)
    return statistics.mean(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--stored-size", type=int, default=256, help="build image.size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--workdir", default=str(REPO / "benchmarks" / ".work" / "loader"),
                        help="where the dataset is built once and reused (default: in the checkout)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in DataLoader workers; the main process only receives
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset = build(workdir, args.samples, args.stored_size, classes=50)
    print(f"dataset: {args.samples} samples from {photo_dir()} (built/reused in "
          f"{time.perf_counter() - started:.1f} s), stored shorter side {args.stored_size}, "
          f"training size {args.image_size}, batch {args.batch_size}; decoder in the loader: "
          f"{loader_transforms.decoder_name()}; {os.cpu_count()} CPUs")

    def ours(workers):
        return make_loader(dataset, "train", batch_size=args.batch_size, num_workers=workers,
                           image_size=args.image_size, persistent_workers=workers > 0)

    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler()
        with profiler:
            measure(ours(0))
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return 0

    jpegs = stored_jpegs(dataset)
    worker_counts = [int(w) for w in args.workers.split(",")]
    region = loader_transforms._cropdecode

    def general_path(workers):
        # Forked workers inherit the module's state; the variable covers spawned ones.
        loader_transforms._cropdecode = None
        os.environ["SHARDTOOLS_REGION_DECODE"] = "0"
        try:
            return measure(ours(workers))
        finally:
            loader_transforms._cropdecode = region
            os.environ.pop("SHARDTOOLS_REGION_DECODE")

    pipelines = []  # (label, workers, measure() -> (rate, peaks))
    for workers in worker_counts:
        pipelines.append(("(a) loaders.make_loader", workers, lambda w=workers: measure(ours(w))))
        if region is not None:
            pipelines.append(("(a) ... general path only", workers,
                              lambda w=workers: general_path(w)))
        pipelines.append(("(b) webdataset + PIL", workers, lambda w=workers: measure(
            webdataset_loader(shard_urls(dataset), args.batch_size, w, args.image_size))))
        pipelines.append(("(c) predecessor (cache)", workers, lambda w=workers: measure(
            predecessor_loader(workdir, args.batch_size, w, args.image_size))))
    floors: dict[str, list[float]] = {}
    results: dict[tuple, list] = {(label, w): [] for label, w, _ in pipelines}
    parallel: list[float] = []
    most = max(worker_counts)
    for round_number in range(args.rounds):
        for name, rate in decode_floor(jpegs).items():
            floors.setdefault(name, []).append(rate)
        if most > 1:  # with the fastest decoder of the round just measured
            fastest = max(floors, key=lambda n: floors[n][-1])
            parallel.append(parallel_decode_rate(fastest, jpegs, most))
        for label, workers, run in pipelines:
            results[(label, workers)].append(run())
        print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)

    rows = []
    floor = {name: statistics.median(rates) for name, rates in floors.items()}
    best = max(floor, key=floor.get)
    for name, rate in floor.items():
        rows.append((f"(d) decode only, {name}", 0, rate, rate, []))
    if parallel:
        rate = statistics.median(parallel)
        rows.append((f"(d) ... {most} at once, per process", most, rate * most, rate, []))
    for (label, workers), runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        # Each round has new workers: report, per worker position, the highest peak seen.
        peaks = [max(column) for column in zip(*(p for _, p in runs if p))]
        rows.append((label, workers, rate, rate / max(1, workers), peaks))

    print(f"\nmedians of {args.rounds} interleaved rounds")
    print(f"{'pipeline':<46}{'workers':>8}{'samples/s':>11}{'per worker':>12}  peak RSS per worker")
    for label, workers, rate, per_worker, peaks in rows:
        memory = ", ".join(f"{p:.0f} MB" for p in peaks) or "-"
        print(f"{label:<46}{workers or '-':>8}{rate:>11.0f}{per_worker:>12.0f}  {memory}")
    by = {(label, workers): rate for label, workers, rate, _, _ in rows}
    print(f"\nratios (decode floor: {best}, {floor[best]:.0f} samples/s in one process)")
    for workers in worker_counts:
        a = by[("(a) loaders.make_loader", workers)]
        ratios = [(a / workers / floor[best], 0.75, "(a) per worker / (d)"),
                  (a / by[("(b) webdataset + PIL", workers)], 1.5, "(a)/(b)"),
                  (a / by[("(c) predecessor (cache)", workers)], 3.0, "(a)/(c)")]
        print(f"  {workers} worker(s): " + ";  ".join(
            f"{name} = {value:.2f} (target >= {target:g}{'' if value >= target else ', MISSED'})"
            for value, target, name in ratios))
        general = by.get(("(a) ... general path only", workers))
        if general:
            print(f"      general path only: per worker / (d) = "
                  f"{general / workers / floor[best]:.2f}")
        if workers > 1 and parallel:
            print(f"      against {workers} decode-only processes at once: per worker / "
                  f"per process = {a / workers / statistics.median(parallel):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
