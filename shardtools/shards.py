"""Write WebDataset tar shards: one folder per split, samples' members contiguous.

A shard is written under a temporary name, flushed, fsynced and renamed; only then does
the caller list it in the manifest. Closed shards are never opened for writing again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import crashpoints
from .atomic import fsync_dir, temp_path_for

SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6,})\.tar$")
# Keys become tar member stems; WebDataset splits a member name at its first dot, and a
# slash would make a folder. Our keys are md5 hex, but check what reaches the writer.
SAFE_KEY = re.compile(r"^[a-z0-9_-]+$")


def shard_number(filename: str, split: str) -> int | None:
    """The index in a shard's file name, or None when it is not a shard name of `split`."""
    match = SHARD_NAME.match(filename)
    if match is None or match["split"] != split:
        return None
    return int(match["index"])


def shard_name(split: str, index: int) -> str:
    """Path of a shard relative to the dataset directory."""
    return f"{split}/{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ClosedShard:
    name: str           # relative to the dataset directory, e.g. "train/train-000003.tar"
    num_samples: int
    num_bytes: int
    sha256: str
    samples: list       # [(key, class_id, content_sha256)] in shard order


@dataclass(frozen=True)
class ShardSample:
    key: str
    class_id: int
    jpeg: bytes
    metadata: dict
    content_sha256: str


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, stream):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._stream.write(data)
        self.sha256.update(data)
        self.num_bytes += len(data)
        return len(data)


class SplitShardWriter:
    """Appends samples to one split's shards, closing a shard when it reaches either limit.

    `on_close(ClosedShard)` runs after each shard is renamed into place, before the next
    one starts, so the caller can list it (manifest) before anything else happens.
    """

    def __init__(self, dataset_dir: Path, split: str, next_index: int, max_samples: int,
                 max_bytes: int, on_close: Callable[[ClosedShard], None], mtime: float):
        self.dataset_dir = dataset_dir
        self.split = split
        self.next_index = next_index
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.on_close = on_close
        self.mtime = int(mtime)
        (dataset_dir / split).mkdir(parents=True, exist_ok=True)
        self._tar = None

    def add(self, sample: ShardSample) -> str:
        """Write one sample; returns the name of the shard it went into."""
        if not SAFE_KEY.match(sample.key):
            raise ValueError(f"unsafe sample key {sample.key!r}")
        members = [
            ("jpg", sample.jpeg),
            ("cls", str(sample.class_id).encode("ascii")),
            ("json", json.dumps(sample.metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")),
        ]
        size = sum(512 + _padded(len(data)) for _, data in members)
        if self._tar is not None and (
            len(self._samples) >= self.max_samples
            or self._hashing.num_bytes + size + 1024 > self.max_bytes
        ):
            self.close()
        if self._tar is None:
            self._open()
        for extension, data in members:
            info = tarfile.TarInfo(f"{sample.key}.{extension}")
            info.size = len(data)
            info.mtime = self.mtime
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
            crashpoints.reach("shard:member")
        self._samples.append((sample.key, sample.class_id, sample.content_sha256))
        return self._name

    def close(self) -> ClosedShard | None:
        """Finish the open shard, if any, and hand it to `on_close`."""
        if self._tar is None:
            return None
        self._tar.close()          # writes the end-of-archive blocks through _hashing
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        crashpoints.reach("shard:synced")
        final = self.dataset_dir / self._name
        os.replace(self._temp, final)
        fsync_dir(final.parent)
        crashpoints.reach("shard:renamed")  # on disk, not yet listed
        closed = ClosedShard(self._name, len(self._samples), self._hashing.num_bytes,
                             self._hashing.sha256.hexdigest(), self._samples)
        self._tar = None
        self.on_close(closed)
        return closed

    def abandon(self) -> None:
        """Drop the open shard without listing it (used when a build fails)."""
        if self._tar is not None:
            # Mark the tar closed first: otherwise its stream, when collected, tries to
            # write the end-of-archive blocks into the file closed below.
            self._tar.closed = True
            self._tar.fileobj.closed = True
            self._file.close()
            self._temp.unlink(missing_ok=True)
            self._tar = None

    def _open(self) -> None:
        self._name = shard_name(self.split, self.next_index)
        self.next_index += 1
        self._temp = temp_path_for(self.dataset_dir / self._name)
        self._file = open(self._temp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.USTAR_FORMAT)
        self._samples = []


def _padded(size: int) -> int:
    return (size + 511) // 512 * 512


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
