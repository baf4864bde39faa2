"""`shardtools verify` catches each kind of damage, one test each, naming shard and offset."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from shardtools.build import run_build
from shardtools.cache import ImageCache
from shardtools.verify import format_report, verify_dataset

from .helpers import (BUILD_TIMEOUT_S, build_env, builders, cli, manifest, photo_variants,
                      write_config, write_jsonl)
from .helpers import run_build as run_build_process

EXIT_INVALID = 7


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small, sound dataset; each test damages its own copy."""
    root = tmp_path_factory.mktemp("verify")
    urls = [f"http://images.invalid/v/{i}.jpg" for i in range(14)]
    cache = ImageCache(root / "cache")
    for url, data in zip(urls, photo_variants(len(urls), seed=31, max_side=64)):
        cache.store(url, data)
    write_jsonl(root / "records.jsonl", [{"image_url": u, "taxon_id": i % 3, "observation_id": u}
                                         for i, u in enumerate(urls)])
    run_build(builders.build_settings(root, shard_max_samples=3))
    assert verify_dataset(root / "dataset").ok
    return root


@pytest.fixture
def dataset(built, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(built / "dataset", copy)
    return copy


def _shards(dataset: Path) -> list[dict]:
    return [{**s, "split": split} for split, e in manifest(dataset)["splits"].items()
            for s in e["shards"]]


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _write_tar(path: Path, members) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def _relist(dataset: Path, name: str) -> None:
    """Make manifest and index agree with the bytes now in `name` (size, sha, samples), so
    that only the damage a test made inside the tar is left to find."""
    data = (dataset / name).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    keys = []
    for member, _ in _members(dataset / name):
        key = member.split(".")[0]
        if key not in keys:
            keys.append(key)
    m = manifest(dataset)
    index_lines = [json.loads(x) for x in (dataset / "shard_index.jsonl").read_text().splitlines()]
    known = {s[0]: s for line in index_lines for s in line["samples"]}
    for split in m["splits"].values():
        for shard in split["shards"]:
            if shard["name"] == name:
                split["num_bytes"] += len(data) - shard["num_bytes"]
                split["num_samples"] += len(keys) - shard["num_samples"]
                shard.update(num_bytes=len(data), sha256=sha, num_samples=len(keys))
    for line in index_lines:
        if line["shard"] == name:
            line.update(sha256=sha, samples=[known[k] for k in keys])
    (dataset / "manifest.json").write_text(json.dumps(m))
    (dataset / "shard_index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in index_lines))


def _problems(dataset: Path) -> list[str]:
    report = verify_dataset(dataset)
    assert not report.ok
    return [str(x) for x in report.problems]


def test_sound_dataset_passes_from_the_command_line(dataset):
    done = subprocess.run(cli("verify", dataset), capture_output=True, text=True,
                          env=build_env(), timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("samples: OK")


def test_shard_cut_in_the_middle_of_a_member(dataset):
    shard = _shards(dataset)[0]
    path = dataset / shard["name"]
    data = path.read_bytes()
    # Cut halfway through the first image: its header is at offset 0, its data after it.
    name, image = _members(path)[0]
    cut = 512 + len(image) // 2
    path.write_bytes(data[:cut])
    problems = _problems(dataset)
    assert f"{shard['name']}: cut at offset {cut}: in member {name} (header at offset 0), " \
           f"which needs {len(image)} bytes and has {len(image) // 2}" in problems, problems
    assert any("bytes on disk, the manifest says" in p for p in problems)

    done = subprocess.run(cli("verify", dataset), capture_output=True, text=True,
                          env=build_env(), timeout=BUILD_TIMEOUT_S)
    assert done.returncode == EXIT_INVALID
    assert f"{shard['name']}: cut at offset {cut}" in done.stdout


def test_sample_whose_members_are_not_contiguous(dataset):
    shard = _shards(dataset)[0]
    members = _members(dataset / shard["name"])
    assert len(members) >= 6
    # a.jpg a.cls b.jpg a.json b.cls b.json
    members[2], members[3] = members[3], members[2]
    moved = members[3][0]
    _write_tar(dataset / shard["name"], members)
    _relist(dataset, shard["name"])
    problems = _problems(dataset)
    key = members[0][0].split(".")[0]
    offset = 3 * 512 + sum((len(d) + 511) // 512 * 512 for _, d in members[:3])
    assert f"{shard['name']}: offset {offset}: {moved} is apart from the other members of " \
           f"sample {key} (members not contiguous)" in problems, problems


def test_key_present_twice(dataset):
    first, second = _shards(dataset)[:2]
    borrowed = _members(dataset / first["name"])[:3]
    key = borrowed[0][0].split(".")[0]
    _write_tar(dataset / second["name"], _members(dataset / second["name"]) + borrowed)
    _relist(dataset, second["name"])
    problems = _problems(dataset)
    assert any(p.startswith(f"{second['name']}: key {key} at offset ")
               and p.endswith(f"is also in {first['name']}") for p in problems), problems


def test_key_present_twice_within_one_shard(dataset):
    shard = _shards(dataset)[0]
    members = _members(dataset / shard["name"])
    _write_tar(dataset / shard["name"], members + members[:3])
    problems = _problems(dataset)
    key = members[0][0].split(".")[0]
    assert any(f"{members[0][0]} is apart from the other members of sample {key}" in p
               for p in problems), problems


def test_shard_missing_from_disk(dataset):
    shard = _shards(dataset)[-1]
    (dataset / shard["name"]).unlink()
    assert f"{shard['name']}: listed in the manifest but missing from disk" in _problems(dataset)


def test_shard_on_disk_the_manifest_does_not_list(dataset):
    shard = _shards(dataset)[0]
    stray = f"{shard['split']}/{shard['split']}-000099.tar"
    shutil.copy(dataset / shard["name"], dataset / stray)
    assert f"{stray}: on disk but not listed in the manifest" in _problems(dataset)


def test_changed_byte_in_a_listed_shard(dataset):
    shard = _shards(dataset)[0]
    path = dataset / shard["name"]
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any(p.startswith(f"{shard['name']}: sha256 differs") for p in _problems(dataset))


def test_same_image_bytes_in_two_splits(dataset):
    shards = _shards(dataset)
    train = next(s for s in shards if s["split"] == "train")
    other = next(s for s in shards if s["split"] != "train")
    # Give a sample of another split the content hash of a train sample.
    train_meta = json.loads(_members(dataset / train["name"])[2][1])
    members = _members(dataset / other["name"])
    meta = json.loads(members[2][1])
    meta["content_sha256"] = train_meta["content_sha256"]
    members[2] = (members[2][0], json.dumps(meta).encode())
    _write_tar(dataset / other["name"], members)
    _relist(dataset, other["name"])
    lines = (dataset / "shard_index.jsonl").read_text().splitlines()
    fixed = []
    for raw in lines:  # and the index, so only the leak is left
        line = json.loads(raw)
        for sample in line["samples"]:
            if sample[0] == members[0][0].split(".")[0]:
                sample[2] = train_meta["content_sha256"]
        fixed.append(json.dumps(line))
    (dataset / "shard_index.jsonl").write_text("\n".join(fixed) + "\n")
    problems = _problems(dataset)
    assert any("one image in two splits" in p for p in problems), problems


def test_shard_listed_twice_and_an_empty_shard(dataset):
    m = manifest(dataset)
    split = m["splits"]["train"]
    split["shards"].append(dict(split["shards"][0]))
    split["shards"].append({"name": "train/train-000077.tar", "num_samples": 0,
                            "num_bytes": 0, "sha256": "", "build": 1})
    (dataset / "manifest.json").write_text(json.dumps(m))
    problems = _problems(dataset)
    assert f"{split['shards'][0]['name']}: listed twice in the manifest" in problems
    assert "train/train-000077.tar: listed with no samples (an empty shard)" in problems


def test_counts_that_do_not_add_up(dataset):
    m = manifest(dataset)
    m["splits"]["val"]["num_samples"] += 1
    m["class_counts"]["train"]["0"] += 2
    (dataset / "manifest.json").write_text(json.dumps(m))
    problems = _problems(dataset)
    assert any(p.startswith("manifest.json: split val: num_samples is ") for p in problems)
    assert "manifest.json: split train: class_counts disagree with the shards for class ids 0" \
        in problems


def test_ledger_and_shards_disagree(dataset):
    rows = [json.loads(x) for x in (dataset / "ledger.jsonl").read_text().splitlines()]
    shards = _shards(dataset)
    moved = rows[0]
    wrong_shard = next(s["name"] for s in shards if s["name"] != moved["shard"])
    moved["shard"] = wrong_shard
    dropped = rows.pop()
    (dataset / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = _problems(dataset)
    assert f"ledger.jsonl line 1: says {moved['key']} is in {wrong_shard}, which does not " \
           "hold it" in problems
    assert f"{dropped['shard']}: holds {dropped['key']}, which has no row in the ledger" in problems


def test_build_killed_while_writing_the_ledger_is_noted_not_failed(tmp_path):
    """The ledger is the last thing a build writes; killed then, it still describes the
    build before. verify says why instead of reporting every new sample as missing."""
    urls = [f"http://images.invalid/k/{i}.jpg" for i in range(8)]
    cache = ImageCache(tmp_path / "cache")
    for url, data in zip(urls, photo_variants(len(urls), seed=33, max_side=64)):
        cache.store(url, data)
    records = tmp_path / "records.jsonl"
    write_jsonl(records, [{"image_url": u, "taxon_id": 1, "observation_id": u} for u in urls[:4]])
    config = write_config(tmp_path, records, tmp_path / "cache", tmp_path / "dataset")
    assert run_build_process(config).returncode == 0
    write_jsonl(records, [{"image_url": u, "taxon_id": 1, "observation_id": u} for u in urls])
    killed = run_build_process(config, crash_at="ledger.jsonl:synced:1")
    assert killed.returncode == -9

    report = verify_dataset(tmp_path / "dataset")
    assert report.ok, format_report(report)
    assert "did not finish" in report.unfinished_build
    assert "killed or crashed" in report.unfinished_build
    assert any("not yet in the ledger as written" in str(n) for n in report.notes)
    assert any(str(n).endswith("temporary file of an unfinished write") for n in report.notes)
    strict = verify_dataset(tmp_path / "dataset", strict=True)
    assert not strict.ok

    assert run_build_process(config).returncode == 0  # the next build reconciles
    final = verify_dataset(tmp_path / "dataset")
    assert final.ok and not final.notes and final.unfinished_build is None
    history = manifest(tmp_path / "dataset")["builds"]
    assert [(b["build"], b["status"]) for b in history] == \
        [(1, "complete"), (2, "interrupted"), (3, "complete")]
    assert history[2]["resumed"] == [2]
