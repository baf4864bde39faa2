"""Opening a directory: what an interrupted build left goes, anything else stays."""

from __future__ import annotations

import json
import shutil

import pytest

from shardtools.build import run_build
from shardtools.cache import ImageCache
from shardtools.errors import DatasetError
from shardtools.verify import verify_dataset

from .helpers import (builders, manifest, photo_variants, run_build as run_build_process,
                      samples_on_disk, write_config, write_jsonl)


def _input(tmp_path, count=9):
    urls = [f"http://images.invalid/o/{i}.jpg" for i in range(count)]
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photo_variants(count, seed=41, max_side=64)):
        cache.store(url, data)
    write_jsonl(tmp_path / "records.jsonl",
                [{"image_url": u, "taxon_id": 0, "observation_id": u} for u in urls])
    return builders.build_settings(tmp_path, shard_max_samples=2)


def test_a_lost_manifest_stops_the_build_and_deletes_nothing(tmp_path):
    settings = _input(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    (dataset / "manifest.json").unlink()
    tars = sorted(dataset.glob("*/*.tar"))
    with pytest.raises(DatasetError, match="no manifest.json; the manifest alone says"):
        run_build(settings)
    assert sorted(dataset.glob("*/*.tar")) == tars


def test_first_build_killed_before_its_first_listing_starts_over(tmp_path):
    _input(tmp_path)
    config = write_config(tmp_path, tmp_path / "records.jsonl", tmp_path / "cache",
                          tmp_path / "dataset", shard_max_samples=2)
    assert run_build_process(config, crash_at="index:appended:1").returncode == -9
    dataset = tmp_path / "dataset"
    assert not (dataset / "manifest.json").exists()
    assert len(list(dataset.glob("*/*.tar"))) == 1  # renamed, indexed, never listed
    with pytest.raises(DatasetError, match="its first build .* has not listed a shard"):
        verify_dataset(dataset)
    again = run_build_process(config)
    assert again.returncode == 0, again.stderr
    assert len(samples_on_disk(dataset)) == 9
    assert verify_dataset(dataset).ok


def test_an_unlisted_tar_no_build_left_is_kept_and_reported(tmp_path):
    """A tar below the split's next number was not left by a build of this directory
    (someone unlisted it, or copied it in): the build must not delete it."""
    settings = _input(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    m = manifest(dataset)
    split = m["splits"]["train"]
    entry = split["shards"].pop(0)
    split["num_samples"] -= entry["num_samples"]
    split["num_bytes"] -= entry["num_bytes"]
    m["class_counts"]["train"]["0"] -= entry["num_samples"]
    (dataset / "manifest.json").write_text(json.dumps(m))
    foreign = dataset / entry["name"]
    problems = [str(p) for p in verify_dataset(dataset).problems]
    assert f"{entry['name']}: on disk but not listed in the manifest" in problems

    summary = run_build(settings)  # its samples are not listed: written again, elsewhere
    assert summary.new_samples == entry["num_samples"]
    assert foreign.exists() and entry["name"] not in summary.removed_leftovers
    assert [str(p) for p in verify_dataset(dataset).problems] == \
        [f"{entry['name']}: on disk but not listed in the manifest"]


def test_stray_temporary_files_are_removed_on_open(tmp_path):
    settings = _input(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    strays = [dataset / "manifest.json.tmp-99999", dataset / "train" / "train-000009.tar.tmp-1",
              dataset / "stats" / "build-0002.json.tmp-5"]
    for path in strays:
        path.write_bytes(b"half")
    shutil.copy(next(dataset.glob("val/*.tar")), dataset / "val" / "val-000050.tar")
    assert not verify_dataset(dataset).ok
    summary = run_build(settings)
    assert not any(p.exists() for p in strays)
    assert not (dataset / "val" / "val-000050.tar").exists()  # at/after the next number
    assert len(summary.removed_leftovers) == 4
    assert verify_dataset(dataset).ok
