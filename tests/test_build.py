"""End to end: records and cache in, shards, manifest, class index and ledger out."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import webdataset as wds

from conftest import build_settings, hosted_records, photo_variants, write_jsonl
from shardtools.build import run_build
from shardtools.cache import ImageCache, url_key
from shardtools.fetch import ManualClock
from shardtools.status import dataset_status


def _records(urls, labels=None, groups=None):
    return [{"image_url": url, "taxon_id": (labels or {}).get(url, i % 3),
             "observation_id": (groups or {}).get(url, f"obs-{i}")}
            for i, url in enumerate(urls)]


def _ledger(dataset_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset_dir / "ledger.jsonl").read_text().splitlines()]


def _read_back(dataset_dir: Path) -> dict[str, dict]:
    """key -> {split, cls, json} for every sample in every listed shard, via webdataset."""
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    found = {}
    for split, entry in manifest["splits"].items():
        urls = [str(dataset_dir / s["name"]) for s in entry["shards"]]
        if not urls:
            continue
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in found, "a key appears twice"
            found[sample["__key__"]] = {"split": split, "cls": int(sample["cls"]),
                                        "json": json.loads(sample["json"]), "jpg": sample["jpg"]}
    return found


def _cached_dataset(tmp_path, count=40, **overrides):
    urls = [f"http://images.invalid/p/{i}.jpg" for i in range(count)]
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photo_variants(count)):
        cache.store(url, data)
    write_jsonl(tmp_path / "records.jsonl", _records(urls))
    return urls, build_settings(tmp_path, **overrides)


def test_build_from_cache_only_writes_every_record(tmp_path):
    urls, settings = _cached_dataset(tmp_path)
    summary = run_build(settings)
    dataset = tmp_path / "dataset"

    assert summary.new_samples == 40 and summary.from_cache == 40 and summary.downloaded == 0
    assert summary.exit_code == 0
    ledger = _ledger(dataset)
    assert len(ledger) == 40 and {r["status"] for r in ledger} == {"written"}
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["num_classes"] == 3
    assert sum(s["num_samples"] for s in manifest["splits"].values()) == 40
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            assert shard["name"].startswith(f"{split}/")
            assert (dataset / shard["name"]).stat().st_size == shard["num_bytes"]
            assert shard["num_samples"] <= 8


def test_round_trip_every_sample_has_its_label(tmp_path):
    urls, settings = _cached_dataset(tmp_path)
    run_build(settings)
    dataset = tmp_path / "dataset"
    classes = {c["id"]: c["label"] for c in json.loads((dataset / "classes.json").read_text())["classes"]}
    found = _read_back(dataset)
    assert set(found) == {url_key(u) for u in urls}
    for url in urls:
        sample = found[url_key(url)]
        expected_label = str(urls.index(url) % 3)
        assert classes[sample["cls"]] == expected_label
        assert sample["json"]["url"] == url and sample["json"]["label"] == expected_label
        assert sample["json"]["source"] == "cache"
        assert sample["jpg"][:3] == b"\xff\xd8\xff"


def test_shards_read_with_tar_and_keys_are_safe(tmp_path):
    _, settings = _cached_dataset(tmp_path, count=10)
    run_build(settings)
    shards = sorted((tmp_path / "dataset").glob("*/*.tar"))
    assert shards
    listing = subprocess.run(["tar", "tf", str(shards[0])], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    for name in names:
        stem, extension = name.split(".", 1)
        assert "/" not in name and extension in ("jpg", "cls", "json")
    # each sample's members are contiguous
    stems = [n.split(".")[0] for n in names]
    assert stems == sorted(stems, key=stems.index) and len(stems) == 3 * len(set(stems))


def test_same_input_built_twice_gives_same_splits(tmp_path):
    _, settings = _cached_dataset(tmp_path)
    run_build(settings)
    first = {k: v["split"] for k, v in _read_back(tmp_path / "dataset").items()}
    import dataclasses

    again = dataclasses.replace(settings, output_dir=str(tmp_path / "again"))
    run_build(again)
    second = {k: v["split"] for k, v in _read_back(tmp_path / "again").items()}
    assert first == second
    assert set(first.values()) == {"train", "val", "test"}


def test_groups_share_a_split_and_one_url_is_in_one_split(tmp_path):
    urls = [f"http://images.invalid/g/{i}.jpg" for i in range(30)]
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photo_variants(30, seed=3)):
        cache.store(url, data)
    groups = {url: f"obs-{i // 3}" for i, url in enumerate(urls)}
    rows = _records(urls, groups=groups) + _records(urls[:5], groups=groups)  # repeats
    write_jsonl(tmp_path / "records.jsonl", rows)
    run_build(build_settings(tmp_path))
    found = _read_back(tmp_path / "dataset")
    assert len(found) == 30
    by_group = defaultdict(set)
    for sample in found.values():
        by_group[sample["json"]["group"]].add(sample["split"])
    assert all(len(splits) == 1 for splits in by_group.values())


def test_build_with_downloads_fills_the_cache(tmp_path, image_host):
    photos = photo_variants(12, seed=5)
    urls = []
    for i, data in enumerate(photos):
        image_host.add(f"/img/{i}.jpg", data)
        urls.append(image_host.url(f"/img/{i}.jpg"))
    write_jsonl(tmp_path / "records.jsonl", _records(urls))
    summary = run_build(build_settings(tmp_path), clock=ManualClock())

    assert summary.downloaded == 12 and summary.pending_records == 0
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photos):
        assert cache.read(url) == data  # stored as downloaded, under md5(url).jpg
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
    found = _read_back(tmp_path / "dataset")
    assert {s["json"]["source"] for s in found.values()} == {"network"}


def test_429_leaves_records_pending_and_a_later_build_appends_them(tmp_path, image_host):
    photos = photo_variants(10, seed=9)
    urls = []
    for i, data in enumerate(photos):
        image_host.add(f"/img/{i}.jpg", data)
        urls.append(image_host.url(f"/img/{i}.jpg"))
    write_jsonl(tmp_path / "records.jsonl", _records(urls))
    settings = build_settings(tmp_path, fetch={"threads": 1})
    image_host.throttle(rate=0.001, burst=3, retry_after=120)

    first = run_build(settings, clock=ManualClock())
    assert first.downloaded == 3
    assert first.pending_records == 7 and first.exit_code == 3
    ledger = _ledger(tmp_path / "dataset")
    assert {r["reason"] for r in ledger if r["status"] == "pending"} <= {"rate_limited", "host_cache_only"}
    # The window holds: after the first 429, no request reached the host.
    assert image_host.count_429 == 1
    first_shards = {p.name: p.read_bytes() for p in (tmp_path / "dataset").glob("*/*.tar")}

    image_host.relent()
    second = run_build(settings, clock=ManualClock())
    assert second.downloaded == 7 and second.pending_records == 0 and second.exit_code == 0
    assert second.already_written == 3
    for name, data in first_shards.items():  # old shards untouched
        assert next((tmp_path / "dataset").glob(f"*/{name}")).read_bytes() == data
    assert set(second.new_shards).isdisjoint(first_shards)
    assert len(_read_back(tmp_path / "dataset")) == 10


def test_malformed_line_is_rejected_with_its_line_number_and_others_written(tmp_path):
    urls, settings = _cached_dataset(tmp_path, count=6)
    rows = _records(urls)
    rows.insert(2, '{"image_url": "http://images.invalid/p/x.jpg", "taxon_id": ')
    write_jsonl(tmp_path / "records.jsonl", rows)
    summary = run_build(settings)
    ledger = _ledger(tmp_path / "dataset")
    bad = [r for r in ledger if r["status"] == "rejected"]
    assert len(bad) == 1 and bad[0]["line"] == 3 and bad[0]["reason"] == "invalid_record"
    assert "not valid JSON" in bad[0]["detail"]
    assert summary.new_samples == 6 and summary.exit_code == 4


def test_rebuild_with_nothing_new_writes_nothing(tmp_path):
    _, settings = _cached_dataset(tmp_path, count=6)
    run_build(settings)
    dataset = tmp_path / "dataset"
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file() and p.name != ".lock"}
    summary = run_build(settings)
    assert not summary.changed and summary.new_samples == 0
    after = {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_class_ids_are_stable_and_new_classes_appended(tmp_path):
    urls, settings = _cached_dataset(tmp_path, count=12)
    run_build(settings)
    classes_before = json.loads((tmp_path / "dataset" / "classes.json").read_text())["classes"]
    more = [f"http://images.invalid/p/new{i}.jpg" for i in range(4)]
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(more, photo_variants(4, seed=11)):
        cache.store(url, data)
    rows = _records(urls) + [{"image_url": u, "taxon_id": "zz-new", "observation_id": u} for u in more]
    write_jsonl(tmp_path / "records.jsonl", rows)
    run_build(settings)
    classes_after = json.loads((tmp_path / "dataset" / "classes.json").read_text())["classes"]
    assert classes_after[: len(classes_before)] == classes_before
    assert classes_after[-1] == {"id": len(classes_before), "label": "zz-new"}


def test_status_json_has_the_documented_keys(tmp_path):
    _, settings = _cached_dataset(tmp_path, count=10)
    run_build(settings)
    status = dataset_status(tmp_path / "dataset")
    assert set(status["splits"]) == {"train", "val", "test"}
    assert sum(s["samples"] for s in status["splits"].values()) == 10
    assert all(set(s) >= {"samples", "shards"} for s in status["splits"].values())
    assert status["classes"] == 3 and status["pending"] == 0 and status["rejected"] == 0


def test_cli_status_json(tmp_path):
    import sys

    _, settings = _cached_dataset(tmp_path, count=5)
    run_build(settings)
    out = subprocess.run([sys.executable, "-m", "shardtools", "status", str(tmp_path / "dataset"),
                          "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["classes"] == 3


def test_second_build_on_a_locked_directory_is_refused(tmp_path):
    from shardtools.dataset import DatasetLock
    from shardtools.errors import LockedError

    _, settings = _cached_dataset(tmp_path, count=3)
    with DatasetLock(tmp_path / "dataset"):
        with pytest.raises(LockedError, match="is being built by pid"):
            run_build(settings)
    run_build(settings)  # released: the next build runs


def test_label_conflicts_follow_the_first_record_and_are_reported(tmp_path):
    urls, settings = _cached_dataset(tmp_path, count=4)
    rows = _records(urls) + [{"image_url": urls[0], "taxon_id": 2, "observation_id": "x"}]
    write_jsonl(tmp_path / "records.jsonl", rows)
    summary = run_build(settings)
    assert summary.label_conflicts == 1
    ledger = _ledger(tmp_path / "dataset")
    conflict = [r for r in ledger if r.get("label_conflict")]
    assert len(conflict) == 1 and conflict[0]["line"] == 5 and conflict[0]["status"] == "written"
    found = _read_back(tmp_path / "dataset")
    assert found[url_key(urls[0])]["json"]["label"] == "0"


def test_unreadable_cache_entries_are_downloaded_and_unwritable_ones_only_warned(tmp_path, image_host):
    """Trouble with one cache file never stops a build (found in review): a directory where
    a cache file should be is a miss; the image is downloaded and still written."""
    photos = photo_variants(3, seed=13)
    urls = []
    for i, data in enumerate(photos):
        image_host.add(f"/c/{i}.jpg", data)
        urls.append(image_host.url(f"/c/{i}.jpg"))
    cache = ImageCache(tmp_path / "cache")
    cache.path_for(urls[0]).mkdir()                          # unreadable and unwritable
    cache.path_for(urls[1]).symlink_to(cache.path_for(urls[1]))  # a symlink loop
    write_jsonl(tmp_path / "records.jsonl", _records(urls))
    summary = run_build(build_settings(tmp_path), clock=ManualClock())
    assert summary.new_samples == 3 and summary.exit_code == 0
    assert summary.downloaded == 3
    assert summary.cache_errors >= 2


def test_damaged_dataset_files_give_one_line_and_exit_2(tmp_path, capsys):
    from shardtools.cli import main

    _, settings = _cached_dataset(tmp_path, count=3)
    run_build(settings)
    dataset = tmp_path / "dataset"
    manifest_text = (dataset / "manifest.json").read_text()
    for damage in ("[1, 2]", '{"format_version": 1}'):
        (dataset / "manifest.json").write_text(damage)
        assert main(["status", str(dataset)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "manifest.json" in err[0]
    (dataset / "manifest.json").write_text(manifest_text)
    plain_file = tmp_path / "plain.txt"
    plain_file.write_text("not a dataset")
    assert main(["status", str(plain_file)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_cut_ledger_line_is_skipped_not_fatal(tmp_path):
    _, settings = _cached_dataset(tmp_path, count=4)
    run_build(settings)
    ledger = tmp_path / "dataset" / "ledger.jsonl"
    ledger.write_text(ledger.read_text()[:-30])  # cut the last row
    assert dataset_status(tmp_path / "dataset")["splits"]
    summary = run_build(settings)  # rewrites the ledger whole
    assert len(_ledger(tmp_path / "dataset")) == 4 and summary.changed


def test_worker_processes_write_the_same_samples_as_threads(tmp_path):
    """image.processes > 0 (the default: one per core) decodes in a process pool; the
    samples must be byte for byte those of the in-thread path."""
    import dataclasses

    _, settings = _cached_dataset(tmp_path, count=12)
    run_build(settings)
    pooled = dataclasses.replace(settings, output_dir=str(tmp_path / "pooled"),
                                 image=dataclasses.replace(settings.image, processes=2))
    run_build(pooled)
    threads = {k: (v["split"], v["cls"], v["jpg"]) for k, v in _read_back(tmp_path / "dataset").items()}
    processes = {k: (v["split"], v["cls"], v["jpg"]) for k, v in _read_back(tmp_path / "pooled").items()}
    assert threads == processes and len(threads) == 12


def test_one_image_behind_many_urls_is_reported_as_a_suspected_placeholder(tmp_path, caplog):
    """A host's 'no photo' picture served under many URLs is kept once and reported."""
    placeholder = photo_variants(1, seed=17)[0]
    urls = [f"http://images.invalid/ph/{i}.jpg" for i in range(7)]
    cache = ImageCache(tmp_path / "cache")
    for url in urls:
        cache.store(url, placeholder)
    real = [f"http://images.invalid/real/{i}.jpg" for i in range(3)]
    for url, data in zip(real, photo_variants(3, seed=18)):
        cache.store(url, data)
    write_jsonl(tmp_path / "records.jsonl", _records(urls + real))
    summary = run_build(build_settings(tmp_path))
    assert summary.suspected_placeholders == {url_key(urls[0]): 7}
    assert summary.new_samples == 4 and summary.duplicate_content == 6
    assert "suspected placeholder: 7 different URLs" in caplog.text


def test_drain_deadline_keeps_going_until_the_pending_records_are_written(tmp_path):
    """A long run (drain_deadline_s) waits out the host's windows on the clock, probes, and
    writes every record, instead of stopping with pending ones. The host's bucket runs on
    the same virtual clock, so the 60 s windows pass in milliseconds."""
    from shardtools.imagehost import ImageHost

    clock = ManualClock()
    with ImageHost(clock=clock.monotonic) as host:
        hosted_records(tmp_path, host, "d", 12, seed=19)
        host.throttle(rate=0.2, burst=2, retry_after=60)
        settings = build_settings(tmp_path, drain_deadline_s=3600,
                                  fetch={"threads": 2, "requests_per_second": 5, "burst": 2})
        started = clock.monotonic()
        summary = run_build(settings, clock=clock)
        assert host.count_429 >= 1
    assert summary.pending_records == 0 and summary.downloaded == 12
    assert clock.monotonic() - started >= 60  # it waited out at least one window
    assert summary.exit_code == 0


def test_without_a_drain_deadline_pending_records_wait_for_the_next_build(tmp_path):
    from shardtools.imagehost import ImageHost

    clock = ManualClock()
    with ImageHost(clock=clock.monotonic) as host:
        hosted_records(tmp_path, host, "e", 6, seed=20)
        host.throttle(rate=0.001, burst=2, retry_after=60)
        summary = run_build(build_settings(tmp_path, fetch={"threads": 1}), clock=clock)
    assert summary.downloaded == 2 and summary.pending_records == 4


def test_a_changed_label_or_group_field_is_refused(tmp_path):
    """Labels compared across two fields would make false conflicts and empty classes
    (found by a new user): a build with another label_field or group_field stops."""
    import dataclasses

    from shardtools.errors import ConfigError

    _, settings = _cached_dataset(tmp_path, count=4)
    run_build(settings)
    for change in ({"label_field": "observation_id"}, {"group_field": None}):
        with pytest.raises(ConfigError, match="this dataset was built with"):
            run_build(dataclasses.replace(settings, **change))


def test_a_label_field_no_record_has_is_one_config_error(tmp_path):
    import dataclasses

    from shardtools.errors import ConfigError

    _, settings = _cached_dataset(tmp_path, count=4)
    with pytest.raises(ConfigError) as caught:
        run_build(dataclasses.replace(settings, label_field="taxon"))
    assert caught.value.key == "build.label_field"
    assert "missing field 'taxon'" in caught.value.problem
    assert not (tmp_path / "dataset" / "ledger.jsonl").exists()


def test_ledger_rows_keep_source_for_the_records_file(tmp_path):
    """`source` is always the records file; where an image came from is `image_from`."""
    _, settings = _cached_dataset(tmp_path, count=3)
    blank = "http://images.invalid/blank.jpg"
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "JPEG")
    ImageCache(tmp_path / "cache").store(blank, buffer.getvalue())
    rows = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "records.jsonl", rows + [{"image_url": blank, "taxon_id": 1}])
    run_build(settings)
    ledger = _ledger(tmp_path / "dataset")
    assert {r["source"] for r in ledger} == {str(tmp_path / "records.jsonl")}
    assert [r["image_from"] for r in ledger if r["status"] == "rejected"] == ["cache"]


def test_cli_options_work_after_the_command_too(tmp_path, capsys):
    from shardtools.cli import main

    _, settings = _cached_dataset(tmp_path, count=2)
    run_build(settings)
    assert main(["status", "-q", str(tmp_path / "dataset")]) == 0
    assert main(["-q", "status", str(tmp_path / "dataset")]) == 0


def test_training_config_needs_no_records_file(tmp_path):
    from shardtools.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text("build:\n  records: [gone.jsonl]\n  cache_dir: c\n  output_dir: ds\n"
                      "train:\n  batch_size: 4\n")
    train = load_config(config, only="train").train
    assert train.dataset == str(tmp_path / "ds") and train.batch_size == 4


def test_lines_appended_during_a_build_wait_for_the_next_one(tmp_path, monkeypatch):
    """The build reads its input as it was when it began (found in review: appended lines
    crashed it); the next build picks them up."""
    import shardtools.build as build_module

    urls, settings = _cached_dataset(tmp_path, count=6)
    more = [f"http://images.invalid/late/{i}.jpg" for i in range(3)]
    for url, data in zip(more, photo_variants(3, seed=23)):
        ImageCache(tmp_path / "cache").store(url, data)
    original = build_module._Build._resolve_and_write

    def append_then_resolve(self, wanted):
        with open(tmp_path / "records.jsonl", "a") as stream:
            for url in more:
                stream.write(json.dumps({"image_url": url, "taxon_id": 1}) + "\n")
        monkeypatch.setattr(build_module._Build, "_resolve_and_write", original)
        return original(self, wanted)

    monkeypatch.setattr(build_module._Build, "_resolve_and_write", append_then_resolve)
    first = run_build(settings)
    assert first.records == 6 and first.new_samples == 6 and len(_ledger(tmp_path / "dataset")) == 6
    second = run_build(settings)
    assert second.new_samples == 3 and len(_ledger(tmp_path / "dataset")) == 9


def test_a_records_file_rewritten_during_a_build_stops_it_cleanly(tmp_path, monkeypatch):
    """Rewritten (not appended) input between passes would give records no fate: the build
    stops with one clear error and lists nothing half-done."""
    import shardtools.build as build_module
    from shardtools.errors import RecordsChangedError

    urls, settings = _cached_dataset(tmp_path, count=6)
    original = build_module._Build._resolve_and_write

    def rewrite_then_resolve(self, wanted):
        rows = (tmp_path / "records.jsonl").read_text().splitlines()
        (tmp_path / "records.jsonl").write_text("\n".join(reversed(rows)) + "\n")
        return original(self, wanted)

    monkeypatch.setattr(build_module._Build, "_resolve_and_write", rewrite_then_resolve)
    with pytest.raises(RecordsChangedError, match="changed while the build read it"):
        run_build(settings)
    monkeypatch.setattr(build_module._Build, "_resolve_and_write", original)
    summary = run_build(settings)  # the next build, on the file as it now is, is whole
    assert summary.new_samples == 6
    assert {r["status"] for r in _ledger(tmp_path / "dataset")} == {"written"}


def test_cli_refuses_a_drain_deadline_that_is_not_finite(tmp_path, capsys):
    from shardtools.cli import main

    _, settings = _cached_dataset(tmp_path, count=2)
    config = tmp_path / "c.yaml"
    config.write_text("build:\n  records: [records.jsonl]\n  cache_dir: cache\n  output_dir: ds\n")
    for bad in ("nan", "inf", "-5", "soon"):
        try:
            main(["build", "--config", str(config), "--drain-deadline", bad])
        except SystemExit as exc:  # argparse's usage error
            assert exc.code == 2
        assert "finite number" in capsys.readouterr().err


def test_a_drain_round_starts_nothing_after_the_deadline(tmp_path):
    """The deadline bounds the whole build: a round that would start after it leaves the
    rest pending (found in review: a round ran far past it)."""
    from shardtools.imagehost import ImageHost

    clock = ManualClock()
    with ImageHost(clock=clock.monotonic) as host:
        hosted_records(tmp_path, host, "f", 10, seed=24)
        host.throttle(rate=0.001, burst=1, retry_after=30)
        settings = build_settings(tmp_path, drain_deadline_s=100,
                                  fetch={"threads": 1, "requests_per_second": 0.5, "burst": 1})
        started = clock.monotonic()
        summary = run_build(settings, clock=clock)
    assert summary.pending_records == 9
    # Virtual seconds: the last round may finish what it started, never start anew later.
    assert clock.monotonic() - started < 100 + 30 + 2 * 10


def test_a_lost_ledger_is_rebuilt_with_a_row_for_every_written_sample(tmp_path):
    """Samples in shards always have ledger rows, even when neither the input nor the last
    ledger names them any more."""
    from shardtools.verify import verify_dataset

    _, settings = _cached_dataset(tmp_path, count=6)
    run_build(settings)
    (tmp_path / "dataset" / "ledger.jsonl").unlink()
    write_jsonl(tmp_path / "records.jsonl", [])   # the export is gone too
    run_build(settings)
    rows = _ledger(tmp_path / "dataset")
    assert len(rows) == 6 and all(r["in_input"] is False for r in rows)
    assert verify_dataset(tmp_path / "dataset").ok


def test_a_listed_shard_deleted_behind_the_datasets_back_makes_the_build_exit_7(tmp_path):
    _, settings = _cached_dataset(tmp_path, count=10)
    first = run_build(settings)
    victim = tmp_path / "dataset" / first.new_shards[0]
    victim.unlink()
    summary = run_build(settings)
    assert summary.damaged_shards == [first.new_shards[0]] and summary.exit_code == 7
    from shardtools.report import format_summary

    assert "missing or cut" in format_summary(summary)
