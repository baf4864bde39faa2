"""Kill a real build with SIGKILL at many points, run it again, and compare.

A reference build runs once, uninterrupted, with a trace of every crash point it passes
(shardtools/crashpoints.py). Each scenario then starts from the same input (records, a
half-filled cache, a loopback image host), kills the build at one point chosen by seed
from that trace, checks that the directory it left passes verify, runs the build again to
its end, and requires the result to hold exactly the reference's samples, splits, labels,
class index and ledger. SHARDTOOLS_KILL_SEED picks other points.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections import Counter

import pytest

from shardtools.atomic import TEMP_MARK
from shardtools.cache import ImageCache
from shardtools.imagehost import ImageHost, Reply
from shardtools.verify import format_report, verify_dataset

from .helpers import (BUILD_TIMEOUT_S, files_with, ledger_view, manifest, photo_variants,
                      run_build, samples_on_disk, start_build, write_config, write_jsonl)

SEED = int(os.environ.get("SHARDTOOLS_KILL_SEED", "20261204"))
# The build exits 4: the input holds records that are rejected on purpose.
DONE = 4
KILLED = -9

# Where to kill, as crash-point patterns, each with how many distinct arrivals (chosen by
# seed among those the reference passes) to try.
POINTS = {
    "fetch:start": 2,            # during download, other downloads in flight
    "fetch:done": 1,             # downloaded, not yet in the cache
    "*.jpg:synced": 1,           # a cache file written, not yet renamed
    "sample:added": 2,           # mid-shard
    "shard:member": 2,           # mid-sample: some of its members written
    "shard:synced": 1,           # a complete tar under its temporary name
    "shard:renamed": 2,          # between shard rename and index line
    "index:torn": 1,             # half an index line on disk
    "index:appended": 2,         # between index line and manifest
    "manifest.json:partial": 2,  # during a manifest write
    "manifest.json:synced": 1,
    "manifest.json:renamed": 1,
    "shard:listed": 1,           # between shards
    "classes.json:synced": 1,
    "build:shards_closed": 1,    # every shard listed, ledger not yet written
    "ledger.jsonl:partial": 1,   # during the ledger write
    "ledger.jsonl:renamed": 1,   # ledger written, history entry not yet complete
    "build-*.json:synced": 1,    # the stats file
}
RANDOM_KILLS = 3


def _scenarios():
    rng = random.Random(SEED)
    out = [(pattern, rng.random()) for pattern, tries in POINTS.items() for _ in range(tries)]
    out += [("random-time", rng.random()) for _ in range(RANDOM_KILLS)]
    return out


SCENARIOS = _scenarios()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The input every scenario starts from, and the reference build of it."""
    root = tmp_path_factory.mktemp("kill")
    with ImageHost() as host:
        photos = photo_variants(21, seed=7, max_side=64)
        cached, hosted = photos[:10], photos[10:20]
        records = []
        pristine = ImageCache(root / "pristine-cache")
        for i, data in enumerate(cached):
            url = host.url(f"/cached/{i}.jpg")  # never served: must come from the cache
            pristine.store(url, data)
            records.append({"image_url": url, "taxon_id": i % 4, "observation_id": f"c{i}"})
        for i, data in enumerate(hosted):
            host.add(f"/img/{i}.jpg", data)
            records.append({"image_url": host.url(f"/img/{i}.jpg"), "taxon_id": i % 5,
                            "observation_id": f"h{i // 2}"})
        # Bytes of a cached image at another URL, under another label: one sample.
        host.add("/copy.jpg", cached[2])
        records.append({"image_url": host.url("/copy.jpg"), "taxon_id": 7, "observation_id": "x"})
        # A URL repeated with a conflicting label; a 404; a page that is not an image.
        records.append({"image_url": host.url("/img/3.jpg"), "taxon_id": 9, "observation_id": "h1"})
        records.append({"image_url": host.url("/missing.jpg"), "taxon_id": 1,
                        "observation_id": "m"})
        host.answer("/page.jpg", Reply.html())
        records.append({"image_url": host.url("/page.jpg"), "taxon_id": 2, "observation_id": "p"})
        write_jsonl(root / "records.jsonl", records)

        world = {"root": root, "host": host, "records": root / "records.jsonl",
                 "pristine": root / "pristine-cache"}
        ref = _scenario_dir(world, "reference")
        trace = ref["dir"] / "trace.txt"
        done = run_build(ref["config"], trace=trace)
        assert done.returncode == DONE, done.stderr
        assert verify_dataset(ref["dataset"]).ok
        world.update(
            reference=ref["dataset"],
            samples=samples_on_disk(ref["dataset"]),
            ledger=ledger_view(ref["dataset"]),
            classes=(ref["dataset"] / "classes.json").read_text(),
            trace=Counter(trace.read_text().split()),
        )
        yield world


def _scenario_dir(world, name):
    folder = world["root"] / name
    shutil.copytree(world["pristine"], folder / "cache")
    dataset = folder / "dataset"
    config = write_config(folder, world["records"], folder / "cache", dataset)
    return {"dir": folder, "dataset": dataset, "config": config}


def _arrivals(trace: Counter, pattern: str) -> int:
    import fnmatch

    return sum(n for name, n in trace.items() if fnmatch.fnmatchcase(name, pattern))


def _assert_valid(dataset, when):
    report = verify_dataset(dataset)
    assert report.ok, f"{when} (seed {SEED}):\n{format_report(report)}"
    return report


def _assert_same_as_reference(world, dataset):
    assert samples_on_disk(dataset) == world["samples"]
    assert ledger_view(dataset) == world["ledger"]
    assert (dataset / "classes.json").read_text() == world["classes"]
    names = [s["name"] for e in manifest(dataset)["splits"].values() for s in e["shards"]]
    assert len(names) == len(set(names))
    assert not files_with(dataset, TEMP_MARK)


def test_reference_build_passes_every_point(world):
    # Every point the scenarios aim at is on the path of a normal build.
    for pattern in POINTS:
        assert _arrivals(world["trace"], pattern) >= 1, pattern
    assert len(SCENARIOS) >= 20


@pytest.mark.parametrize("pattern,draw", SCENARIOS,
                         ids=[f"{p}-{i}" for i, (p, _) in enumerate(SCENARIOS)])
def test_kill_then_rerun_gives_the_uninterrupted_dataset(world, pattern, draw, request):
    scenario = _scenario_dir(world, request.node.name.replace("/", "_").replace("*", "x"))
    if pattern == "random-time":
        rc = _kill_random(scenario["config"], draw, world)
        assert rc in (KILLED, DONE)
    else:
        arrivals = _arrivals(world["trace"], pattern)
        nth = 1 + int(draw * arrivals)
        killed = run_build(scenario["config"], crash_at=f"{pattern}:{nth}")
        assert killed.returncode == KILLED, (
            f"{pattern}:{nth} of {arrivals} (seed {SEED}) did not kill the build:\n"
            f"{killed.stderr[-2000:]}")
    if (scenario["dataset"] / "manifest.json").exists():
        report = _assert_valid(scenario["dataset"], f"after a kill at {pattern}")
        assert report.unfinished_build or pattern == "random-time"

    again = run_build(scenario["config"])
    assert again.returncode == DONE, again.stderr[-2000:]
    report = _assert_valid(scenario["dataset"], f"after the rerun of a kill at {pattern}")
    assert not report.notes and report.unfinished_build is None, format_report(report)
    _assert_same_as_reference(world, scenario["dataset"])


def _kill_random(config, draw, world):
    import time

    # How long a whole build takes on this machine, measured now: the kill lands at a
    # seeded share of it. No assertion depends on where it lands.
    started = time.monotonic()
    scratch = _scenario_dir(world, f"timing-{draw:.6f}")
    timing = run_build(scratch["config"])
    assert timing.returncode == DONE
    whole = time.monotonic() - started
    probe = start_build(config)
    try:
        probe.wait(timeout=whole * draw)
    except subprocess.TimeoutExpired:
        probe.kill()
    probe.communicate(timeout=BUILD_TIMEOUT_S)
    return probe.returncode


def test_killed_again_and_again_while_resuming(world):
    """Each resume is itself killed; the last run still ends with the reference dataset."""
    scenario = _scenario_dir(world, "chain")
    rng = random.Random(SEED + 1)
    chain = [("sample:added", 2), ("manifest.json:synced", 1), ("shard:renamed", 1),
             ("index:torn", 1), ("fetch:start", 1)]
    rng.shuffle(chain)
    for pattern, nth in chain:
        result = run_build(scenario["config"], crash_at=f"{pattern}:{nth}")
        # A resume with less left to do may finish before reaching the point.
        assert result.returncode in (KILLED, DONE), result.stderr[-2000:]
        if (scenario["dataset"] / "manifest.json").exists():
            _assert_valid(scenario["dataset"], f"chain, after {pattern}:{nth}")
    final = run_build(scenario["config"])
    assert final.returncode == DONE, final.stderr[-2000:]
    _assert_valid(scenario["dataset"], "chain, at the end")
    _assert_same_as_reference(world, scenario["dataset"])
