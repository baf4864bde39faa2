"""The build: records and cache in, shards, manifest, class index and ledger out.

    index the records (one compact entry per URL) -> skip URLs already written -> assign
    split and class -> stream the records again, resolving each new URL's image (cache,
    else fetcher) and checking it in threads -> write, in input order, to the split's
    shard writer -> list each closed shard -> stream the records a last time into the
    ledger -> stats.

Memory: records are streamed, never held. What grows with the input is one small entry
per URL (`_Entry`, about 200 bytes with its key) plus one per written sample
(`WrittenSample`); images live only while in flight, in a bounded window.

Every record ends in the ledger as written, pending or rejected. Pending records (host in
a cache-only window, transient network trouble) are tried again by the next build, or by
this one when a drain deadline is set.

Identical bytes under different URLs are one sample: the first to reach the writer, in
input order, is written; the others are ledger rows pointing at it (`duplicate_content`),
so no image can sit in two splits, within a build or across appends. Their records count
as label conflicts when their label differs from the written sample's.

A build killed at any point is resumed by running it again (docs/durability.md): shards
it listed stay, the rest is redone, and the ledger is rebuilt from what the shards hold.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import crashpoints
from .cache import ImageCache, url_key
from .dataset import LEDGER, DatasetLock, DatasetState, content_key, iter_ledger
from .errors import ConfigError, RecordError
from .fetch import SYSTEM_CLOCK, Clock, Fetcher
from .imaging.check import ProcessedImage
from .interop import write_wids_indexes
from .progress import LogProgress, Progress
from .records import InputSnapshot, Record, read_records
from .settings import BuildSettings
from .shards import ClosedShard, ShardSample, SplitShardWriter
from .splits import split_for
from .workers import ImageWorkers

logger = logging.getLogger(__name__)

# A cache file rejected for one of these is damaged rather than a bad picture: set it aside
# and download the URL again.
# So many URLs with byte-identical images is a placeholder more often than a real photo
# (a re-posted photo is one or two more URLs, not five).
PLACEHOLDER_MIN_URLS = 5
_REFETCH_CACHE_REASONS = frozenset({"truncated", "not_an_image", "decode_error"})
# Network rejections that a later build would only repeat; other rejections are re-checked.
_STICKY_REJECTIONS = ("http_", "redirect_loop", "too_many_redirects", "unsupported_scheme",
                      "too_large", "invalid_url")


@dataclass(slots=True)
class _Entry:
    """What a build keeps per URL between its passes over the records."""

    key: str                   # md5(url): the same string object the index and writer use
    first: int                 # position of the URL's first record (see _position)
    label: str                 # the first record's label (shared string objects)
    split: str | None
    class_id: int | None = None
    status: str | None = None  # None: to do | known | written | pending | rejected | duplicate
    reason: str | None = None
    source: str | None = None
    twin: str | None = None    # duplicate: key of the written sample with the same bytes


@dataclass
class Outcome:
    status: str                      # "written" | "pending" | "rejected"
    reason: str | None = None
    source: str | None = None        # "cache" | "network"
    image: ProcessedImage | None = None
    content_sha256: str | None = None
    final_url: str | None = None
    twin: str | None = None          # for "duplicate": the written sample with these bytes


@dataclass
class BuildSummary:
    dataset_dir: str
    build_id: int | None
    changed: bool
    records: int = 0
    samples: int = 0
    new_samples: int = 0
    already_written: int = 0
    new_shards: list[str] = field(default_factory=list)
    from_cache: int = 0
    downloaded: int = 0
    pending_records: int = 0
    rejected_records: int = 0
    pending_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    label_conflicts: int = 0
    duplicate_content: int = 0
    # URLs whose bytes duplicate a written sample that has another label.
    duplicate_label_conflicts: int = 0
    # Samples whose bytes came from PLACEHOLDER_MIN_URLS or more URLs: likely a host's
    # "no image" picture rather than a photo. sample key -> number of URLs.
    suspected_placeholders: dict[str, int] = field(default_factory=dict)
    # Builds found killed ("running") when this one opened the directory, and the
    # files they left that were removed.
    resumed_builds: list[int] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)
    # Listed shards found missing or of the wrong size (damaged outside shardtools).
    damaged_shards: list[str] = field(default_factory=list)
    new_classes: int = 0
    written_by_split: dict[str, int] = field(default_factory=dict)
    # Cache files that could not be read (downloaded instead) or written (shard still got
    # the image).
    cache_errors: int = 0
    cache_created: bool = False   # build.cache_dir did not exist: nothing could come from it
    fetch_counters: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0
    # Samples resolved in this build (written, rejected, pending or duplicate) per second.
    samples_per_s: float = 0.0
    # Per split: new_samples and new_shards of this build, samples and shards in all.
    splits: dict[str, dict] = field(default_factory=dict)
    stats_file: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all written; 3 some pending; 4 some rejected; 5 both; 7 the dataset holds
        damaged listed shards (README: exit status)."""
        if self.damaged_shards:
            return 7
        if self.pending_records and self.rejected_records:
            return 5
        if self.rejected_records:
            return 4
        return 3 if self.pending_records else 0


def run_build(settings: BuildSettings, clock: Clock = SYSTEM_CLOCK,
              progress: Progress | None = None) -> BuildSummary:
    """Run one build over `settings`. Holds the dataset lock for its whole length."""
    dataset_dir = Path(settings.output_dir)
    progress = progress if progress is not None else LogProgress()
    try:
        with DatasetLock(dataset_dir):
            state = DatasetState.open(dataset_dir, settings.splits)
            state.check_split_settings(settings.split_salt, settings.splits)
            state.check_record_fields(settings.label_field, settings.group_field)
            with Fetcher(settings.fetch, clock=clock) as fetcher, \
                    ImageWorkers(settings.image) as workers:
                return _Build(settings, state, fetcher, workers, clock, progress).run()
    finally:
        progress.close()


class _Build:
    def __init__(self, settings: BuildSettings, state: DatasetState, fetcher: Fetcher,
                 workers: ImageWorkers, clock: Clock, progress: Progress):
        self.settings = settings
        self.state = state
        self.fetcher = fetcher
        self.workers = workers
        self.clock = clock
        self.progress = progress
        self.cache = ImageCache(settings.cache_dir)
        self.build_id = state.next_build_id()
        self.started_wall = time.time()
        self.started = clock.monotonic()
        self.index: dict[str, _Entry] = {}      # sample key -> entry, in first-seen order
        self.sources = [str(Path(p)) for p in settings.records]  # as records.py names them
        self.snapshot = InputSnapshot(self.sources)
        self.last_line: dict[str, int] = {}     # records file -> last line number read
        self.summary = BuildSummary(str(state.dataset_dir), self.build_id, changed=False)
        self.writers: dict[str, SplitShardWriter] = {}
        # Samples handed to a writer in this build: key -> class id. Their shard may not be
        # listed yet, but a duplicate must already be measured against them.
        self.placed: dict[str, int] = {}
        # Written sample -> how many other URLs gave its very bytes (placeholder hunting).
        self.urls_per_content: Counter = Counter()
        self.summary.resumed_builds = list(state.interrupted)
        self.summary.removed_leftovers = list(state.removed_leftovers)
        self.summary.damaged_shards = list(state.damaged_listed)

    # --- the steps, in order ------------------------------------------------------------

    def run(self) -> BuildSummary:
        self._warn_if_image_settings_changed()
        todo = self._index()
        self.progress.start(todo)
        try:
            self._resolve_and_write(wanted=None)
            self._drain()
            for writer in self.writers.values():
                writer.close()
            crashpoints.reach("build:shards_closed")
        except BaseException:
            for writer in self.writers.values():
                writer.abandon()
            raise
        self._finish()
        crashpoints.reach("build:done")
        return self.summary

    def _image_settings(self) -> dict:
        image = self.settings.image
        return {"resize": image.resize, "size": image.size, "quality": image.quality,
                "resample": image.resample}

    def _warn_if_image_settings_changed(self) -> None:
        """New samples follow the current image settings; old ones keep theirs. Allowed (the
        loader reads any size), but a user should know the dataset becomes mixed."""
        earlier = [b["image"] for b in self.state.manifest["builds"] if b.get("image")]
        if earlier and earlier[-1] != self._image_settings():
            logger.warning("image settings differ from the last build's (%s, now %s): new "
                           "samples will be stored differently from the ones already written",
                           earlier[-1], self._image_settings())

    def _records(self):
        """(position, Record or RecordError) over the input as it was when the build began
        (self.snapshot), streamed from disk."""
        s = self.settings
        self.snapshot.check()
        source_number = {source: i for i, source in enumerate(self.sources)}
        for item in read_records(s.records, s.url_field, s.label_field, s.group_field,
                                 snapshot=self.snapshot):
            source = item.source
            line = item.line_number
            if line > self.last_line.get(source, 0):
                self.last_line[source] = line
            yield _position(source_number[source], line), item

    def _record_id(self, position: int) -> str:
        return f"{self.sources[position >> 32]}:{position & 0xFFFFFFFF}"

    def _index(self) -> int:
        """First pass: one entry per URL; split, class and fate known so far. Returns how
        many samples are left to resolve."""
        state = self.state
        labels: dict[str, str] = {}   # one string object per distinct label
        splits = {name: name for name in self.settings.splits}
        num_records = num_errors = 0
        for position, item in self._records():
            num_records += 1
            if isinstance(item, RecordError):
                num_errors += 1
                logger.warning("skipping %s", item)
                continue
            key = url_key(item.url)
            entry = self.index.get(key)
            if entry is not None:
                if item.label != entry.label:
                    self.summary.label_conflicts += 1
                    logger.warning("label conflict: %s says %r but the first record of %s (%s) "
                                   "says %r; keeping %r", item.record_id, item.label, item.url,
                                   self._record_id(entry.first), entry.label, entry.label)
                continue
            label = labels.setdefault(item.label, item.label)
            written = state.written.get(key)
            if written is not None:
                self.index[key] = _Entry(key, position, label, written.split, written.class_id,
                                         "known")
                self.summary.already_written += 1
                continue
            group_key = f"group:{item.group}" if item.group is not None else f"url:{item.url}"
            split = splits[split_for(group_key, self.settings.split_salt, self.settings.splits)]
            entry = _Entry(key, position, label, split)
            self.index[key] = entry
            self._recall_previous_fate(key, item.record_id, entry)

        if num_records and num_errors == num_records:
            raise ConfigError(*self._likely_config_mistake())
        new_labels = state.classes.add_new(
            e.label for e in self.index.values() if e.status != "known")
        self.summary.new_classes = len(new_labels)
        if new_labels or not (state.dataset_dir / "classes.json").exists():
            state.save_classes()  # before any shard refers to the new ids
        todo = 0
        for entry in self.index.values():
            if entry.status != "known":
                entry.class_id = state.classes.id_of(entry.label)
                if entry.status == "duplicate":
                    self._note_duplicate_label(entry, None, entry.twin,
                                               state.written[entry.twin].class_id, quiet=True)
            if entry.status is None:
                todo += 1
        self.summary.records = num_records
        self.summary.samples = len(self.index)
        fates = Counter(e.status for e in self.index.values())
        logger.info("%d records (%d unusable), %d distinct URLs: %d already in the dataset, "
                    "%d known duplicates of its images, %d known rejections, %d to do",
                    num_records, num_errors, len(self.index), fates["known"],
                    fates["duplicate"], fates["rejected"], todo)
        return todo

    def _likely_config_mistake(self) -> tuple[str, str]:
        """No line made a record: most likely a field name in the config is wrong. Name the
        commonest problem and what the first line holds, rather than reject every line."""
        problems = Counter()
        for _, item in self._records():
            problems[item.problem] += 1
        problem, count = problems.most_common(1)[0]
        key = "build.records"
        for field_key in ("url_field", "label_field"):
            if f"missing field {getattr(self.settings, field_key)!r}" == problem:
                key = f"build.{field_key}"
        return key, (f"no line of the input makes a record; {count:,} of them say: "
                     f"{problem}. Check the field names against the records")

    def _recall_previous_fate(self, key: str, record_id: str, entry: _Entry) -> None:
        """What the last build learnt that need not be learnt again: a network rejection
        a retry would only repeat, or bytes known to duplicate a written sample."""
        rejected = self.state.previous_rejections.get(record_id)
        if rejected and rejected[0] == key and (rejected[1] or "").startswith(_STICKY_REJECTIONS):
            entry.status, entry.reason, entry.source = "rejected", rejected[1], rejected[2]
            return
        duplicate = self.state.previous_duplicates.get(record_id)
        if duplicate and duplicate[0] == key and duplicate[1] in self.state.written:
            entry.status, entry.reason, entry.source = "duplicate", "duplicate_content", duplicate[2]
            entry.twin = duplicate[1]
            self.summary.already_written += 1
            self.summary.duplicate_content += 1
            self.urls_per_content[entry.twin] += 1

    def _resolve_and_write(self, wanted: str | None, until: float | None = None) -> int:
        """Stream the records; resolve the first record of each URL whose status is
        `wanted` in threads; write results in input order (reproducible shards). With
        `until` (clock time), nothing new is started after it: those stay as they were."""
        window = self.settings.fetch.threads * 4
        started = 0
        with ThreadPoolExecutor(self.settings.fetch.threads, thread_name_prefix="resolve") as pool:
            in_flight: deque = deque()
            for position, item in self._records():
                if isinstance(item, RecordError):
                    continue
                entry = self.index[url_key(item.url)]
                if entry.first != position or entry.status != wanted:
                    continue
                if until is not None and self.clock.monotonic() >= until:
                    break
                in_flight.append((entry, item, pool.submit(self._resolve, item)))
                started += 1
                if len(in_flight) >= window:
                    self._take(*in_flight.popleft())
            while in_flight:
                self._take(*in_flight.popleft())
        return started

    def _drain(self) -> None:
        """With a drain deadline, go round the pending samples again until none is left."""
        deadline = self.settings.drain_deadline_s
        if deadline <= 0:
            return
        round_number = 0
        while True:
            pending = sum(1 for e in self.index.values() if e.status == "pending")
            remaining = deadline - (self.clock.monotonic() - self.started)
            if not pending or remaining <= 0:
                if pending:
                    logger.warning("drain deadline reached with %d samples still pending", pending)
                return
            round_number += 1
            pause = self.fetcher.next_probe_in()
            if pause is None:  # no host window: transient faults, back off a little
                pause = min(self.settings.fetch.retry_base_s * 2 ** min(round_number, 8),
                            self.settings.fetch.max_backoff_s)
            pause = min(pause, remaining)
            logger.info("%d samples pending; next try in %.0f s (drain deadline in %.0f s)",
                        pending, pause, remaining)
            self.clock.sleep(pause)
            self.progress.requeue(pending)
            started = self._resolve_and_write(wanted="pending", until=self.started + deadline)
            if started < pending:  # the deadline came first: the rest stay pending
                self.progress.requeue(started - pending)

    # --- one sample ---------------------------------------------------------------------

    def _resolve(self, record: Record) -> Outcome:
        """Runs in a resolve thread: cache first, then the network; then the image check."""
        path = self.cache.file_for(record.url)
        checked = self.workers.check_file(path)
        if checked.read_error is not None:
            self.cache.note_read_error(path, checked.read_error)  # then download it
        elif not checked.missing:
            if checked.image is not None:
                return Outcome("written", None, "cache", checked.image, checked.sha256)
            reason = checked.rejection.reason
            if reason not in _REFETCH_CACHE_REASONS:
                return Outcome("rejected", reason, "cache", content_sha256=checked.sha256)
            self.cache.set_aside(record.url, reason)

        crashpoints.reach("fetch:start")
        result = self.fetcher.fetch(record.url.strip())
        crashpoints.reach("fetch:done")
        if not result.ok:
            return Outcome(result.outcome, result.reason, "network", final_url=result.final_url)
        checked = self.workers.check_bytes(result.data)
        if checked.image is None:
            if checked.rejection.reason not in _REFETCH_CACHE_REASONS:
                self.cache.store(record.url, result.data)  # a real picture, just unusable
            return Outcome("rejected", checked.rejection.reason, "network",
                           final_url=result.final_url)
        self.cache.store(record.url, result.data)
        return Outcome("written", None, "network", checked.image, checked.sha256,
                       final_url=result.final_url)

    def _take(self, entry: _Entry, record: Record, future) -> None:
        """Main thread: record the outcome and write the sample if it has an image."""
        outcome = future.result()
        key = entry.key
        if outcome.status == "written":
            twin = self.state.by_content.get(content_key(outcome.content_sha256))
            if twin is not None and twin != key:
                # Same bytes under another URL: one sample, so no image is in two splits.
                outcome = Outcome("duplicate", "duplicate_content", outcome.source,
                                  content_sha256=outcome.content_sha256, twin=twin)
                self.summary.duplicate_content += 1
                self.urls_per_content[twin] += 1
                written = self.state.written.get(twin)
                twin_class = written.class_id if written is not None else self.placed[twin]
                self._note_duplicate_label(entry, record.url, twin, twin_class)
                logger.info("%s has the same bytes as sample %s; kept once", record.url, twin)
            else:
                self._write(key, entry, record, outcome)
        entry.status, entry.reason, entry.source = outcome.status, outcome.reason, outcome.source
        entry.twin = outcome.twin
        self.progress.update(outcome.status, outcome.source)

    def _write(self, key: str, entry: _Entry, record: Record, outcome: Outcome) -> None:
        writer = self.writers.get(entry.split)
        if writer is None:
            writer = SplitShardWriter(
                self.state.dataset_dir, entry.split, self.state.next_shard_index(entry.split),
                self.settings.shard_max_samples, self.settings.shard_max_bytes,
                on_close=lambda closed, split=entry.split: self._listed(split, closed),
                mtime=self.started_wall)
            self.writers[entry.split] = writer
        metadata = {
            "url": record.url,
            "label": entry.label,
            "class_id": entry.class_id,
            "group": record.group,
            "record": record.record_id,
            "source": outcome.source,
            "width": outcome.image.width,
            "height": outcome.image.height,
            "source_format": outcome.image.source_format,
            "content_sha256": outcome.content_sha256,
            **({"final_url": outcome.final_url} if outcome.final_url not in (None, record.url) else {}),
            **({"extra": record.extra} if record.extra else {}),
        }
        writer.add(ShardSample(key, entry.class_id, outcome.image.jpeg, metadata,
                               outcome.content_sha256))
        crashpoints.reach("sample:added")
        self.placed[key] = entry.class_id
        self.state.by_content.setdefault(content_key(outcome.content_sha256), key)
        outcome.image = None  # the bytes are in the shard now; free them
        if outcome.source == "cache":
            self.summary.from_cache += 1
        else:
            self.summary.downloaded += 1

    def _note_duplicate_label(self, entry: _Entry, url: str | None, twin: str, twin_class: int,
                              quiet: bool = False) -> None:
        if twin_class == entry.class_id:
            return
        self.summary.duplicate_label_conflicts += 1
        if not quiet:
            logger.warning("label conflict: %s (label %r) has the same bytes as sample %s "
                           "(label %r); the written sample's label is kept", url,
                           entry.label, twin, self.state.classes.label_of(twin_class))

    def _listed(self, split: str, closed: ClosedShard) -> None:
        self.state.list_shard(split, closed, self.build_id, _iso(self.started_wall))
        for key, _, _ in closed.samples:  # state.written knows them now
            self.placed.pop(key, None)
        self.summary.new_shards.append(closed.name)
        logger.info("wrote %s (%d samples, %.1f MB)", closed.name, closed.num_samples,
                    closed.num_bytes / 1e6)

    # --- the end --------------------------------------------------------------------------

    def _ledger_rows(self):
        """Last pass over the records: one row per record, in input order."""
        written = self.state.written
        label_of = self.state.classes.label_of
        for position, item in self._records():
            if isinstance(item, RecordError):
                yield {"record": f"{item.source}:{item.line_number}", "source": item.source,
                       "line": item.line_number, "status": "rejected", "reason": "invalid_record",
                       "detail": item.problem}
                continue
            key = url_key(item.url)
            entry = self.index[key]
            target = written.get(key)
            if entry.status == "duplicate":
                target = written.get(entry.twin)
            row = {"record": item.record_id, "source": item.source, "line": item.line_number,
                   "url": item.url, "key": key, "label": item.label}
            if target is not None:
                row.update(status="written", split=target.split, shard=target.shard,
                           class_id=target.class_id)
                if target.key != key:
                    row.update(sample=target.key, note="duplicate_content")
                if position != entry.first:
                    row.setdefault("note", "duplicate_url")
                    row["first_record"] = self._record_id(entry.first)
            else:
                row.update(status=entry.status, reason=entry.reason)
                if entry.source:  # where the image (or the answer) came from
                    row["image_from"] = entry.source
            if item.label != (label_of(target.class_id) if target else entry.label):
                row["label_conflict"] = True
            yield row
        yield from self._absent_rows()

    def _absent_rows(self):
        """Rows of written samples whose records are gone from the input (a file dropped
        from the config, a regenerated export): their shards still hold them, so the
        ledger keeps saying where they are. The last ledger's rows are carried over; a
        written sample that has none there either (its ledger was lost) gets a row made
        from the shard index, so every sample in a shard has a row."""
        path = self.state.dataset_dir / LEDGER
        emitted, carried = set(), set()
        if path.exists():
            for _, row in iter_ledger(path):
                if row.get("status") != "written" or row.get("key") in self.index:
                    continue
                if row.get("sample", row.get("key")) not in self.state.written:
                    continue
                row = {**row, "in_input": False}
                record = row["record"]
                source, _, line = record.rpartition(":")
                if line.isdigit() and int(line) <= self.last_line.get(source, 0):
                    record = f"{record}@earlier"  # the same file:line now holds another record
                    if not record.endswith("@earlier@earlier"):
                        row["record"] = record
                if row["record"] in emitted or row["record"].endswith("@earlier@earlier"):
                    continue
                emitted.add(row["record"])
                carried.add(row["key"])
                yield row
        for key, written in self.state.written.items():
            if key in self.index or key in carried:
                continue
            yield {"record": f"{written.shard}#{key}", "key": key, "status": "written",
                   "split": written.split, "shard": written.shard, "class_id": written.class_id,
                   "in_input": False, "note": "no_record_known"}

    def _counted(self, rows):
        """Pass rows through, counting fates for the summary."""
        summary = self.summary
        pending, rejected = Counter(), Counter()
        for row in rows:
            if row["status"] == "pending":
                pending[row["reason"]] += 1
            elif row["status"] == "rejected":
                rejected[row["reason"]] += 1
            yield row
        summary.pending_records = sum(pending.values())
        summary.rejected_records = sum(rejected.values())
        summary.pending_by_reason = dict(pending)
        summary.rejected_by_reason = dict(rejected)

    def _finish(self) -> None:
        summary = self.summary
        summary.new_samples = sum(1 for e in self.index.values() if e.status == "written")
        summary.written_by_split = dict(Counter(
            e.split for e in self.index.values() if e.status == "written"))
        summary.cache_errors = self.cache.read_errors + self.cache.write_errors
        summary.cache_created = self.cache.created
        summary.suspected_placeholders = {
            key: others + 1 for key, others in self.urls_per_content.most_common()
            if others + 1 >= PLACEHOLDER_MIN_URLS}
        for key, count in list(summary.suspected_placeholders.items())[:5]:
            logger.warning("suspected placeholder: %d different URLs give the very bytes of "
                           "sample %s (%s); look at it, and reject those URLs at the source "
                           "if it is not a real photo", count, key,
                           self.state.written[key].shard if key in self.state.written else "?")
        summary.fetch_counters = {**self.fetcher.counters(), "cached": summary.from_cache}
        summary.hosts = self.fetcher.host_report()
        new_shards = Counter(name.split("/", 1)[0] for name in summary.new_shards)
        for name, entry in self.state.manifest["splits"].items():
            summary.splits[name] = {"new_samples": summary.written_by_split.get(name, 0),
                                    "new_shards": new_shards.get(name, 0),
                                    "samples": entry["num_samples"], "shards": len(entry["shards"])}

        # Ledger first, then the manifest that says the build is complete: a kill between
        # the two leaves a right ledger and a build entry the next build closes.
        ledger_changed = self.state.replace_ledger(self._counted(self._ledger_rows()))
        summary.wall_s = self.clock.monotonic() - self.started
        resolved = sum(self.progress.counts[k] for k in ("written", "rejected", "pending", "duplicate"))
        summary.samples_per_s = resolved / summary.wall_s if summary.wall_s > 0 else 0.0
        # After a killed build the ledger may already be right (it died after writing it)
        # while its history entry still says "interrupted": that needs writing down too.
        if (not summary.new_shards and not ledger_changed and self.state.manifest["builds"]
                and not self.state.interrupted):
            summary.changed = False
            summary.build_id = None
            logger.info("nothing new: no shard written, the dataset is unchanged")
            return
        summary.changed = True
        manifest = self.state.manifest
        manifest["num_pending"] = summary.pending_records
        manifest["num_rejected"] = summary.rejected_records
        manifest["num_classes"] = len(self.state.classes)
        entry = self.state.build_entry(self.build_id, _iso(self.started_wall))
        entry.update({
            "finished": _iso(time.time()),
            "status": "complete",
            "records": summary.records,
            "new_samples": summary.new_samples,
            "new_shards": summary.new_shards,
            "pending": summary.pending_records,
            "rejected": summary.rejected_records,
            **({"resumed": summary.resumed_builds} if summary.resumed_builds else {}),
            "image": self._image_settings(),
        })
        self.state.save_manifest()
        write_wids_indexes(self.state.dataset_dir, manifest)
        stats = {key: value for key, value in summary.__dict__.items() if key != "stats_file"}
        summary.stats_file = str(self.state.save_stats(self.build_id, stats))


def _position(source_number: int, line_number: int) -> int:
    """A record's place in the input as one int: file number, then line (< 2**32)."""
    return (source_number << 32) | line_number


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
