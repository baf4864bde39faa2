"""Records become one sample per URL; splits are a pure function of group key and salt."""

from __future__ import annotations

from collections import Counter

from conftest import write_jsonl
from shardtools.errors import RecordError
from shardtools.records import read_records
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


def test_every_kind_of_bad_line_costs_only_that_line(tmp_path):
    """Hostile content in one line (found in review) becomes a RecordError for that line."""
    path = tmp_path / "r.jsonl"
    lines = [
        '{"image_url": "http://[::1/x.jpg", "taxon_id": 1}',              # bad IPv6 host
        '{"image_url": "http://h/a.jpg", "taxon_id": 1, "n": ' + "9" * 5000 + "}",  # huge int
        '{"image_url": "http://h/\\ud800.jpg", "taxon_id": 1}',           # lone surrogate
        '{"image_url": "http://h/b.jpg", "taxon_id": "\\ud83d"}',         # half an emoji
        '{"image_url": "http://h/c.jpg", "taxon_id": 1, "note": "\\udc00"}',
        '{"image_url": "http://h/ok.jpg", "taxon_id": 1}',
    ]
    path.write_text("\n".join(lines) + "\n")
    items = _read(path)
    errors = [e.line_number for e in items if isinstance(e, RecordError)]
    assert errors == [1, 2, 3, 4, 5]
    assert [r.url for r in items if not isinstance(r, RecordError)] == ["http://h/ok.jpg"]


def test_superscript_digit_labels_are_ordered_as_text():
    """'²'.isdigit() is true but int('²') fails: such labels sort as text."""
    from shardtools.classes import ClassIndex

    index = ClassIndex()
    assert index.add_new(["10", "²", "9", "-1"]) == ["-1", "9", "10", "²"]


def test_class_ids_do_not_depend_on_the_hash_seed(tmp_path):
    """Labels equal as numbers ("7", "07") get ids in the same order in every process."""
    import subprocess
    import sys

    code = ("from shardtools.classes import ClassIndex; i = ClassIndex(); "
            "print(i.add_new(['07', '7', '007', '-0', '0', 'x']))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PYTHONHASHSEED": str(seed), "PATH": ""}, check=True).stdout
               for seed in range(6)}
    assert outputs == {"['-0', '0', '007', '07', '7', 'x']\n"}


def test_csv_with_bom_extra_columns_bad_bytes_and_multiline_fields(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(
        b"\xef\xbb\xbfimage_url,taxon_id,note\n"            # byte-order mark
        b"http://h/a.jpg,1,fine\n"                          # line 2
        b"http://h/b.jpg,2,too,many\n"                      # line 3: extra column
        b"http://h/\xff.jpg,3,bad byte\n"                   # line 4: not UTF-8
        b'http://h/c.jpg,4,"two\nlines"\n'                  # lines 5-6: reported at 5
        b"http://h/d.jpg,5,last\n")                         # line 7
    items = list(read_records([path], "image_url", "taxon_id", None))
    good = {r.line_number: r.url for r in items if not isinstance(r, RecordError)}
    bad = {e.line_number: e.problem for e in items if isinstance(e, RecordError)}
    assert good == {2: "http://h/a.jpg", 5: "http://h/c.jpg", 7: "http://h/d.jpg"}
    assert set(bad) == {3, 4}
    assert "more fields" in bad[3] and "not valid Unicode" in bad[4]
