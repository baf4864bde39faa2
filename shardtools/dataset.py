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

A build's entry in the manifest's history is created, as "running", with its first listed
shard, and marked "complete" at its end. An entry still "running" when the next build
opens the directory (under the lock, so its writer is gone) belonged to a build that was
killed; it becomes "interrupted", its listed shards stay, and the next build redoes the
rest. docs/durability.md walks through every kill point.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import crashpoints
from .atomic import TEMP_MARK, atomic_writer, write_json_atomic
from .classes import ClassIndex
from .errors import ConfigError, DatasetError, LockedError
from .shards import SHARD_NAME, ClosedShard, shard_number

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSES = "classes.json"
SHARD_INDEX = "shard_index.jsonl"
LEDGER = "ledger.jsonl"
STATS_DIR = "stats"
LOCK = ".lock"


@dataclass(slots=True)  # one per written sample, held for the whole build: keep it small
class WrittenSample:
    key: str
    split: str
    shard: str
    class_id: int


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        lock = Path(dataset_dir) / LOCK
        if lock.exists():
            holder = lock.read_text(encoding="utf-8", errors="replace").strip()
            if holder:  # a build that ends cleanly empties the lock file
                raise DatasetError(f"{dataset_dir}: no {MANIFEST} yet: its first build ({holder}) "
                                   "has not listed a shard; it is still running or was "
                                   "interrupted (then run the build again)") from None
            raise DatasetError(f"{dataset_dir}: no {MANIFEST} yet: no build has listed a shard "
                               "here (the last one stopped before writing any; see its "
                               "messages)") from None
        raise DatasetError(f"{dataset_dir}: no {MANIFEST}; is this a dataset built by shardtools?") from None
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {version!r}, this shardtools reads {FORMAT_VERSION}")
    for key, kind in (("splits", dict), ("builds", list), ("class_counts", dict)):
        if not isinstance(manifest.get(key), kind):
            raise DatasetError(f"{path}: '{key}' is missing or not a {kind.__name__}; the file is "
                               "damaged (restore it from a backup or rebuild)")
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
        # What a holder that died without releasing left in the file ("pid N on HOST since
        # T"), else None. A clean exit empties the file.
        self.stale_holder: str | None = None

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
        left = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if left:
            self.stale_holder = left
            logger.warning("taking over the lock of %s: that build ended without releasing it "
                           "(killed or crashed); the kernel had already freed it", left)
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
    # content_key(sha256 hex of the source bytes) -> sample key: finds identical bytes.
    by_content: dict[bytes, str] = field(default_factory=dict)
    # From the previous ledger, only what a build needs (it is streamed, never held):
    # record id -> (key, reason, source) of rejected rows, and of duplicate_content rows
    # (key, written twin, source); and the digest of the whole file.
    previous_rejections: dict[str, tuple] = field(default_factory=dict)
    previous_duplicates: dict[str, tuple] = field(default_factory=dict)
    previous_ledger_sha256: str | None = None
    interrupted: list[int] = field(default_factory=list)  # builds found "running" at open
    removed_leftovers: list[str] = field(default_factory=list)
    damaged_listed: list[str] = field(default_factory=list)  # listed shards missing or cut

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
            _refuse_orphaned(dataset_dir)
            manifest = empty_manifest(split_names)
        state = cls(dataset_dir, manifest, ClassIndex.load(dataset_dir / CLASSES))
        state._load_shard_index()
        state._remove_leftovers()
        state._check_listed_on_disk()
        state._load_previous_ledger()
        state._mark_interrupted()
        return state

    # --- reading ----------------------------------------------------------------------

    def listed_shards(self) -> dict[str, dict]:
        return {entry["name"]: entry for split in self.manifest["splits"].values()
                for entry in split["shards"]}

    def next_shard_index(self, split: str) -> int:
        """One past the highest listed shard of `split`: numbering only ever goes up."""
        return next_shard_index(self.manifest, split)

    def next_build_id(self) -> int:
        """One past every build id the manifest mentions, so an interrupted build's id (on
        its history entry or its shards) is never given to another."""
        ids = [entry["build"] for entry in self.manifest["builds"]]
        ids += [entry.get("build", 0) for entry in self.listed_shards().values()]
        return max(ids, default=0) + 1

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
                shard = line["shard"]  # one string object for all its samples
                for key, class_id, content_sha in line["samples"]:
                    self.written[key] = WrittenSample(key, split, shard, class_id)
                    self.by_content.setdefault(content_key(content_sha), key)
        missing = set(listed) - seen
        if missing:
            raise DatasetError(f"{path} has no entry for listed shards: {', '.join(sorted(missing)[:5])}")
        if len(valid_lines) != num_lines or (valid_lines and not raw.endswith(b"\n")):
            # Rewrite the index without leftovers so appends start from a clean file.
            with atomic_writer(path, "wb") as stream:
                stream.writelines(valid_lines)

    def _remove_leftovers(self) -> None:
        """Remove temporary files and the unlisted tars a killed build can leave: those
        numbered at or past the split's next index (the one being listed when it died).
        An unlisted tar below that was not made by a build of this directory; it is left
        alone and reported (verify fails on it) rather than deleted."""
        listed = self.listed_shards()
        for split in self.manifest["splits"]:
            folder = self.dataset_dir / split
            if not folder.is_dir():
                continue
            next_index = self.next_shard_index(split)
            for path in sorted(folder.iterdir()):
                name = f"{split}/{path.name}"
                if TEMP_MARK in path.name:
                    self._remove(path, name)
                elif SHARD_NAME.match(path.name) and name not in listed:
                    number = shard_number(path.name, split)
                    if number is not None and number >= next_index:
                        self._remove(path, name)
                    else:
                        logger.warning("%s is not listed in the manifest and no build of this "
                                       "directory left it there; leaving it alone (the loader "
                                       "ignores it, `shardtools verify` reports it)", name)
        for folder in (self.dataset_dir, self.dataset_dir / STATS_DIR):
            if folder.is_dir():
                for path in folder.iterdir():
                    if TEMP_MARK in path.name:
                        self._remove(path, path.name)

    def _remove(self, path: Path, name: str) -> None:
        logger.warning("removing %s, left by an interrupted build; its work is done again", name)
        path.unlink()
        self.removed_leftovers.append(name)

    def _check_listed_on_disk(self) -> None:
        # A cheap stat per shard: a listed shard that is gone or cut is not something a
        # build can repair (its samples' splits are fixed), but the user must hear of it.
        for name, entry in self.listed_shards().items():
            path = self.dataset_dir / name
            size = path.stat().st_size if path.exists() else None
            if size != entry["num_bytes"]:
                found = "missing" if size is None else f"{size} bytes"
                self.damaged_listed.append(name)
                logger.warning("listed shard %s is %s, the manifest says %d bytes; run "
                               "`shardtools verify %s`", name, found, entry["num_bytes"],
                               self.dataset_dir)

    def _mark_interrupted(self) -> None:
        for entry in self.manifest["builds"]:
            if entry.get("status") == "running":
                entry["status"] = "interrupted"
                self.interrupted.append(entry["build"])
                logger.warning("build %d did not finish (killed or crashed): its %d listed "
                               "shards are kept; this build does the rest of its work",
                               entry["build"], len(entry.get("new_shards", [])))

    def _load_previous_ledger(self) -> None:
        path = self.dataset_dir / LEDGER
        if not path.exists():
            return
        digest = hashlib.sha256()
        for raw, row in iter_ledger(path):
            digest.update(raw)
            if "key" not in row:
                continue
            if row.get("status") == "rejected":
                self.previous_rejections[row["record"]] = (row["key"], row.get("reason"),
                                                           row.get("image_from"))
            elif row.get("note") == "duplicate_content":
                self.previous_duplicates[row["record"]] = (row["key"], row.get("sample"),
                                                           row.get("image_from"))
        self.previous_ledger_sha256 = digest.hexdigest()

    # --- writing ----------------------------------------------------------------------

    def check_split_settings(self, salt: str, fractions: dict[str, float]) -> None:
        """Refuse a build whose split salt or fractions differ from the dataset's first: it
        would put new photos of an observation already written into another split."""
        current = {"salt": salt, "fractions": [[name, f] for name, f in fractions.items()]}
        recorded = self.manifest.get("split_settings")
        if recorded is None:
            self.manifest["split_settings"] = current  # saved with the next manifest write
            return
        if recorded != current:
            def show(settings):
                parts = ", ".join(f"{name} {f:g}" for name, f in settings["fractions"])
                return f"salt {settings['salt']!r}, {parts}"

            raise ConfigError("build.splits", f"split settings differ from this dataset's "
                              f"(dataset: {show(recorded)}; config: {show(current)}); new "
                              "samples would not follow the splits of their groups already "
                              "written. Put the dataset's values back, or build into a new "
                              "output_dir")

    def check_record_fields(self, label_field: str, group_field: str | None) -> None:
        """Refuse a build that reads labels or groups from other fields than the dataset's
        first build did: labels would be compared across fields (false conflicts, new
        empty classes) and groups would no longer hold observations together."""
        current = {"label_field": label_field, "group_field": group_field}
        recorded = self.manifest.get("record_fields")
        if recorded is None:
            self.manifest["record_fields"] = current  # saved with the next manifest write
            return
        for key, value in current.items():
            if recorded.get(key) != value:
                raise ConfigError(f"build.{key}", f"is {value!r}, but this dataset was built "
                                  f"with {recorded.get(key)!r}; its labels and splits follow "
                                  "that field. Put it back, or build into a new output_dir")

    def save_classes(self) -> None:
        self.classes.save(self.dataset_dir / CLASSES)
        self.manifest["num_classes"] = len(self.classes)

    def build_entry(self, build_id: int, started: str) -> dict:
        """This build's entry in the history, created ("running") on first use."""
        builds = self.manifest["builds"]
        if not builds or builds[-1]["build"] != build_id:
            builds.append({"build": build_id, "started": started, "status": "running",
                           "new_shards": []})
        return builds[-1]

    def list_shard(self, split: str, closed: ClosedShard, build_id: int, started: str) -> None:
        """Make a renamed shard part of the dataset: index line first, then the manifest."""
        line = {"shard": closed.name, "split": split, "sha256": closed.sha256,
                "samples": [list(s) for s in closed.samples]}
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        with open(self.dataset_dir / SHARD_INDEX, "ab") as stream:
            if crashpoints.due("index:torn"):
                # Leave the half line a kill in the middle of this write would leave.
                stream.write(data[: len(data) // 2])
                stream.flush()
                os.fsync(stream.fileno())
                crashpoints.crash_now("index:torn")
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        crashpoints.reach("index:appended")  # indexed, not yet listed
        self.build_entry(build_id, started)["new_shards"].append(closed.name)
        split_entry = self.manifest["splits"][split]
        split_entry["shards"].append({"name": closed.name, "num_samples": closed.num_samples,
                                      "num_bytes": closed.num_bytes, "sha256": closed.sha256,
                                      "build": build_id})
        split_entry["num_samples"] += closed.num_samples
        split_entry["num_bytes"] += closed.num_bytes
        counts = self.manifest["class_counts"][split]
        for key, class_id, content_sha in closed.samples:
            counts[str(class_id)] = counts.get(str(class_id), 0) + 1
            self.written[key] = WrittenSample(key, split, closed.name, class_id)
            self.by_content.setdefault(content_key(content_sha), key)
        self.save_manifest()
        crashpoints.reach("shard:listed")

    def save_manifest(self) -> None:
        write_json_atomic(self.dataset_dir / MANIFEST, self.manifest)

    def replace_ledger(self, rows) -> bool:
        """Stream `rows` into a new ledger; put it in place (atomically) unless it is byte
        for byte the previous one. Returns whether it changed."""
        digest = hashlib.sha256()
        try:
            with atomic_writer(self.dataset_dir / LEDGER, "wb") as stream:
                for row in rows:
                    line = json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
                    line += b"\n"
                    digest.update(line)
                    stream.write(line)
                if digest.hexdigest() == self.previous_ledger_sha256:
                    raise _LedgerUnchanged  # atomic_writer drops the temporary file
        except _LedgerUnchanged:
            return False
        self.previous_ledger_sha256 = digest.hexdigest()
        return True

    def save_stats(self, build_id: int, stats: dict) -> Path:
        folder = self.dataset_dir / STATS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"build-{build_id:04d}.json"
        write_json_atomic(path, stats)
        return path


def content_key(sha256_hex: str) -> bytes:
    """The in-memory form of a content hash: its first 16 bytes (49 bytes of Python object
    instead of 113 for the hex text; a collision among 16-byte prefixes of sha256 is not a
    practical concern)."""
    return bytes.fromhex(sha256_hex[:32])


class _LedgerUnchanged(Exception):
    pass


def iter_ledger(path: Path):
    """(raw line, row) for each row of a ledger file, streamed. A damaged line (the file is
    written atomically, so someone else cut it) is skipped with a warning: every build
    rewrites the ledger from the records and the shard index anyway."""
    with open(path, "rb") as stream:
        for line_number, raw in enumerate(stream, start=1):
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or "record" not in row or "status" not in row:
                    raise ValueError("not a ledger row")
            except ValueError as exc:
                logger.warning("%s line %d is damaged (%s); skipping it", path, line_number, exc)
                continue
            yield raw, row


def next_shard_index(manifest: dict, split: str) -> int:
    numbers = [shard_number(Path(entry["name"]).name, split)
               for entry in manifest["splits"].get(split, {}).get("shards", [])]
    return max((n for n in numbers if n is not None), default=-1) + 1


def _refuse_orphaned(dataset_dir: Path) -> None:
    """Without a manifest nothing is listed, and opening would delete every shard as a
    leftover. That is right only for what a first build killed before its first listing
    can leave: at most one tar, numbered 0, and no ledger. Anything more means the manifest
    was lost; stop rather than destroy the shards."""
    tars = sorted(str(p.relative_to(dataset_dir)) for p in dataset_dir.glob("*/*.tar")
                  if SHARD_NAME.match(p.name))
    first_build_leftover = len(tars) <= 1 and all(
        shard_number(Path(t).name, Path(t).parent.name) == 0 for t in tars)
    if (dataset_dir / LEDGER).exists() or not first_build_leftover:
        found = f"{len(tars)} shards" + (" and a ledger" if (dataset_dir / LEDGER).exists() else "")
        raise DatasetError(
            f"{dataset_dir} holds {found} but no {MANIFEST}; the manifest alone says which "
            "shards are complete, so a build will not touch them. Restore the manifest, or "
            "build into another directory")


def lock_holder(dataset_dir: Path) -> tuple[str, str] | None:
    """(who, state) from a lock file that still names a build, else None. A clean exit
    empties the file; text left there is a build running now or one that was killed."""
    try:
        text = (Path(dataset_dir) / LOCK).read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    parts = text.split()
    state = "it may still be running"
    ours = len(parts) >= 4 and parts[0] == "pid" and parts[1].isdigit() \
        and parts[3] == socket.gethostname()
    if ours:
        state = "running now" if _alive(int(parts[1])) else "that process is gone: killed or crashed"
    return text, state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
