"""An IterableDataset over one split's shards, correct on every rank and worker.

Assignment comes from `plan.plan_epoch` (see there): every process computes the same plan
from the manifest's counts, the seed and the epoch, so no shard goes to two workers in an
epoch when there are enough shards, and samples are strided exactly when there are not.

Counts. Training yields exactly `len(self)` batches per rank, the same on every rank; the
rank's quota is split over its workers in proportion to their samples, and a worker that
runs short reads its own shards again. Evaluation yields every sample exactly once, in a
fixed order, with a partial last batch per worker.

Damage. A damaged shard is logged (name, byte offset, reason) and the rest of it skipped;
`skipped` counts the samples lost, over all workers. Only image, class and metadata
members are read, as bytes; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
from pathlib import Path

from torch.utils.data import IterableDataset, get_worker_info

from . import plan
from .ring import WorkerRing, new_batch
from .tarread import DamagedShard, ReadReport, open_shard, read_samples
from .transforms import eval_into, train_into

logger = logging.getLogger(__name__)

_STATS = 4  # values per worker in ShardStream._stats
_warned: set = set()  # (split, group size) already warned about in this process
_damage_logged: set = set()  # shard paths already reported as damaged by this process


def read_split(dataset_dir: str | Path, split: str) -> tuple[list[str], list[int], dict]:
    """Shard paths and sample counts of one split, from the manifest only."""
    dataset_dir = Path(dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format_version") != 1:
        raise ValueError(f"{dataset_dir}: manifest format_version {manifest.get('format_version')!r}"
                         " is not one this loader reads (1)")
    if split not in manifest["splits"]:
        raise ValueError(f"{dataset_dir} has no split {split!r}; it has "
                         f"{', '.join(manifest['splits'])}")
    shards = [s for s in manifest["splits"][split]["shards"] if s["num_samples"] > 0]
    return ([str(dataset_dir / s["name"]) for s in shards], [s["num_samples"] for s in shards],
            manifest)


class ShardStream(IterableDataset):
    def __init__(self, shard_paths: list[str], shard_sizes: list[int], *, training: bool,
                 batch_size: int, image_size: int, num_workers: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 split_name: str = "split", keys: bool = False):
        if not shard_paths:
            raise ValueError(f"{split_name} has no shards; build the dataset first")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.shard_paths = list(shard_paths)
        self.shard_sizes = list(shard_sizes)
        self.training = training
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_workers = max(1, num_workers)  # 0 workers: the main process is the one
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.split_name = split_name
        self.keys = keys  # also yield each batch's sample keys (for tests, audits, exports)
        # Slots per worker for reusing shared-memory batches (see ring.py). 0 sends fresh
        # tensors, which any DataLoader understands; make_loader turns the ring on.
        self.ring_slots = 0
        self._ring: WorkerRing | None = None  # built inside each worker process
        # Shared memory, so set_epoch reaches persistent workers and workers' counts add up.
        self._epoch = multiprocessing.Value("q", 0)
        self._skipped = multiprocessing.Value("q", 0)
        # Per worker: rss kB, peak kB, open shards, batches sent fresh for want of a free slot.
        self._stats = multiprocessing.Array("q", _STATS * self.num_workers)
        self._epoch_chosen = False
        self._iterations = 0
        total = sum(self.shard_sizes)
        if training and plan.batches_per_rank(total, world_size, batch_size) == 0:
            raise ValueError(f"{split_name}: {total} samples are fewer than one batch of "
                             f"{batch_size} per rank x {world_size} ranks; lower batch_size")
        self._warn_if_few_shards()

    # --- public --------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the shard order for the next iteration (training); workers see it too."""
        self._epoch.value = epoch
        self._epoch_chosen = True

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def begin_epoch(self) -> int:
        """Called by the loader before each pass: without set_epoch, the epoch advances,
        so forgetting set_epoch no longer repeats the same order every epoch."""
        if self._iterations and not self._epoch_chosen:
            self._epoch.value += 1
        self._epoch_chosen = False
        self._iterations += 1
        return self._epoch.value

    @property
    def skipped(self) -> int:
        """Samples lost to damage so far (each pass that lost them counts), over all workers."""
        return self._skipped.value

    def worker_stats(self) -> list[dict]:
        """Per worker of this rank, at the end of its last pass: RSS, peak RSS, open shards,
        and ring_fallbacks: batches sent in fresh memory because the consumer still held
        every reusable slot (see ring.py). Growing fallbacks mean batches are kept alive."""
        values = list(self._stats)
        return [dict(zip(("rss_kb", "peak_rss_kb", "open_shards", "ring_fallbacks"),
                         values[_STATS * w:_STATS * (w + 1)])) for w in range(self.num_workers)]

    def __len__(self) -> int:
        if self.training:
            return plan.batches_per_rank(sum(self.shard_sizes), self.world_size, self.batch_size)
        return sum(-(-p.num_samples // self.batch_size) for p in self._rank_parts(0))

    def __iter__(self):
        info = get_worker_info()
        epoch = self._epoch.value
        if info is None:
            # Iterated in the main process (num_workers=0, or by hand): be every worker of
            # this rank in turn, so the rank still gets its whole share.
            for worker in range(self.num_workers):
                yield from self._worker_batches(worker, epoch)
            return
        if info.num_workers != self.num_workers:
            raise ValueError(f"{self.split_name}: planned for {self.num_workers} workers but the "
                             f"DataLoader has {info.num_workers}; pass the same num_workers to both "
                             "(make_loader does)")
        if self.ring_slots and self._ring is None:
            self._ring = WorkerRing(self.ring_slots, self.batch_size, self.image_size)
        if self._ring is not None:
            self._ring.begin_pass()
        try:
            yield from self._worker_batches(info.id, epoch)
        finally:
            self._record_stats(info.id)

    # --- planning ------------------------------------------------------------------------

    def _rank_parts(self, epoch: int) -> list[plan.WorkerPart]:
        parts = plan.plan_epoch(self.shard_sizes, world_size=self.world_size,
                                num_workers=self.num_workers, seed=self.seed, epoch=epoch,
                                training=self.training, batch_size=self.batch_size)
        return parts[self.rank * self.num_workers:(self.rank + 1) * self.num_workers]

    def _warn_if_few_shards(self) -> None:
        size = plan.group_size(len(self.shard_paths), self.world_size, self.num_workers)
        key = (self.split_name, size)
        # Once per run: only rank 0 speaks, once per process and split.
        if size == 1 or self.rank != 0 or key in _warned:
            return
        _warned.add(key)
        logger.warning(
            "%s: %d shards for %d ranks x %d workers; each shard is read by %d workers, each "
            "keeping one sample in %d (correct, but %dx the reading). For one shard per worker, "
            "build at least %d shards (lower build.shard_max_samples) or use num_workers <= %d.",
            self.split_name, len(self.shard_paths), self.world_size, self.num_workers, size, size,
            size, self.world_size * self.num_workers, max(1, len(self.shard_paths) // self.world_size))

    # --- reading -------------------------------------------------------------------------

    def _worker_batches(self, worker: int, epoch: int):
        part = self._rank_parts(epoch)[worker]
        global_worker = self.rank * self.num_workers + worker
        if not self.training:
            yield from self._batches(self._part_samples(part), eval_view_fn(self.image_size),
                                     partial=True)
            return
        if part.quota == 0:
            return
        rng = random.Random(f"samples:{self.seed}:{epoch}:{global_worker}")
        view = train_view_fn(self.image_size, rng)
        batches = self._batches(self._endless(part, global_worker, rng), view, partial=False)
        try:
            for _ in range(part.quota):
                yield next(batches)
        finally:
            batches.close()  # closes the shard file now, not when the generator is collected

    def _endless(self, part: plan.WorkerPart, global_worker: int, rng: random.Random):
        """This worker's samples, shuffled, pass after pass; if none is readable, everyone's.

        Each pass is shuffled on its own, so no sample comes back before all of the
        worker's others have had their turn (a buffer fed across passes would repeat some).
        """
        fallback = False
        while True:
            produced = False
            for sample in _buffer_shuffle(self._part_samples(part), self.shuffle_buffer, rng):
                produced = True
                yield sample
            if produced:
                continue
            if fallback:
                raise RuntimeError(f"{self.split_name}: no readable sample in any shard")
            logger.warning("%s: worker %d found no readable sample in its shards; reading "
                           "the other shards too to fill its batches", self.split_name,
                           global_worker)
            fallback = True
            part = plan.WorkerPart(tuple(range(len(self.shard_paths))), 1, 0,
                                   sum(self.shard_sizes), part.quota)

    def _part_samples(self, part: plan.WorkerPart):
        """The samples of a part: its shards in order, every stride-th from phase."""
        position = 0  # counted with the manifest's sizes, so damage cannot shift the stride
        for index in part.shards:
            size = self.shard_sizes[index]
            first = (part.phase - position) % part.stride
            for at, sample in enumerate(self._read_shard(index, first, part.stride)):
                if at >= first and (at - first) % part.stride == 0:
                    yield sample
            position += size

    def _read_shard(self, index: int, first: int = 0, stride: int = 1):
        """All samples of a shard, damaged parts skipped. Lost samples are counted only at
        the positions this worker owns (`first`, then every `stride`-th), so workers that
        share a shard do not each count its whole loss."""
        path, expected = self.shard_paths[index], self.shard_sizes[index]
        report = ReadReport()
        try:
            with open_shard(path) as stream:  # ours to close, not the garbage collector's
                for sample in read_samples(stream, report):
                    if report.complete > expected:
                        break  # more than listed: positions past the count belong to no one
                    yield sample
        except OSError as exc:
            report.damage = report.damage or DamagedShard(report.offset,
                                                          f"{type(exc).__name__}: {exc}")
        lost = max(0, expected - report.complete)
        if lost or report.damage or report.incomplete:
            start = max(report.complete, first)
            start += (first - start) % stride  # the first owned position at or past it
            with self._skipped.get_lock():
                self._skipped.value += len(range(start, expected, stride))
            log = logger.warning if path not in _damage_logged else logger.debug
            _damage_logged.add(path)  # once per process: training re-reads it every cycle
            damage = report.damage or DamagedShard(
                report.offset, f"holds {report.complete} complete samples, the manifest lists {expected}")
            log("damaged shard %s at byte %d: %s; read %d of %d samples, skipped %d%s", path,
                damage.offset, damage.reason, min(report.complete, expected), expected, lost,
                           f" (incomplete: {', '.join(report.incomplete[:3])})"
                           if report.incomplete else "")

    def _batches(self, samples, view, partial: bool):
        size = self.image_size
        ring = self._ring
        images, labels, slot, keys, filled = None, None, None, [], 0
        for sample in samples:
            if images is None:
                slot = ring.acquire() if ring is not None else None
                if slot is None:
                    images, labels = new_batch(self.batch_size, size,
                                               shared=get_worker_info() is not None)
                else:
                    images, labels = ring.slots[slot]
                # numpy views to write into: the batch's HWC rows, and its labels (a numpy
                # store costs a tenth of a tensor item assignment).
                rows, label_rows = images.permute(0, 2, 3, 1).numpy(), labels.numpy()
                keys = []
            try:
                label_rows[filled] = int(sample["cls"])  # a class past int64 is refused here
                view(rows[filled], sample["image"])
            except (OSError, ValueError, SyntaxError, RuntimeError, OverflowError) as exc:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logger.warning("%s: skipping sample %s that does not decode: %s",
                               self.split_name, sample.get("__key__"), exc)
                continue
            keys.append(sample["__key__"])
            filled += 1
            if filled == self.batch_size:
                yield self._send(images, labels, slot, filled, keys)
                images, filled = None, 0
        if partial and filled:
            if slot is None:
                images, labels = images[:filled].clone(), labels[:filled].clone()
            yield self._send(images, labels, slot, filled, keys)
        elif images is not None and slot is not None:
            ring.release(slot)  # begun but never sent (a short training tail, or closed)

    def _send(self, images, labels, slot, count, keys):
        if slot is not None:
            return self._ring.message(slot, count, keys if self.keys else None)
        return (images, labels, keys) if self.keys else (images, labels)

    def _record_stats(self, worker: int) -> None:
        rss, hwm = _memory_kb()
        fallbacks = self._ring.fallbacks if self._ring is not None else 0
        self._stats[_STATS * worker:_STATS * (worker + 1)] = [rss, hwm, _open_shard_files(),
                                                              fallbacks]


def train_view_fn(size: int, rng: random.Random):
    return lambda out, data: train_into(out, data, size, rng)


def eval_view_fn(size: int):
    return lambda out, data: eval_into(out, data, size)


def _open_shard_files() -> int:
    """Tar files this process holds open (-1 where /proc is missing): 0 between passes."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    count = 0
    for name in names:
        try:
            count += os.readlink(f"/proc/self/fd/{name}").endswith(".tar")
        except OSError:
            pass  # closed meanwhile, e.g. the listing's own descriptor
    return count


def _memory_kb() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in kB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak


def _buffer_shuffle(samples, buffer_size: int, rng: random.Random):
    if buffer_size <= 1:
        yield from samples
        return
    buffer = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer
