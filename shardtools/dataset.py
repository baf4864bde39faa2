"""The dataset directory: the contract between the build and the loader.

    DIR/
      manifest.json      format version, shards per split (samples, bytes, sha256),
                         class count, per-class counts, history of builds
      classes.json       the class index (label <-> id), ids never change
      shard_index.jsonl  one line per listed shard: the samples it holds, in order
      ledger.jsonl       one line per input record: written (where), pending or rejected (why)
      stats/             one file of counters per build
      train/ val/ test/  the shards: <split>-NNNNNN.tar
      .lock              held (flock) by the one build allowed to write here

Order of writes for every shard: tar renamed into place -> its shard_index line appended
and fsynced -> manifest rewritten atomically. The manifest alone decides what is listed;
an index line or a tar it does not list is left over from an interrupted build and is
ignored (and the tar removed) when the next build opens the directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import TEMP_MARK, atomic_writer, write_json_atomic
from .classes import ClassIndex
from .errors import DatasetError, LockedError
from .shards import SHARD_NAME, ClosedShard

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSES = "classes.json"
SHARD_INDEX = "shard_index.jsonl"
LEDGER = "ledger.jsonl"
STATS_DIR = "stats"
LOCK = ".lock"


@dataclass
class WrittenSample:
    key: str
    split: str
    shard: str
    class_id: int
    content_sha256: str


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{dataset_dir}: no {MANIFEST}; is this a dataset built by shardtools?") from None
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {version!r}, this shardtools reads {FORMAT_VERSION}")
    return manifest


def empty_manifest(split_names) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "num_classes": 0,
        "splits": {name: {"num_samples": 0, "num_bytes": 0, "shards": []} for name in split_names},
        "class_counts": {name: {} for name in split_names},
        "num_pending": 0,
        "num_rejected": 0,
        "builds": [],
    }


class DatasetLock:
    """An exclusive flock on DIR/.lock. The kernel drops it when the holder dies, however it
    dies, so a lock left by a killed build never blocks the next one."""

    def __init__(self, dataset_dir: Path):
        self.path = dataset_dir / LOCK
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.path.parent} is being built by {holder}; wait for that "
                              "build to finish (only one build may write a dataset at a time)") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info):
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing releases the flock
        self._fd = None


@dataclass
class DatasetState:
    """What a dataset directory holds, loaded for a build to extend."""

    dataset_dir: Path
    manifest: dict
    classes: ClassIndex
    written: dict[str, WrittenSample] = field(default_factory=dict)   # key -> sample
    by_content: dict[str, str] = field(default_factory=dict)          # content sha -> key
    previous_ledger: dict[str, dict] = field(default_factory=dict)    # record id -> row

    @classmethod
    def open(cls, dataset_dir: Path, split_names) -> "DatasetState":
        """Load the directory (or start an empty one) and clear what an interrupted build
        left behind. Call with the DatasetLock held."""
        dataset_dir.mkdir(parents=True, exist_ok=True)
        if (dataset_dir / MANIFEST).exists():
            manifest = read_manifest(dataset_dir)
            for name in split_names:
                manifest["splits"].setdefault(name, {"num_samples": 0, "num_bytes": 0, "shards": []})
                manifest["class_counts"].setdefault(name, {})
        else:
            manifest = empty_manifest(split_names)
        state = cls(dataset_dir, manifest, ClassIndex.load(dataset_dir / CLASSES))
        state._load_shard_index()
        state._remove_leftovers()
        state._load_previous_ledger()
        return state

    # --- reading ----------------------------------------------------------------------

    def listed_shards(self) -> dict[str, dict]:
        return {entry["name"]: entry for split in self.manifest["splits"].values()
                for entry in split["shards"]}

    def next_shard_index(self, split: str) -> int:
        highest = -1
        for entry in self.manifest["splits"][split]["shards"]:
            match = SHARD_NAME.match(Path(entry["name"]).name)
            highest = max(highest, int(match["index"]))
        return highest + 1

    def _load_shard_index(self) -> None:
        listed = self.listed_shards()
        path = self.dataset_dir / SHARD_INDEX
        if not path.exists():
            if listed:
                raise DatasetError(f"{path} is missing but the manifest lists {len(listed)} shards")
            return
        seen = set()
        valid_lines = []
        num_lines = 0
        with open(path, "rb") as stream:
            for raw in stream:
                num_lines += 1
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut by a crash: its shard was never listed
                entry = listed.get(line.get("shard"))
                if entry is None or entry["sha256"] != line.get("sha256") or line["shard"] in seen:
                    continue  # from an interrupted build, or a rewritten name
                seen.add(line["shard"])
                valid_lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
                split = line["split"]
                for key, class_id, content_sha in line["samples"]:
                    self.written[key] = WrittenSample(key, split, line["shard"], class_id, content_sha)
                    self.by_content.setdefault(content_sha, key)
        missing = set(listed) - seen
        if missing:
            raise DatasetError(f"{path} has no entry for listed shards: {', '.join(sorted(missing)[:5])}")
        if len(valid_lines) != num_lines or (valid_lines and not raw.endswith(b"\n")):
            # Rewrite the index without leftovers so appends start from a clean file.
            with atomic_writer(path, "wb") as stream:
                stream.writelines(valid_lines)

    def _remove_leftovers(self) -> None:
        listed = self.listed_shards()
        for split in self.manifest["splits"]:
            folder = self.dataset_dir / split
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                name = f"{split}/{path.name}"
                if TEMP_MARK in path.name or (SHARD_NAME.match(path.name) and name not in listed):
                    logger.warning("removing %s, left by an interrupted build; its samples will "
                                   "be written again", name)
                    path.unlink()
        for path in self.dataset_dir.iterdir():
            if TEMP_MARK in path.name:
                path.unlink()

    def _load_previous_ledger(self) -> None:
        path = self.dataset_dir / LEDGER
        if not path.exists():
            return
        with open(path, "rb") as stream:
            for raw in stream:
                row = json.loads(raw)
                self.previous_ledger[row["record"]] = row

    # --- writing ----------------------------------------------------------------------

    def save_classes(self) -> None:
        self.classes.save(self.dataset_dir / CLASSES)
        self.manifest["num_classes"] = len(self.classes)

    def list_shard(self, split: str, closed: ClosedShard, build_id: int) -> None:
        """Make a renamed shard part of the dataset: index line first, then the manifest."""
        line = {"shard": closed.name, "split": split, "sha256": closed.sha256,
                "samples": [list(s) for s in closed.samples]}
        with open(self.dataset_dir / SHARD_INDEX, "ab") as stream:
            stream.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
        split_entry = self.manifest["splits"][split]
        split_entry["shards"].append({"name": closed.name, "num_samples": closed.num_samples,
                                      "num_bytes": closed.num_bytes, "sha256": closed.sha256,
                                      "build": build_id})
        split_entry["num_samples"] += closed.num_samples
        split_entry["num_bytes"] += closed.num_bytes
        counts = self.manifest["class_counts"][split]
        for key, class_id, content_sha in closed.samples:
            counts[str(class_id)] = counts.get(str(class_id), 0) + 1
            self.written[key] = WrittenSample(key, split, closed.name, class_id, content_sha)
            self.by_content.setdefault(content_sha, key)
        self.save_manifest()

    def save_manifest(self) -> None:
        write_json_atomic(self.dataset_dir / MANIFEST, self.manifest)

    def save_ledger(self, rows) -> None:
        with atomic_writer(self.dataset_dir / LEDGER, "wb") as stream:
            for row in rows:
                stream.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
                stream.write(b"\n")

    def save_stats(self, build_id: int, stats: dict) -> Path:
        folder = self.dataset_dir / STATS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"build-{build_id:04d}.json"
        write_json_atomic(path, stats)
        return path
