"""Appends: a build over more records adds shards and never touches the ones there."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shardtools.build import run_build
from shardtools.cache import ImageCache, url_key
from shardtools.fetch import ManualClock
from shardtools.imagehost import Reply
from shardtools.report import format_summary
from shardtools.shards import file_sha256
from shardtools.verify import verify_dataset

from .helpers import builders, manifest, photo_variants, samples_on_disk, write_jsonl


def _cache(tmp_path: Path, urls, seed: int):
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photo_variants(len(urls), seed=seed, max_side=64)):
        cache.store(url, data)


def _rows(urls, label=0):
    return [{"image_url": u, "taxon_id": label, "observation_id": u} for u in urls]


def _listed(dataset: Path) -> list[dict]:
    return [s for e in manifest(dataset)["splits"].values() for s in e["shards"]]


def _index_names(dataset: Path) -> list[str]:
    lines = (dataset / "shard_index.jsonl").read_text().splitlines()
    return [json.loads(x)["shard"] for x in lines]


def _snapshot(dataset: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in dataset.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_two_appends_add_c_then_d_and_a_fourth_build_writes_nothing(tmp_path):
    urls = [f"http://images.invalid/a/{i}.jpg" for i in range(13)]
    _cache(tmp_path, urls, seed=1)
    records = tmp_path / "records.jsonl"
    more = tmp_path / "more.jsonl"
    write_jsonl(records, _rows(urls[:8]))
    settings = builders.build_settings(tmp_path, records=[str(records)], splits={"train": 1.0},
                                       shard_max_samples=4)
    dataset = tmp_path / "dataset"

    first = run_build(settings)
    assert first.new_shards == ["train/train-000000.tar", "train/train-000001.tar"]
    a_and_b = {s["name"]: s["sha256"] for s in _listed(dataset)}
    bytes_before = {n: (dataset / n).read_bytes() for n in a_and_b}

    write_jsonl(records, _rows(urls[:11]))  # the JSONL grew
    second = run_build(settings)
    assert second.new_shards == ["train/train-000002.tar"] and second.already_written == 8

    write_jsonl(more, _rows(urls[11:], label="new"))  # a new records file
    third = run_build(dataclasses.replace(settings, records=(str(records), str(more))))
    assert third.new_shards == ["train/train-000003.tar"] and third.new_classes == 1

    listed = _listed(dataset)
    assert [s["name"] for s in listed] == [f"train/train-00000{i}.tar" for i in range(4)]
    assert [s["build"] for s in listed] == [1, 1, 2, 3]
    assert _index_names(dataset) == [s["name"] for s in listed]  # no index line twice
    for name, sha in a_and_b.items():  # A and B: same checksum, same bytes, on disk too
        assert next(s for s in listed if s["name"] == name)["sha256"] == sha
        assert file_sha256(dataset / name) == sha
        assert (dataset / name).read_bytes() == bytes_before[name]
    assert set(samples_on_disk(dataset)) == {url_key(u) for u in urls}
    assert [b["build"] for b in manifest(dataset)["builds"]] == [1, 2, 3]

    before = _snapshot(dataset)
    fourth = run_build(dataclasses.replace(settings, records=(str(records), str(more))))
    assert not fourth.changed and fourth.new_shards == [] and fourth.build_id is None
    assert "nothing new to write" in format_summary(fourth)
    assert _snapshot(dataset) == before
    assert verify_dataset(dataset).ok


def test_existing_samples_keep_split_and_class_when_labels_change(tmp_path):
    """Splits and class ids are fixed once written: relabelled records change neither."""
    urls = [f"http://images.invalid/s/{i}.jpg" for i in range(24)]
    _cache(tmp_path, urls, seed=2)
    write_jsonl(tmp_path / "records.jsonl", _rows(urls[:16], label=3))
    settings = builders.build_settings(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    before = samples_on_disk(dataset)
    classes_before = (dataset / "classes.json").read_text()
    highest = {split: max((s["name"] for s in e["shards"]), default="")
               for split, e in manifest(dataset)["splits"].items()}

    rows = _rows(urls[:16], label=4) + _rows(urls[16:], label=3)  # relabelled: first wins
    write_jsonl(tmp_path / "records.jsonl", rows)
    summary = run_build(settings)
    after = samples_on_disk(dataset)
    assert {k: after[k] for k in before} == before
    assert len(after) == 24
    assert json.loads((dataset / "classes.json").read_text())["classes"][:1] == \
        json.loads(classes_before)["classes"][:1]
    for name in summary.new_shards:  # numbering continues after the highest of the split
        split = name.split("/")[0]
        assert name > highest[split]
    assert verify_dataset(dataset).ok


@pytest.mark.parametrize("change", [
    {"split_salt": "another salt"},
    {"splits": {"train": 0.2, "val": 0.4, "test": 0.4}},
    {"splits": {"val": 0.2, "train": 0.6, "test": 0.2}},  # same fractions, another order
])
def test_changed_split_settings_are_refused_and_nothing_is_touched(tmp_path, change):
    """A new salt or new fractions would send new photos of an observation already written
    to another split; the build refuses, naming both settings, and writes nothing."""
    from shardtools.errors import ConfigError

    urls = [f"http://images.invalid/c/{i}.jpg" for i in range(12)]
    _cache(tmp_path, urls, seed=5)
    write_jsonl(tmp_path / "records.jsonl", _rows(urls[:8], label=1))
    settings = builders.build_settings(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    files_before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file() and p.name != ".lock"}

    write_jsonl(tmp_path / "records.jsonl", _rows(urls, label=1))
    with pytest.raises(ConfigError, match="split settings differ from this dataset's"):
        run_build(dataclasses.replace(settings, **change))
    files_after = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file() and p.name != ".lock"}
    assert files_after == files_before


def test_pending_records_of_an_earlier_build_are_tried_again(tmp_path, image_host):
    photos = photo_variants(6, seed=4, max_side=64)
    urls = []
    for i, data in enumerate(photos):
        image_host.add(f"/p/{i}.jpg", data)
        urls.append(image_host.url(f"/p/{i}.jpg"))
    image_host.script("/p/2.jpg", Reply(500, b"busy", "text/plain"))
    image_host.script("/p/4.jpg", Reply(500, b"busy", "text/plain"))
    write_jsonl(tmp_path / "records.jsonl", _rows(urls))
    settings = builders.build_settings(tmp_path, fetch={"threads": 1, "max_retries": 0})

    first = run_build(settings, clock=ManualClock())
    assert first.pending_records == 2 and first.pending_by_reason == {"server_error": 2}
    ledger = [json.loads(x) for x in
              (tmp_path / "dataset" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(r["url"] for r in ledger if r["status"] == "pending") == [urls[2], urls[4]]

    second = run_build(settings, clock=ManualClock())
    assert second.pending_records == 0 and second.new_samples == 2 and second.already_written == 4
    assert image_host.count("/p/0.jpg") == 1  # written samples are not fetched again
    assert set(samples_on_disk(tmp_path / "dataset")) == {url_key(u) for u in urls}
    assert verify_dataset(tmp_path / "dataset").ok


def test_records_dropped_from_the_input_keep_their_ledger_rows(tmp_path):
    """The shards still hold a sample whose record left the input: the ledger says where."""
    urls = [f"http://images.invalid/d/{i}.jpg" for i in range(6)]
    _cache(tmp_path, urls, seed=5)
    write_jsonl(tmp_path / "records.jsonl", _rows(urls))
    settings = builders.build_settings(tmp_path)
    run_build(settings)
    write_jsonl(tmp_path / "records.jsonl", _rows(urls[3:]))  # a regenerated, shorter export
    run_build(settings)
    dataset = tmp_path / "dataset"
    ledger = [json.loads(x) for x in (dataset / "ledger.jsonl").read_text().splitlines()]
    assert {r["key"] for r in ledger if r["status"] == "written"} == {url_key(u) for u in urls}
    assert len({r["record"] for r in ledger}) == len(ledger)
    assert sum(1 for r in ledger if r.get("in_input") is False) == 3
    assert verify_dataset(dataset).ok
