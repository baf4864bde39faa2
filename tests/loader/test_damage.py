"""A damaged shard is logged with its name and byte offset and skipped; the rest arrives."""

from __future__ import annotations

import io
import logging
import pickle
import shutil
import tarfile

import pytest

from loaders import make_loader
from loaders.tarread import ReadReport, read_samples

from .datasets import shards, truth


def _copy(dataset, tmp_path):
    target = tmp_path / "dataset"
    shutil.copytree(dataset, target)
    return target


def _header_offsets(path):
    with tarfile.open(path) as tar:
        return [(m.offset, m.offset_data, m.size, m.name) for m in tar]


def _read_val(dataset, **kwargs):
    loader = make_loader(dataset, "val", batch_size=3, image_size=16, keys=True, **kwargs)
    return [k for _, _, keys in loader for k in keys], loader


def _cut_points(path):
    """Byte offsets that cut a shard inside a header, inside a member, and between samples."""
    members = _header_offsets(path)
    offset, data_at, size, _ = members[len(members) // 2]
    return {"in header": offset + 100, "in member": data_at + size // 2,
            "between samples": members[6][0]}


@pytest.mark.parametrize("where", ["in header", "in member", "between samples"])
def test_a_cut_shard_is_logged_and_skipped_and_every_other_sample_arrives(many, tmp_path, caplog,
                                                                          where):
    dataset = _copy(many, tmp_path)
    victim = shards(dataset, "val")[2]
    path = dataset / victim["name"]
    cut = _cut_points(path)[where]
    with open(path, "r+b") as stream:
        stream.truncate(cut)
    expected = truth(many, "val")
    with caplog.at_level(logging.WARNING, logger="loaders"):
        keys, loader = _read_val(dataset, num_workers=0)
    others = {k for k, (_, shard) in expected.items() if shard != victim["name"]}
    assert others <= set(keys) and len(keys) == len(set(keys))
    survivors = len(keys) - len(others)
    assert loader.skipped == victim["num_samples"] - survivors > 0
    lines = [r.getMessage() for r in caplog.records if "damaged shard" in r.getMessage()]
    assert len(lines) == 1 and victim["name"] in lines[0]
    # The offset named is where reading stopped: at or before the cut, past the last good sample.
    offset = int(lines[0].split(" at byte ")[1].split(":")[0])
    good_end = max(data_at + size for _, data_at, size, _ in _header_offsets(many / victim["name"])
                   if data_at + size <= cut)
    assert good_end <= offset <= cut


def test_garbage_and_missing_shards_are_skipped_not_fatal(many, tmp_path, caplog):
    dataset = _copy(many, tmp_path)
    garbage, missing = shards(dataset, "val")[0], shards(dataset, "val")[1]
    (dataset / garbage["name"]).write_bytes(b"<html>not a tar</html>" * 40)
    (dataset / missing["name"]).unlink()
    with caplog.at_level(logging.WARNING, logger="loaders"):
        keys, loader = _read_val(dataset, num_workers=0)
    lost = {garbage["name"], missing["name"]}
    assert sorted(keys) == sorted(k for k, (_, s) in truth(many, "val").items() if s not in lost)
    assert loader.skipped == garbage["num_samples"] + missing["num_samples"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert garbage["name"] in messages and missing["name"] in messages and "at byte 0" in messages


def test_training_with_a_damaged_shard_still_gives_full_batches(many, tmp_path):
    dataset = _copy(many, tmp_path)
    victim = dataset / shards(dataset, "train")[0]["name"]
    victim.write_bytes(victim.read_bytes()[:700])
    loader = make_loader(dataset, "train", batch_size=4, num_workers=2, image_size=16)
    sizes = [len(labels) for _, labels in loader]
    assert sizes == [4] * len(loader) and loader.skipped > 0


class _Bomb:
    """Unpickling this would create a file: proof that the loader never unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_unknown_members_are_never_decoded(many, tmp_path):
    jpeg = next(iter(_first_sample(many)))
    marker = tmp_path / "unpickled"
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        long_key = "k" * 150  # beyond ustar's 100 bytes: a pax path record
        for key in ("plain", long_key):
            _member(tar, f"{key}.pyd", pickle.dumps(_Bomb(marker)))
            _member(tar, f"{key}.jpg", jpeg)
            _member(tar, f"{key}.cls", b"3")
            _member(tar, f"{key}.pickle", pickle.dumps(_Bomb(marker)))
    stream.seek(0)
    report = ReadReport()
    samples = list(read_samples(stream, report))
    assert [s["__key__"] for s in samples] == ["plain", long_key]
    assert all(set(s) == {"__key__", "image", "cls"} for s in samples)
    assert report.damage is None and not marker.exists()


def _first_sample(dataset):
    path = dataset / shards(dataset, "val")[0]["name"]
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                yield tar.extractfile(member).read()


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_skipped_counts_each_lost_sample_once_when_workers_share_a_shard(single, tmp_path,
                                                                         num_workers):
    """One shard read by several workers (sample striding): each counts only the lost
    positions it owns, so the total is the real loss (found in review: it was multiplied)."""
    dataset = _copy(single, tmp_path)
    victim = shards(dataset, "val")[0]
    path = dataset / victim["name"]
    with open(path, "r+b") as stream:
        stream.truncate(_cut_points(path)["in member"])
    keys, loader = _read_val(dataset, num_workers=num_workers)
    assert loader.skipped == victim["num_samples"] - len(keys) > 0


@pytest.mark.parametrize("bad", ["label past int64", "label not a number", "image not an image",
                                 "image cut short"])
def test_a_bad_sample_in_a_sound_shard_is_skipped_and_counted(many, tmp_path, caplog, bad):
    # A hand-made shard: every sample good but one. The loader skips that one with a log
    # line naming its key, counts it, and delivers the rest.
    dataset = _copy(many, tmp_path)
    shard = dataset / shards(dataset, "val")[0]["name"]
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    victim = members[0][0].partition(".")[0]
    broken = {"label past int64": ("cls", b"99999999999999999999999"),
              "label not a number": ("cls", b"three"),
              "image not an image": ("jpg", b"\xff\xd8 not a jpeg \xff\xd9"),
              "image cut short": ("jpg", None)}[bad]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            key, _, extension = name.partition(".")
            if key == victim and extension == broken[0]:
                data = broken[1] if broken[1] is not None else data[: len(data) // 2]
            _member(tar, name, data)
    expected = set(truth(many, "val")) - {victim}
    with caplog.at_level(logging.WARNING, logger="loaders.stream"):
        keys, loader = _read_val(dataset, num_workers=0)  # in-process: its log is captured
    assert set(keys) == expected and len(keys) == len(expected)
    assert loader.skipped == 1
    assert any(victim in record.getMessage() and "does not decode" in record.getMessage()
               for record in caplog.records)
    keys, loader = _read_val(dataset, num_workers=1, persistent_workers=False)  # a worker
    assert set(keys) == expected and loader.skipped == 1
