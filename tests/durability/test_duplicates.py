"""No leakage: identical bytes under different URLs are one sample, so in one split."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict

from shardtools.build import run_build
from shardtools.cache import ImageCache, url_key
from shardtools.fetch import ManualClock
from shardtools.imagehost import Reply
from shardtools.report import format_summary
from shardtools.splits import split_for
from shardtools.status import dataset_status
from shardtools.verify import verify_dataset

from .helpers import builders, ledger, photo_variants, samples_on_disk, write_jsonl

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
SALT = "test"  # builders.build_settings' salt


def _group_in(split: str, avoid: str, start: int) -> str:
    """An observation id whose split is `split` (and not `avoid`): pairs are placed so that
    their two halves would land in different splits if they were two samples."""
    n = start
    while True:
        group = f"dup-{n}"
        found = split_for(f"group:{group}", SALT, SPLITS)
        if found == split and found != avoid:
            return group
        n += 1


def _hundred_records(tmp_path, image_host):
    """100 records, 100 URLs, 95 distinct images: 5 pairs share their bytes, 3 of the
    pairs disagree on the label. Half the images come from the cache, half from the host."""
    photos = photo_variants(95, seed=13, max_side=80)
    cache = ImageCache(tmp_path / "cache")
    rows, pairs = [], []

    def add(i, data, label, group, hosted=None):
        if i % 2 if hosted is None else hosted:
            url = image_host.url(f"/h/{i}.jpg")
            image_host.add(f"/h/{i}.jpg", data)
        else:
            url = image_host.url(f"/c/{i}.jpg")  # never served: from the cache
            cache.store(url, data)
        rows.append({"image_url": url, "taxon_id": label, "observation_id": group})
        return url

    for i in range(90):
        add(i, photos[i], i % 7, f"obs-{i}")
    for j in range(5):
        data = photos[90 + j]
        first_split, second_split = ("train", "test") if j % 2 else ("test", "train")
        label = 100 + j
        # Odd pairs: the first URL from the host, its twin from the cache; even: reversed.
        first = add(90 + 2 * j, data, label, _group_in(first_split, "", 1000 * j), j % 2 == 1)
        second = add(91 + 2 * j, data, label if j < 2 else label + 50,
                     _group_in(second_split, first_split, 1000 * j + 500), j % 2 == 0)
        pairs.append((first, second, j >= 2))
    return rows, pairs


def _check_pairs(dataset, pairs):
    found = samples_on_disk(dataset)
    rows = {r["url"]: r for r in ledger(dataset) if "url" in r}
    for first, second, conflict in pairs:
        a, b = url_key(first), url_key(second)
        assert (a in found) != (b in found), "a pair must be one sample"
        kept = a if a in found else b
        assert rows[first]["status"] == rows[second]["status"] == "written"
        assert rows[first]["split"] == rows[second]["split"] == found[kept][0]
        dropped = second if kept == a else first
        assert rows[dropped]["note"] == "duplicate_content" and rows[dropped]["sample"] == kept
        assert bool(rows[dropped].get("label_conflict")) == conflict
    by_content = defaultdict(set)
    for split_dir in ("train", "val", "test"):
        for path in (dataset / split_dir).glob("*.tar"):
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read())
                        by_content[meta["content_sha256"]].add(split_dir)
    assert all(len(s) == 1 for s in by_content.values())
    assert verify_dataset(dataset).ok


def test_five_pairs_of_identical_bytes_in_one_build(tmp_path, image_host):
    rows, pairs = _hundred_records(tmp_path, image_host)
    write_jsonl(tmp_path / "records.jsonl", rows)
    settings = builders.build_settings(tmp_path)
    summary = run_build(settings, clock=ManualClock())

    assert summary.new_samples == 95 and summary.duplicate_content == 5
    assert summary.duplicate_label_conflicts == 3
    text = format_summary(summary)
    assert "5 URLs return bytes identical to another sample" in text
    assert "3 of those have another label" in text
    _check_pairs(tmp_path / "dataset", pairs)
    for first, second, _ in pairs:  # input order: the first URL of a pair is the sample
        assert url_key(first) in samples_on_disk(tmp_path / "dataset")
    status = dataset_status(tmp_path / "dataset")
    assert status["duplicate_content"] == 5 and status["label_conflicts"] == 3

    again = run_build(settings, clock=ManualClock())  # known duplicates: nothing to do
    assert not again.changed and again.duplicate_content == 5


def test_pairs_split_across_appends_and_a_pending_first_half(tmp_path, image_host):
    rows, pairs = _hundred_records(tmp_path, image_host)
    # The first half of pair 1 (a hosted URL) fails once: its twin is written first, in
    # another split, and the retry must not add the image a second time.
    image_host.script("/" + pairs[1][0].split("/", 3)[3], Reply(500, b"busy", "text/plain"))
    write_jsonl(tmp_path / "records.jsonl", rows[:60])
    settings = builders.build_settings(tmp_path, fetch={"max_retries": 0})

    # Build 1: the first 60 records, which hold no pair. Build 2: 95 records, so pairs 0-1
    # are complete and pair 2 only half there. Build 3: all 100.
    summaries = []
    for count in (60, 95, 100):
        write_jsonl(tmp_path / "records.jsonl", rows[:count])
        summaries.append(run_build(settings, clock=ManualClock()))
    assert summaries[1].pending_records == 1  # pair 1's first half
    assert summaries[1].duplicate_content == 1  # pair 0 complete; pair 1's twin written
    final = run_build(settings, clock=ManualClock())  # pair 1's first half, retried
    assert final.pending_records == 0 and final.new_samples == 0
    assert final.duplicate_content == 5 and final.duplicate_label_conflicts == 3
    dataset = tmp_path / "dataset"
    assert len(samples_on_disk(dataset)) == 95
    _check_pairs(dataset, pairs)
    # Pair 1 is kept under the URL that was written first, the second of the pair.
    assert url_key(pairs[1][1]) in samples_on_disk(dataset)
