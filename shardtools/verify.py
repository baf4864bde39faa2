"""`shardtools verify DIR`: read every shard and check the whole directory against itself.

Checked: each listed shard exists, has the manifest's size and sha256, is a complete tar
whose samples each have their members (jpg, cls, json) side by side; no shard is listed
twice or empty; no key is in two places; no image bytes (content sha256) are in two splits;
shard_index.jsonl lists the same samples, classes and contents as the shards; the ledger
and the shards agree both ways; the per-split and per-class counts add up; nothing on
disk looks like a shard the manifest does not list.

A directory whose last build was killed (a lock file still naming it, or a history entry
still "running") is valid: the loader reads only what the manifest lists. What such a
build leaves unfinished (an unlisted tar at the next number, temporary files, an index
line or ledger rows not yet caught up) is reported as a note, with the reason, not as a
problem; the next build finishes it. `strict=True` counts those as problems as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import TEMP_MARK
from .classes import ClassIndex
from .dataset import (CLASSES, LEDGER, MANIFEST, SHARD_INDEX, STATS_DIR, lock_holder,
                      next_shard_index, read_manifest)
from .errors import DatasetError
from .shards import SAFE_KEY, shard_number

logger = logging.getLogger(__name__)

MEMBERS = ("jpg", "cls", "json")
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Finding:
    where: str   # a shard or file, relative to the dataset directory
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    dataset_dir: str
    shards: int = 0
    samples: int = 0
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    # Why the directory is mid-build, when it is (a killed or a running build).
    unfinished_build: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"dataset": self.dataset_dir, "ok": self.ok, "shards": self.shards,
                "samples": self.samples, "unfinished_build": self.unfinished_build,
                "problems": [asdict(x) for x in self.problems],
                "notes": [asdict(x) for x in self.notes]}


@dataclass
class _Member:
    name: str
    offset: int      # of its header in the tar
    size: int
    head: bytes      # the whole member for cls/json, the first bytes for jpg


def verify_dataset(dataset_dir: str | os.PathLike, strict: bool = False) -> VerifyReport:
    """Check `dataset_dir`; raises DatasetError only when there is no readable manifest."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / MANIFEST).exists() and lock_holder(dataset_dir):
        who, state = lock_holder(dataset_dir)
        raise DatasetError(f"{dataset_dir} has no {MANIFEST} yet: its first build ({who}; "
                           f"{state}) has not listed a shard. Run the build (again) to go on")
    return _Verifier(dataset_dir, strict).run()


def format_report(report: VerifyReport) -> str:
    lines = [str(x) for x in report.problems]
    lines += [f"note: {x}" for x in report.notes]
    if report.unfinished_build:
        lines.append(f"note: {report.unfinished_build}")
    verdict = "OK" if report.ok else f"{len(report.problems)} problems"
    lines.append(f"verify {report.dataset_dir}: {report.shards} shards, {report.samples:,} "
                 f"samples: {verdict}" + (f", {len(report.notes)} notes" if report.notes else ""))
    return "\n".join(lines)


class _Verifier:
    def __init__(self, dataset_dir: Path, strict: bool):
        self.dir = dataset_dir
        self.strict = strict
        self.report = VerifyReport(str(dataset_dir))
        self.manifest = read_manifest(dataset_dir)
        self.builds = self.manifest.get("builds", [])
        # Key -> where it was found, and content sha -> splits, over all shards.
        self.key_at: dict[str, str] = {}
        self.content_splits: dict[str, dict[str, str]] = defaultdict(dict)
        self.shard_keys: dict[str, list[str]] = {}       # listed shard -> keys read
        self.sample_class: dict[str, int] = {}

    def problem(self, where: str, what: str) -> None:
        self.report.problems.append(Finding(where, what))

    def unfinished(self, where: str, what: str, why: str = "") -> None:
        """Something a killed build leaves: a note saying `why`, or a problem when no
        build was interrupted."""
        if self.report.unfinished_build and not self.strict:
            self.report.notes.append(Finding(where, f"{what} ({why})" if why else what))
        else:
            self.problem(where, what)

    def run(self) -> VerifyReport:
        self._unfinished_build()
        listed = self._listed()
        index = self._shard_index(listed)
        classes = self._classes()
        for name, entry in listed.items():
            self._shard(name, entry, index.get(name), classes)
        self._counts(listed)
        self._disk(listed)
        self._ledger(listed)
        self.report.shards = len(listed)
        self.report.samples = len(self.key_at)
        return self.report

    # --- is a build unfinished? -----------------------------------------------------

    def _unfinished_build(self) -> None:
        reasons = []
        holder = lock_holder(self.dir)
        if holder:
            reasons.append(f"the lock file names {holder[0]} ({holder[1]})")
        open_builds = [b["build"] for b in self._builds_after_ledger()
                       if b.get("status") in ("running", "interrupted")]
        if open_builds:
            reasons.append("the history shows build " + ", ".join(map(str, open_builds))
                           + " unfinished")
        if reasons:
            self.report.unfinished_build = (
                "the last build did not finish or is still running (" + "; ".join(reasons)
                + "): the dataset is as after its last listed shard, and the next build "
                "completes the rest")

    def _builds_after_ledger(self) -> list[dict]:
        """History entries after the last complete build (the one that wrote the ledger)."""
        last = -1
        for i, entry in enumerate(self.builds):
            if entry.get("status", "complete") == "complete":
                last = i
        return self.builds[last + 1:]

    # --- the manifest ---------------------------------------------------------------

    def _listed(self) -> dict[str, dict]:
        listed: dict[str, dict] = {}
        for split, entry in self.manifest["splits"].items():
            for shard in entry["shards"]:
                name = shard.get("name", "?")
                if name in listed:
                    self.problem(name, "listed twice in the manifest")
                    continue
                folder, _, filename = name.partition("/")
                if folder != split or shard_number(filename, split) is None:
                    self.problem(name, f"not a shard name of split {split!r}")
                if not shard.get("num_samples"):
                    self.problem(name, "listed with no samples (an empty shard)")
                listed[name] = {**shard, "split": split}
        return listed

    def _counts(self, listed: dict[str, dict]) -> None:
        for split, entry in self.manifest["splits"].items():
            shards = [x for x in listed.values() if x["split"] == split]
            for field_name in ("num_samples", "num_bytes"):
                total = sum(x.get(field_name, 0) for x in shards)
                if entry.get(field_name) != total:
                    self.problem("manifest.json", f"split {split}: {field_name} is "
                                 f"{entry.get(field_name)}, its shards add up to {total}")
            found = Counter()
            for shard in shards:
                for key in self.shard_keys.get(shard["name"], []):
                    if key in self.sample_class:
                        found[str(self.sample_class[key])] += 1
            stated = self.manifest.get("class_counts", {}).get(split, {})
            stated = {k: v for k, v in stated.items() if v}
            if dict(found) != stated and all(s["name"] in self.shard_keys for s in shards):
                wrong = sorted(k for k in set(found) | set(stated) if found.get(k) != stated.get(k))
                self.problem("manifest.json", f"split {split}: class_counts disagree with the "
                             f"shards for class ids {', '.join(wrong[:10])}")

    def _classes(self) -> ClassIndex | None:
        try:
            classes = ClassIndex.load(self.dir / CLASSES)
        except DatasetError as exc:
            self.problem(CLASSES, str(exc))
            return None
        if len(classes) != self.manifest.get("num_classes", len(classes)):
            # save_classes runs before a build's first shard, the manifest's count at its
            # end: between the two, the index may have more.
            if len(classes) > self.manifest.get("num_classes", 0):
                self.unfinished(CLASSES, f"{len(classes)} classes, the manifest says "
                                f"{self.manifest.get('num_classes')}")
            else:
                self.problem(CLASSES, f"{len(classes)} classes, the manifest says "
                             f"{self.manifest.get('num_classes')}")
        return classes

    # --- shard_index.jsonl ----------------------------------------------------------

    def _shard_index(self, listed: dict[str, dict]) -> dict[str, dict]:
        path = self.dir / SHARD_INDEX
        found: dict[str, dict] = {}
        if not path.exists():
            if listed:
                self.problem(SHARD_INDEX, f"missing; the manifest lists {len(listed)} shards")
            return found
        with open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                where = f"{SHARD_INDEX} line {number}"
                try:
                    line = json.loads(raw)
                    name, sha = line["shard"], line["sha256"]
                except (ValueError, KeyError, TypeError):
                    self.unfinished(where, "cut or unreadable (a write a kill interrupted)")
                    continue
                entry = listed.get(name)
                if entry is None or entry.get("sha256") != sha:
                    self.unfinished(where, f"for {name}, which the manifest does not list "
                                    "with that sha256")
                elif name in found:
                    self.problem(where, f"{name} indexed twice")
                else:
                    found[name] = line
        for name in listed:
            if name not in found:
                self.problem(name, f"listed in the manifest but has no line in {SHARD_INDEX}")
        return found

    # --- one shard ------------------------------------------------------------------

    def _shard(self, name: str, entry: dict, index_line: dict | None,
               classes: ClassIndex | None) -> None:
        path = self.dir / name
        if not path.is_file():
            self.problem(name, "listed in the manifest but missing from disk")
            return
        members, size, sha = self._read_tar(name, path)
        if size != entry.get("num_bytes"):
            self.problem(name, f"{size} bytes on disk, the manifest says {entry.get('num_bytes')}")
        if sha != entry.get("sha256"):
            self.problem(name, "sha256 differs from the manifest's: the file changed after "
                         "it was listed")
        samples = self._samples(name, members)
        keys = [key for key, _ in samples]
        self.shard_keys[name] = keys
        if len(samples) != entry.get("num_samples"):
            self.problem(name, f"holds {len(samples)} samples, the manifest says "
                         f"{entry.get('num_samples')}")
        expected = {}
        if index_line is not None:
            index_keys = [s[0] for s in index_line.get("samples", [])]
            if index_keys != keys:
                self.problem(name, f"{SHARD_INDEX} lists other samples ({len(index_keys)}) "
                             f"than the shard holds ({len(keys)})")
            expected = {s[0]: (s[1], s[2]) for s in index_line.get("samples", [])}
        split = entry["split"]
        for key, parts in samples:
            where_first = self.key_at.get(key)
            if where_first is not None:
                offset = min(m.offset for m in parts.values())
                self.problem(name, f"key {key} at offset {offset} is also in {where_first}")
            else:
                self.key_at[key] = name
            class_id, content = self._sample_fields(name, key, parts)
            if class_id is not None:
                self.sample_class[key] = class_id
                if classes is not None and not 0 <= class_id < len(classes):
                    self.problem(name, f"{key}.cls is {class_id}, not a class id of "
                                 f"{CLASSES} (0..{len(classes) - 1})")
            if key in expected:
                if class_id is not None and expected[key][0] != class_id:
                    self.problem(name, f"{key}.cls is {class_id}, {SHARD_INDEX} says "
                                 f"{expected[key][0]}")
                if content is not None and expected[key][1] != content:
                    self.problem(name, f"{key}.json content_sha256 differs from {SHARD_INDEX}'s")
                content = content or expected[key][1]
            if content:
                others = {s: k for s, k in self.content_splits[content].items() if s != split}
                for other_split, other_key in others.items():
                    self.problem(name, f"sample {key} ({split}) has the same image bytes as "
                                 f"{other_key} in {other_split}: one image in two splits")
                self.content_splits[content].setdefault(split, key)

    def _read_tar(self, name: str, path: Path) -> tuple[list[_Member], int, str]:
        """Walk the tar's headers (USTAR, regular files). Returns the members read up to
        the first damage, and the file's size and sha256."""
        members: list[_Member] = []
        digest = hashlib.sha256()
        offset = 0
        with open(path, "rb") as stream:
            def read(n: int) -> bytes:
                data = stream.read(n)
                digest.update(data)
                return data

            while True:
                header = read(_BLOCK)
                if not header:
                    self.problem(name, f"ends at offset {offset} without the end-of-archive "
                                 "blocks: cut after a member")
                    break
                if len(header) < _BLOCK:
                    self.problem(name, f"cut at offset {offset}: in a member header "
                                 f"({len(header)} of {_BLOCK} bytes)")
                    break
                if header == _ZERO_BLOCK:
                    rest = read(_READ_CHUNK)
                    while rest:
                        if rest.strip(b"\0"):
                            self.problem(name, f"data after the end-of-archive block at "
                                         f"offset {offset}")
                            break
                        rest = read(_READ_CHUNK)
                    break
                member = _parse_header(header, offset)
                if isinstance(member, str):
                    self.problem(name, f"offset {offset}: {member}")
                    break
                data = read(member.size)
                if len(data) < member.size:
                    self.problem(name, f"cut at offset {offset + _BLOCK + len(data)}: in member "
                                 f"{member.name} (header at offset {offset}), which needs "
                                 f"{member.size} bytes and has {len(data)}")
                    break
                pad = (-member.size) % _BLOCK
                if pad and len(read(pad)) < pad:
                    self.problem(name, f"cut at the end of member {member.name} (header at "
                                 f"offset {offset}): its padding is incomplete")
                    break
                if not member.name.endswith((".cls", ".json")):
                    data = data[:16]  # enough to recognise a JPEG; frees the image
                member.head = data
                members.append(member)
                offset += _BLOCK + member.size + pad
            while read(_READ_CHUNK):
                pass  # hash the rest: the size and sha256 are of the whole file
        return members, path.stat().st_size, digest.hexdigest()

    def _samples(self, name: str, members: list[_Member]) -> list[tuple[str, dict]]:
        """Group members into samples, checking names, contiguity and completeness."""
        samples: list[tuple[str, dict]] = []
        finished: set[str] = set()
        for member in members:
            key, dot, extension = member.name.partition(".")
            if not dot or "/" in member.name or not SAFE_KEY.match(key) or extension not in MEMBERS:
                self.problem(name, f"offset {member.offset}: member {member.name!r} is not "
                             "KEY.jpg, KEY.cls or KEY.json with a safe key")
                continue
            if samples and samples[-1][0] == key:
                parts = samples[-1][1]
                if extension in parts:
                    self.problem(name, f"offset {member.offset}: {member.name} appears twice "
                                 "in one sample")
                    continue
                parts[extension] = member
                continue
            if samples:
                finished.add(samples[-1][0])
            if key in finished:
                self.problem(name, f"offset {member.offset}: {member.name} is apart from the "
                             f"other members of sample {key} (members not contiguous)")
                continue
            samples.append((key, {extension: member}))
        for key, parts in samples:
            missing = [x for x in MEMBERS if x not in parts]
            if missing:
                first = min(m.offset for m in parts.values())
                self.problem(name, f"sample {key} (offset {first}) lacks "
                             + ", ".join(f"{key}.{x}" for x in missing))
        return samples

    def _sample_fields(self, name: str, key: str, parts: dict) -> tuple[int | None, str | None]:
        class_id = content = None
        if "cls" in parts:
            try:
                class_id = int(parts["cls"].head.decode("ascii"))
            except ValueError:
                self.problem(name, f"offset {parts['cls'].offset}: {key}.cls is not a class id")
        if "json" in parts:
            try:
                metadata = json.loads(parts["json"].head)
                content = metadata.get("content_sha256")
                if class_id is not None and metadata.get("class_id") not in (None, class_id):
                    self.problem(name, f"{key}.json says class {metadata.get('class_id')}, "
                                 f"{key}.cls says {class_id}")
            except (ValueError, AttributeError):
                self.problem(name, f"offset {parts['json'].offset}: {key}.json is not a JSON "
                             "object")
        if "jpg" in parts and not parts["jpg"].head.startswith(b"\xff\xd8\xff"):
            self.problem(name, f"offset {parts['jpg'].offset}: {key}.jpg is not a JPEG")
        return class_id, content

    # --- what is on disk but not listed ---------------------------------------------

    def _disk(self, listed: dict[str, dict]) -> None:
        splits = self.manifest["splits"]
        for folder in sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name != STATS_DIR):
            for path in sorted(folder.iterdir()):
                name = f"{folder.name}/{path.name}"
                if TEMP_MARK in path.name:
                    self.unfinished(name, "temporary file of an unfinished write")
                elif path.name.endswith(".tar") and name not in listed:
                    number = shard_number(path.name, folder.name)
                    if folder.name in splits and number is not None and \
                            number >= next_shard_index(self.manifest, folder.name):
                        self.unfinished(name, "on disk but not listed in the manifest",
                                        "written by the unfinished build before it could list "
                                        "it; the next build removes it")
                    else:
                        self.problem(name, "on disk but not listed in the manifest")
        for folder in (self.dir, self.dir / STATS_DIR):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if TEMP_MARK in path.name:
                        self.unfinished(str(path.relative_to(self.dir)),
                                        "temporary file of an unfinished write")

    # --- the ledger -----------------------------------------------------------------

    def _ledger(self, listed: dict[str, dict]) -> None:
        path = self.dir / LEDGER
        # Shards listed by builds that had not rewritten the ledger when they stopped.
        newer = {b["build"] for b in self._builds_after_ledger()}
        catching_up = {n for n, e in listed.items() if e.get("build") in newer}
        rows_for: dict[str, list] = defaultdict(list)      # sample key -> its written rows
        not_written: dict[str, str] = {}                   # key -> status, for other rows
        if not path.exists():
            if listed and len(catching_up) < len(listed):
                self.problem(LEDGER, f"missing; the manifest lists {len(listed)} shards")
            elif listed:
                self.unfinished(LEDGER, "not written yet by the unfinished build")
            return
        shard_of = {key: shard for shard, keys in self.shard_keys.items() for key in keys}
        with open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                where = f"{LEDGER} line {number}"
                try:
                    row = json.loads(raw)
                    status = row["status"]
                except (ValueError, KeyError, TypeError):
                    self.problem(where, "not a ledger row")
                    continue
                key = row.get("key")
                if status != "written":
                    if key in shard_of:
                        not_written[key] = status
                    continue
                sample = row.get("sample", key)
                shard = row.get("shard")
                rows_for[sample].append(row)
                if shard not in listed:
                    self.problem(where, f"says {sample} is in {shard}, which the manifest "
                                 "does not list")
                elif shard in self.shard_keys and sample not in self.shard_keys[shard]:
                    self.problem(where, f"says {sample} is in {shard}, which does not hold it")
                elif row.get("split") != listed[shard]["split"]:
                    self.problem(where, f"says {sample} is in split {row.get('split')}, its "
                                 f"shard is in {listed[shard]['split']}")
        for shard, keys in self.shard_keys.items():
            missing = [k for k in keys if k not in rows_for]
            if not missing:
                continue
            wrongly = [k for k in missing if k in not_written]
            if shard in catching_up:
                self.unfinished(shard, f"{len(missing)} samples not yet in the ledger as "
                                "written (the build that listed this shard did not finish)")
                continue
            for key in wrongly:
                self.problem(shard, f"holds {key}, the ledger says it is {not_written[key]}")
            for key in missing:
                if key not in not_written:
                    self.problem(shard, f"holds {key}, which has no row in the ledger")


def _parse_header(header: bytes, offset: int) -> _Member | str:
    """A USTAR header -> _Member, or a sentence saying what is wrong with it."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return "damaged member header (unreadable checksum)"
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored != unsigned:
        return "damaged member header (checksum mismatch)"
    if header[156:157] not in (b"0", b"\0"):
        return f"member of type {header[156:157]!r}, only regular files belong in a shard"
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    if prefix:
        name = f"{prefix}/{name}"
    try:
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return f"member {name!r} has an unreadable size"
    return _Member(name, offset, size, b"")
