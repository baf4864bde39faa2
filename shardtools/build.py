"""The build: records and cache in, shards, manifest, class index and ledger out.

    read records -> collapse to samples -> skip those already written -> assign split and
    class -> resolve each image (cache, else fetcher) and check it, in threads -> write, in
    input order, to the split's shard writer -> list each closed shard -> ledger, stats.

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

import hashlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import crashpoints
from .cache import ImageCache
from .dataset import DatasetLock, DatasetState
from .errors import ImageRejected, RecordError
from .fetch import SYSTEM_CLOCK, Clock, Fetcher
from .imaging.check import ProcessedImage
from .records import read_records
from .samples import Sample, collapse
from .settings import BuildSettings
from .shards import ClosedShard, ShardSample, SplitShardWriter
from .splits import split_for
from .workers import ImageWorkers

logger = logging.getLogger(__name__)

# A cache file rejected for one of these is damaged rather than a bad picture: set it aside
# and download the URL again.
_REFETCH_CACHE_REASONS = frozenset({"truncated", "not_an_image", "decode_error"})
# Network rejections that a later build would only repeat; other rejections are re-checked.
_STICKY_REJECTIONS = ("http_", "redirect_loop", "unsupported_scheme", "too_large", "invalid_url")
_PROGRESS_EVERY_S = 10.0


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
    # Builds found killed ("running") when this one opened the directory, and the
    # files they left that were removed.
    resumed_builds: list[int] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)
    new_classes: int = 0
    written_by_split: dict[str, int] = field(default_factory=dict)
    fetch_counters: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0
    stats_file: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all written; 3 some pending; 4 some rejected; 5 both (README: exit status)."""
        if self.pending_records and self.rejected_records:
            return 5
        if self.rejected_records:
            return 4
        return 3 if self.pending_records else 0


def run_build(settings: BuildSettings, clock: Clock = SYSTEM_CLOCK) -> BuildSummary:
    """Run one build over `settings`. Holds the dataset lock for its whole length."""
    dataset_dir = Path(settings.output_dir)
    with DatasetLock(dataset_dir):
        state = DatasetState.open(dataset_dir, settings.splits)
        with Fetcher(settings.fetch, clock=clock) as fetcher, \
                ImageWorkers(settings.image) as workers:
            return _Build(settings, state, fetcher, workers, clock).run()


class _Build:
    def __init__(self, settings: BuildSettings, state: DatasetState, fetcher: Fetcher,
                 workers: ImageWorkers, clock: Clock):
        self.settings = settings
        self.state = state
        self.fetcher = fetcher
        self.workers = workers
        self.clock = clock
        self.cache = ImageCache(settings.cache_dir)
        self.build_id = state.next_build_id()
        self.started_wall = time.time()
        self.started = clock.monotonic()
        self.outcomes: dict[str, Outcome] = {}
        self.summary = BuildSummary(str(state.dataset_dir), self.build_id, changed=False)
        self.writers: dict[str, SplitShardWriter] = {}
        # Samples handed to a writer in this build: key -> class id. Their shard may not be
        # listed yet, but a duplicate must already be measured against them.
        self.placed: dict[str, int] = {}
        self.summary.resumed_builds = list(state.interrupted)
        self.summary.removed_leftovers = list(state.removed_leftovers)

    # --- the steps, in order ------------------------------------------------------------

    def run(self) -> BuildSummary:
        record_errors, samples = self._read()
        todo = self._plan(samples)
        try:
            self._resolve_and_write(todo)
            self._drain(todo)
            for writer in self.writers.values():
                writer.close()
            crashpoints.reach("build:shards_closed")
        except BaseException:
            for writer in self.writers.values():
                writer.abandon()
            raise
        rows = list(self._ledger_rows(record_errors, samples))
        self._finish(rows)
        crashpoints.reach("build:done")
        return self.summary

    def _read(self) -> tuple[list[RecordError], dict[str, Sample]]:
        s = self.settings
        record_errors: list[RecordError] = []
        good = []
        for item in read_records(s.records, s.url_field, s.label_field, s.group_field):
            if isinstance(item, RecordError):
                record_errors.append(item)
                logger.warning("skipping %s", item)
            else:
                good.append(item)
        samples = collapse(good)
        self.summary.records = len(good) + len(record_errors)
        self.summary.samples = len(samples)
        self.summary.label_conflicts = sum(len(x.conflicting) for x in samples.values())
        for sample in samples.values():
            for record in sample.conflicting:
                logger.warning("label conflict: %s says %r but %s (first record of %s) says %r; "
                               "keeping %r", record.record_id, record.label, sample.first.record_id,
                               sample.url, sample.label, sample.label)
        return record_errors, samples

    def _plan(self, samples: dict[str, Sample]) -> list[Sample]:
        """Fix split and class of every sample; return those still to be written."""
        state = self.state
        new_labels = state.classes.add_new(
            x.label for x in samples.values() if x.key not in state.written)
        self.summary.new_classes = len(new_labels)
        if new_labels or not (state.dataset_dir / "classes.json").exists():
            state.save_classes()  # before any shard refers to the new ids
        todo = []
        for sample in samples.values():
            existing = state.written.get(sample.key)
            if existing is not None:
                sample.split, sample.class_id = existing.split, existing.class_id
                self.summary.already_written += 1
                continue
            sample.split = split_for(sample.group_key, self.settings.split_salt, self.settings.splits)
            sample.class_id = state.classes.id_of(sample.label)
            if self._sticky_rejection(sample) or self._known_duplicate(sample):
                continue
            todo.append(sample)
        logger.info("%d records, %d samples: %d already written, %d to do",
                    self.summary.records, len(samples), self.summary.already_written, len(todo))
        return todo

    def _sticky_rejection(self, sample: Sample) -> bool:
        previous = self.state.previous_ledger.get(sample.first.record_id)
        if previous and previous.get("status") == "rejected" and previous.get("key") == sample.key:
            reason = previous.get("reason") or ""
            if reason.startswith(_STICKY_REJECTIONS):
                self.outcomes[sample.key] = Outcome("rejected", reason, previous.get("source"))
                return True
        return False

    def _known_duplicate(self, sample: Sample) -> bool:
        """A URL the last build found to duplicate a written sample's bytes: the cache file
        is the same, so the answer would be the same; skip the decode."""
        previous = self.state.previous_ledger.get(sample.first.record_id)
        if not previous or previous.get("key") != sample.key \
                or previous.get("note") != "duplicate_content":
            return False
        twin = self.state.written.get(previous.get("sample"))
        if twin is None:
            return False
        self.outcomes[sample.key] = Outcome("duplicate", "duplicate_content",
                                            previous.get("source"),
                                            content_sha256=twin.content_sha256, twin=twin.key)
        self.summary.already_written += 1
        self.summary.duplicate_content += 1
        self._note_duplicate_label(sample, twin.key, twin.class_id, quiet=True)
        return True

    def _resolve_and_write(self, todo: list[Sample]) -> None:
        """Resolve images in threads; write results in input order (reproducible shards)."""
        window = self.settings.fetch.threads * 4
        last_progress = time.monotonic()
        with ThreadPoolExecutor(self.settings.fetch.threads, thread_name_prefix="resolve") as pool:
            in_flight: deque = deque()
            queue = iter(todo)
            for sample in queue:
                in_flight.append((sample, pool.submit(self._resolve, sample)))
                if len(in_flight) >= window:
                    self._take(*in_flight.popleft())
                if time.monotonic() - last_progress > _PROGRESS_EVERY_S:
                    self._log_progress(len(todo))
                    last_progress = time.monotonic()
            while in_flight:
                self._take(*in_flight.popleft())

    def _drain(self, todo: list[Sample]) -> None:
        """With a drain deadline, go round the pending samples again until none is left."""
        deadline = self.settings.drain_deadline_s
        if deadline <= 0:
            return
        round_number = 0
        while True:
            pending = [x for x in todo if self.outcomes[x.key].status == "pending"]
            remaining = deadline - (self.clock.monotonic() - self.started)
            if not pending or remaining <= 0:
                if pending:
                    logger.warning("drain deadline reached with %d samples still pending", len(pending))
                return
            round_number += 1
            pause = self.fetcher.next_probe_in()
            if pause is None:  # no host window: transient faults, back off a little
                pause = min(self.settings.fetch.retry_base_s * 2 ** min(round_number, 8),
                            self.settings.fetch.max_backoff_s)
            pause = min(pause, remaining)
            logger.info("%d samples pending; next try in %.0f s (drain deadline in %.0f s)",
                        len(pending), pause, remaining)
            self.clock.sleep(pause)
            self._resolve_and_write(pending)

    # --- one sample ---------------------------------------------------------------------

    def _resolve(self, sample: Sample) -> Outcome:
        """Runs in a resolve thread: cache first, then the network; then the image check."""
        data = self.cache.read(sample.url)
        if data is not None:
            try:
                return self._checked(data, "cache")
            except ImageRejected as rejection:
                if rejection.reason not in _REFETCH_CACHE_REASONS:
                    return Outcome("rejected", rejection.reason, "cache", content_sha256=_sha(data))
                self.cache.set_aside(sample.url, rejection.reason)

        crashpoints.reach("fetch:start")
        result = self.fetcher.fetch(sample.url)
        crashpoints.reach("fetch:done")
        if not result.ok:
            return Outcome(result.outcome, result.reason, "network", final_url=result.final_url)
        try:
            outcome = self._checked(result.data, "network")
        except ImageRejected as rejection:
            if rejection.reason not in _REFETCH_CACHE_REASONS:
                self.cache.store(sample.url, result.data)  # a real picture, just unusable
            return Outcome("rejected", rejection.reason, "network", final_url=result.final_url)
        self.cache.store(sample.url, result.data)
        outcome.final_url = result.final_url
        return outcome

    def _checked(self, data: bytes, source: str) -> Outcome:
        image = self.workers.process(data)
        return Outcome("written", None, source, image, _sha(data))

    def _take(self, sample: Sample, future) -> None:
        """Main thread: record the outcome and write the sample if it has an image."""
        outcome = future.result()
        if outcome.status == "written":
            twin = self.state.by_content.get(outcome.content_sha256)
            if twin is not None and twin != sample.key:
                # Same bytes under another URL: one sample, so no image is in two splits.
                outcome = Outcome("duplicate", "duplicate_content", outcome.source,
                                  content_sha256=outcome.content_sha256, twin=twin)
                self.summary.duplicate_content += 1
                written = self.state.written.get(twin)
                twin_class = written.class_id if written is not None else self.placed[twin]
                self._note_duplicate_label(sample, twin, twin_class)
                logger.info("%s has the same bytes as sample %s; kept once", sample.url, twin)
            else:
                self._write(sample, outcome)
        self.outcomes[sample.key] = outcome

    def _write(self, sample: Sample, outcome: Outcome) -> None:
        writer = self.writers.get(sample.split)
        if writer is None:
            writer = SplitShardWriter(
                self.state.dataset_dir, sample.split, self.state.next_shard_index(sample.split),
                self.settings.shard_max_samples, self.settings.shard_max_bytes,
                on_close=lambda closed, split=sample.split: self._listed(split, closed),
                mtime=self.started_wall)
            self.writers[sample.split] = writer
        metadata = {
            "url": sample.url,
            "label": sample.label,
            "class_id": sample.class_id,
            "group": sample.first.group,
            "record": sample.first.record_id,
            "source": outcome.source,
            "width": outcome.image.width,
            "height": outcome.image.height,
            "source_format": outcome.image.source_format,
            "content_sha256": outcome.content_sha256,
            **({"final_url": outcome.final_url} if outcome.final_url not in (None, sample.url) else {}),
            **({"extra": sample.first.extra} if sample.first.extra else {}),
        }
        writer.add(ShardSample(sample.key, sample.class_id, outcome.image.jpeg, metadata,
                               outcome.content_sha256))
        crashpoints.reach("sample:added")
        self.placed[sample.key] = sample.class_id
        self.state.by_content.setdefault(outcome.content_sha256, sample.key)
        outcome.image = None  # the bytes are in the shard now; free them
        if outcome.source == "cache":
            self.summary.from_cache += 1
        else:
            self.summary.downloaded += 1

    def _note_duplicate_label(self, sample: Sample, twin: str, twin_class: int,
                              quiet: bool = False) -> None:
        if twin_class == sample.class_id:
            return
        self.summary.duplicate_label_conflicts += 1
        if not quiet:
            logger.warning("label conflict: %s (label %r) has the same bytes as sample %s "
                           "(label %r); the written sample's label is kept", sample.url,
                           sample.label, twin, self.state.classes.label_of(twin_class))

    def _listed(self, split: str, closed: ClosedShard) -> None:
        self.state.list_shard(split, closed, self.build_id, _iso(self.started_wall))
        self.summary.new_shards.append(closed.name)
        logger.info("wrote %s (%d samples, %.1f MB)", closed.name, closed.num_samples,
                    closed.num_bytes / 1e6)

    # --- the end --------------------------------------------------------------------------

    def _ledger_rows(self, record_errors: list[RecordError], samples: dict[str, Sample]):
        written = self.state.written
        for error in record_errors:
            yield {"record": f"{error.source}:{error.line_number}", "source": error.source,
                   "line": error.line_number, "status": "rejected", "reason": "invalid_record",
                   "detail": error.problem}
        for sample in samples.values():
            outcome = self.outcomes.get(sample.key)
            target = written.get(sample.key)
            if outcome is not None and outcome.status == "duplicate":
                target = written.get(outcome.twin)
            for record in sample.records:
                row = {"record": record.record_id, "source": record.source, "line": record.line_number,
                       "url": record.url, "key": sample.key, "label": record.label}
                if target is not None:
                    row.update(status="written", split=target.split, shard=target.shard,
                               class_id=target.class_id)
                    if target.key != sample.key:
                        row.update(sample=target.key, note="duplicate_content")
                    if record is not sample.first:
                        row.setdefault("note", "duplicate_url")
                        row["first_record"] = sample.first.record_id
                else:
                    row.update(status=outcome.status, reason=outcome.reason, source=outcome.source)
                if record.label != (self.state.classes.label_of(target.class_id) if target else sample.label):
                    row["label_conflict"] = True
                yield row
        error_ids = {f"{e.source}:{e.line_number}" for e in record_errors}
        yield from self._absent_rows(samples, error_ids)

    def _absent_rows(self, samples: dict[str, Sample], error_ids: set[str]):
        """Rows of written samples whose records are gone from the input (a file dropped
        from the config, a regenerated export): their shards still hold them, so the
        ledger keeps saying where they are."""
        taken = error_ids | {r.record_id for x in samples.values() for r in x.records}
        for row in self.state.previous_ledger.values():
            if row.get("status") != "written" or row.get("key") in samples:
                continue
            if row.get("sample", row.get("key")) not in self.state.written:
                continue
            row = {**row, "in_input": False}
            if row["record"] in taken:  # the same file:line now holds another record
                row["record"] = f"{row['record']}@earlier"
                if row["record"] in taken:
                    continue
            taken.add(row["record"])
            yield row

    def _finish(self, rows: list[dict]) -> None:
        summary = self.summary
        status_counts = Counter(row["status"] for row in rows)
        summary.pending_records = status_counts["pending"]
        summary.rejected_records = status_counts["rejected"]
        summary.pending_by_reason = dict(Counter(r["reason"] for r in rows if r["status"] == "pending"))
        summary.rejected_by_reason = dict(Counter(r["reason"] for r in rows if r["status"] == "rejected"))
        summary.new_samples = sum(1 for o in self.outcomes.values() if o.status == "written")
        summary.written_by_split = dict(Counter(
            self.state.written[k].split for k, o in self.outcomes.items() if o.status == "written"))
        summary.fetch_counters = {**self.fetcher.counters(), "cached": summary.from_cache}
        summary.hosts = self.fetcher.host_report()
        summary.wall_s = self.clock.monotonic() - self.started

        previous = self.state.previous_ledger
        unchanged = (not summary.new_shards and len(previous) == len(rows)
                     and all(previous.get(r["record"]) == r for r in rows))
        # After a killed build the ledger may already be right (it died after writing it)
        # while its history entry still says "interrupted": that needs writing down too.
        if unchanged and self.state.manifest["builds"] and not self.state.interrupted:
            summary.changed = False
            summary.build_id = None
            logger.info("nothing new: no shard written, the dataset is unchanged")
            return
        summary.changed = True
        # Ledger first, then the manifest that says the build is complete: a kill between
        # the two leaves a right ledger and a build entry the next build closes.
        self.state.save_ledger(rows)
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
        })
        self.state.save_manifest()
        stats = {key: value for key, value in summary.__dict__.items() if key != "stats_file"}
        summary.stats_file = str(self.state.save_stats(self.build_id, stats))

    def _log_progress(self, total: int) -> None:
        counts = Counter(o.status for o in self.outcomes.values())
        logger.info("progress: %d/%d resolved (written %d, pending %d, rejected %d)",
                    len(self.outcomes), total, counts["written"], counts["pending"],
                    counts["rejected"])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
