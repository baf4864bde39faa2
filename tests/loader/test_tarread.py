"""The loader's own tar reader, against archives written by Python's tarfile in each format."""

from __future__ import annotations

import io
import tarfile

import pytest

from loaders.tarread import ReadReport, read_samples


def _tar(members, fmt=tarfile.USTAR_FORMAT, end=True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if not end:  # drop the two zero end-of-archive blocks and tarfile's record padding
        data = data.rstrip(b"\0")
        data += b"\0" * (-len(data) % 512)
    return data


def _read(data: bytes):
    report = ReadReport()
    return list(read_samples(io.BytesIO(data), report)), report


def _sample(key, label=b"3", image=b"\xff\xd8 image \xff\xd9", extra=()):
    return [(f"{key}.jpg", image), (f"{key}.cls", label), *extra]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_samples_come_out_in_order_with_their_members(fmt):
    data = _tar(_sample("a") + _sample("b", b"7") + _sample("c", extra=[("c.json", b"{}")]), fmt)
    samples, report = _read(data)
    assert [s["__key__"] for s in samples] == ["a", "b", "c"]
    assert [s["cls"] for s in samples] == [b"3", b"7", b"3"]
    assert samples[2]["json"] == b"{}" and "json" not in samples[0]
    assert report.complete == 3 and report.damage is None and report.incomplete == []


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_keep_their_directories_and_keys(fmt):
    key = "dir/" + "x" * 150 + "/" + "k" * 120
    samples, report = _read(_tar(_sample(key), fmt))
    assert [s["__key__"] for s in samples] == [key] and report.damage is None


def test_ustar_prefix_names_are_joined():
    key = "p" * 120 + "/sample"  # too long for the name field: tarfile uses the prefix
    samples, _ = _read(_tar(_sample(key), tarfile.USTAR_FORMAT))
    assert [s["__key__"] for s in samples] == [key]


def test_unknown_members_are_skipped_and_extensions_are_case_blind():
    members = [("a.JPG", b"img"), ("a.cls", b"1"), ("a.pyd", b"never"), ("a.pickle", b"x"),
               ("b.jpeg", b"img"), ("b.cls", b"2"), ("README", b"no extension")]
    samples, _ = _read(_tar(members))
    assert [sorted(s) for s in samples] == [["__key__", "cls", "image"]] * 2


def test_a_sample_without_image_or_class_is_reported_incomplete():
    samples, report = _read(_tar([("a.jpg", b"img"), ("b.cls", b"1")] + _sample("c")))
    assert [s["__key__"] for s in samples] == ["c"]
    assert report.incomplete == ["a", "b"]


@pytest.mark.parametrize("cut", [False, True])
def test_a_member_over_the_skip_threshold_is_skipped_by_seeking(cut):
    # Seekable streams without a file number too (io.BytesIO, some remote readers).
    data = _tar([("a.bin", b"z" * (1 << 17))] + _sample("a"))
    samples, report = _read(data[:70_000] if cut else data)
    assert [s["__key__"] for s in samples] == ([] if cut else ["a"])
    assert (report.damage is not None) == cut


@pytest.mark.parametrize("cut", ["in a header", "in a member", "no end blocks", "checksum"])
def test_damage_stops_with_an_offset_and_keeps_what_came_before(cut):
    whole = _tar(_sample("a") + _sample("b"))
    second_header = len(_tar(_sample("a"), end=False))  # where b.jpg's header starts
    data = {"in a header": whole[:second_header + 100],
            "in a member": whole[:second_header + 512 + 3],
            "no end blocks": _tar(_sample("a") + _sample("b"), end=False),
            "checksum": whole[:second_header] + b"X" + whole[second_header + 1:]}[cut]
    samples, report = _read(data)
    expected = ["a", "b"] if cut == "no end blocks" else ["a"]
    assert [s["__key__"] for s in samples] == expected
    assert report.damage is not None
    assert report.damage.offset == (len(data) if cut == "no end blocks" else second_header)


def test_not_a_tar_is_damage_at_byte_zero():
    samples, report = _read(b"<html>not found</html>" + b"\0" * 600)
    assert samples == [] and report.damage.offset == 0
