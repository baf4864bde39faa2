"""Records become one sample per URL; splits are a pure function of group key and salt."""

from __future__ import annotations

from collections import Counter

from conftest import write_jsonl
from shardtools.errors import RecordError
from shardtools.records import read_records
from shardtools.samples import collapse
from shardtools.splits import split_for


def _read(path):
    return list(read_records([path], "image_url", "taxon_id", "observation_id"))


def test_malformed_lines_are_reported_with_line_number_and_the_rest_read(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"image_url": "http://h/a.jpg", "taxon_id": 1},
        '{"image_url": "http://h/b.jpg", "taxon_id": ',
        "[1, 2]",
        {"taxon_id": 3},
        {"image_url": "ftp://h/c.jpg", "taxon_id": 3},
        {"image_url": "http://h/d.jpg"},
        {"image_url": "http://h/e.jpg", "taxon_id": 5.0, "observation_id": 9},
    ])
    items = _read(path)
    errors = {e.line_number: e.problem for e in items if isinstance(e, RecordError)}
    assert set(errors) == {2, 3, 4, 5, 6}
    assert "not valid JSON" in errors[2]
    assert "JSON object" in errors[3]
    assert "missing field 'image_url'" in errors[4]
    assert "only http and https" in errors[5]
    assert "missing field 'taxon_id'" in errors[6]
    good = [r for r in items if not isinstance(r, RecordError)]
    assert [(r.line_number, r.label, r.group) for r in good] == [(1, "1", None), (7, "5", "9")]


def test_bad_utf8_costs_one_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"image_url": "http://h/\xff.jpg", "taxon_id": 1}\n'
                     b'{"image_url": "http://h/ok.jpg", "taxon_id": 2}\n')
    items = _read(path)
    assert isinstance(items[0], RecordError) and items[0].line_number == 1
    assert items[1].url == "http://h/ok.jpg"


def test_one_sample_per_url_and_first_record_sets_the_label(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"image_url": "http://h/a.jpg", "taxon_id": 1},
        {"image_url": "http://h/a.jpg", "taxon_id": 1},
        {"image_url": "http://h/a.jpg", "taxon_id": 2},
        {"image_url": "http://h/b.jpg", "taxon_id": 2},
    ])
    samples = collapse(_read(path))
    assert len(samples) == 2
    a = next(s for s in samples.values() if s.url.endswith("a.jpg"))
    assert a.label == "1"
    assert len(a.duplicates) == 2
    assert [r.line_number for r in a.conflicting] == [3]


def test_split_is_deterministic_and_follows_fractions():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    keys = [f"group:{i}" for i in range(20000)]
    first = [split_for(k, "salt", fractions) for k in keys]
    assert first == [split_for(k, "salt", fractions) for k in keys]
    counts = Counter(first)
    assert abs(counts["train"] / len(keys) - 0.8) < 0.02
    assert abs(counts["val"] / len(keys) - 0.1) < 0.02
    other_salt = [split_for(k, "other", fractions) for k in keys]
    assert other_salt != first


def test_zero_fraction_split_gets_nothing():
    fractions = {"train": 1.0, "val": 0.0, "test": 0.0}
    assert {split_for(f"k{i}", "s", fractions) for i in range(1000)} == {"train"}
