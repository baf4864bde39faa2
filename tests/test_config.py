"""A config error stops with one line that names the key and the problem."""

from __future__ import annotations

import pytest

from shardtools.cli import main
from shardtools.config import config_from_dict, load_config
from shardtools.errors import ConfigError


def _build(tmp_path, **changes):
    (tmp_path / "records.jsonl").write_text("")
    build = {"records": ["records.jsonl"], "cache_dir": "cache", "output_dir": "out", **changes}
    return {"build": build}


@pytest.mark.parametrize("changes, key, words", [
    # a misspelt key is unknown, not silently ignored
    ({"shard_max_sampels": 10}, "build.shard_max_sampels", "unknown key"),
    ({"fetch": {"thread": 4}}, "build.fetch.thread", "unknown key"),
    # wrong types name what was expected
    ({"shard_max_samples": "many"}, "build.shard_max_samples", "whole number"),
    ({"fetch": {"requests_per_second": "fast"}}, "build.fetch.requests_per_second", "number"),
    ({"image": {"passthrough": "yes"}}, "build.image.passthrough", "true or false"),
    ({"splits": [0.8, 0.2]}, "build.splits", "mapping"),
    # rules beyond types
    ({"splits": {"train": 0.8, "val": 0.1}}, "build.splits", "sum to 1"),
    ({"splits": {"train": 1.2, "val": -0.2}}, "build.splits.train", "between 0 and 1"),
    ({"image": {"resize": "squash"}}, "build.image.resize", "shorter_side"),
    ({"fetch": {"backoff_schedule_s": []}}, "build.fetch.backoff_schedule_s", "at least one"),
    ({"fetch": {"rate_decrease": 1.5}}, "build.fetch.rate_decrease", "between 0 and 1"),
    ({"fetch": {"ramp_successes": 0}}, "build.fetch.ramp_successes", "greater than 0"),
    ({"records": ["missing.jsonl"]}, "build.records[0]", "file not found"),
    # found in review: names the shard pattern cannot number, shared folders, absurd sizes
    ({"splits": {"tráin": 1.0}}, "build.splits.tráin", "ASCII"),
    ({"output_dir": "cache"}, "build.output_dir", "cache_dir"),
    ({"output_dir": "cache/dataset"}, "build.output_dir", "cache_dir"),
    ({"cache_dir": "out/cache"}, "build.output_dir", "cache_dir"),
    ({"output_dir": ""}, "build.output_dir", "empty"),
    ({"fetch": {"threads": 100000000000}}, "build.fetch.threads", "at most"),
    ({"records": ["records.jsonl", "./records.jsonl"]}, "build.records[1]", "second time"),
])
def test_config_error_names_key_and_problem(tmp_path, changes, key, words):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_build(tmp_path, **changes), base_dir=tmp_path)
    assert caught.value.key == key
    assert words in caught.value.problem


def test_missing_required_key(tmp_path):
    raw = _build(tmp_path)
    del raw["build"]["output_dir"]
    with pytest.raises(ConfigError, match=r"build.output_dir: is required"):
        config_from_dict(raw, base_dir=tmp_path)


def test_relative_paths_are_taken_from_the_config_folder(tmp_path):
    config = config_from_dict(_build(tmp_path), base_dir=tmp_path)
    assert config.build.records == (str(tmp_path / "records.jsonl"),)
    assert config.build.output_dir == str(tmp_path / "out")


def test_numeric_paths_are_names_relative_to_the_config(tmp_path):
    config = config_from_dict(_build(tmp_path, output_dir=2024), base_dir=tmp_path)
    assert config.build.output_dir == str(tmp_path / "2024")


def test_defaults_match_the_documented_contract(tmp_path):
    build = config_from_dict(_build(tmp_path), base_dir=tmp_path).build
    assert build.fetch.backoff_schedule_s == (60.0, 120.0, 300.0, 600.0)
    assert build.fetch.max_backoff_s == 600.0
    assert build.splits == {"train": 0.8, "val": 0.1, "test": 0.1}


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    (tmp_path / "records.jsonl").write_text("")
    config = tmp_path / "bad.yaml"
    config.write_text("build:\n  records: [records.jsonl]\n  cache_dir: c\n  output_dir: o\n"
                      "  splits: {train: 0.5, val: 0.1}\n")
    assert main(["build", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["shardtools: config error: build.splits: fractions must sum to 1, they sum to 0.6"]


def test_invalid_yaml_names_the_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("build:\n  records: [a\n  output_dir: x\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line"):
        load_config(config)


def test_shipped_example_config_is_valid(tmp_path, monkeypatch):
    """configs/inaturalist.yaml parses (its records file is the user's, so fake one)."""
    import shutil
    from pathlib import Path

    example = Path(__file__).parent.parent / "configs" / "inaturalist.yaml"
    (tmp_path / "configs").mkdir()
    shutil.copy(example, tmp_path / "configs" / "inaturalist.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "observations.jsonl").write_text("")
    config = load_config(tmp_path / "configs" / "inaturalist.yaml")
    assert config.build.fetch.requests_per_second == 1
    assert config.train.image_size == 224
