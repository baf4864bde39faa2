"""Builders for the durability tests: configs on disk, builds as real subprocesses, and
what a dataset directory holds, read from its tars (not from the index the build wrote).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

# tests/conftest.py holds the shared builders. Loaded by path under a name of its own:
# `from conftest import ...` finds whichever conftest module pytest imported last.
_spec = importlib.util.spec_from_file_location(
    "shardtools_tests_builders", Path(__file__).resolve().parent.parent / "conftest.py")
builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(builders)
photo_variants = builders.photo_variants
write_jsonl = builders.write_jsonl

# A build subprocess that has not ended after this long is stuck; fail instead of hanging.
BUILD_TIMEOUT_S = 120

REPO = Path(__file__).resolve().parent.parent.parent


def write_config(folder: Path, records, cache_dir: Path, output_dir: Path, **overrides) -> Path:
    """A build config in `folder`, with the small, fast settings these tests use."""
    fetch = {"threads": 4, "requests_per_second": 1000, "burst": 50, "timeout_s": 5,
             "max_retries": 0, **overrides.pop("fetch", {})}
    build = {
        "records": [str(r) for r in (records if isinstance(records, list) else [records])],
        "url_field": "image_url", "label_field": "taxon_id", "group_field": "observation_id",
        "cache_dir": str(cache_dir), "output_dir": str(output_dir),
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2}, "split_salt": "durability",
        "shard_max_samples": 3, "image": {"size": 32, "processes": 0}, "fetch": fetch, **overrides,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"build": build}))
    return path


def build_env(crash_at: str | None = None, trace: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDTOOLS_CRASH")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if crash_at:
        env["SHARDTOOLS_CRASH_AT"] = crash_at
    if trace:
        env["SHARDTOOLS_CRASH_TRACE"] = str(trace)
    return env


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "shardtools", "-q", *map(str, args)]


def start_build(config: Path, crash_at: str | None = None, trace: Path | None = None):
    return subprocess.Popen(cli("build", "--config", config), env=build_env(crash_at, trace),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_build(config: Path, crash_at: str | None = None, trace: Path | None = None):
    """Run a build to its end (or its crash point); returns the CompletedProcess."""
    return subprocess.run(cli("build", "--config", config), env=build_env(crash_at, trace),
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)


def manifest(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "manifest.json").read_text())


def ledger(dataset_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (dataset_dir / "ledger.jsonl").read_text().splitlines()]


def samples_on_disk(dataset_dir: Path) -> dict[str, tuple[str, str]]:
    """key -> (split, label text) for every sample in every listed shard, read from the
    tars themselves; a key found twice fails here."""
    labels = {c["id"]: c["label"] for c in
              json.loads((dataset_dir / "classes.json").read_text())["classes"]}
    found = {}
    for split, entry in manifest(dataset_dir)["splits"].items():
        for shard in entry["shards"]:
            with tarfile.open(dataset_dir / shard["name"]) as tar:
                for member in tar:
                    key, extension = member.name.split(".", 1)
                    if extension == "cls":
                        assert key not in found, f"{key} twice"
                        found[key] = (split, labels[int(tar.extractfile(member).read())])
    return found


def ledger_view(dataset_dir: Path) -> dict[str, tuple]:
    """The ledger without what may differ between two correct builds of one input: which
    shard a sample landed in, and whether its bytes came from the cache or the network."""
    return {row["record"]: (row["status"], row.get("reason"), row.get("key"), row.get("split"),
                            row.get("sample"), row.get("note"), row.get("label_conflict"))
            for row in ledger(dataset_dir)}


def files_with(dataset_dir: Path, mark: str) -> list[str]:
    return sorted(str(p.relative_to(dataset_dir)) for p in dataset_dir.rglob(f"*{mark}*"))
