"""An IterableDataset over one split's shards, correct on every rank and worker.

Assignment. The shard list (shuffled per epoch for training: seeded by seed and epoch,
so every rank and worker computes the same order) is dealt to global workers
`rank * num_workers + worker`. When there are fewer shards than global workers, every
worker reads every shard and keeps every G-th sample instead, so no worker sits idle and
no sample is read twice in an epoch (at the price of more reading); a warning says so.

Counts. Training yields exactly `len(self)` batches on every rank, computed from the
manifest's sample counts, cycling through the worker's shards again if they run short,
so collective operations never wait on a rank that ran out. Evaluation yields every
sample exactly once, in a fixed order, with a partial last batch per worker.

Safety. Only the members we know are decoded (jpg, cls); nothing is unpickled. A damaged
shard is logged with its name and skipped; `skipped` counts what was lost.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .transforms import center_crop, decode_rgb, random_resized_crop

logger = logging.getLogger(__name__)

_KNOWN_MEMBERS = ("jpg", "cls", "json")


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
    shards = manifest["splits"][split]["shards"]
    return ([str(dataset_dir / s["name"]) for s in shards], [s["num_samples"] for s in shards],
            manifest)


class ShardStream(IterableDataset):
    def __init__(self, shard_paths: list[str], shard_sizes: list[int], *, training: bool,
                 batch_size: int, image_size: int, num_workers: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 split_name: str = "split"):
        if not shard_paths:
            raise ValueError(f"{split_name} has no shards; build the dataset first")
        self.shard_paths = list(shard_paths)
        self.shard_sizes = list(shard_sizes)
        self.training = training
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_workers = max(1, num_workers)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.split_name = split_name
        self._epoch = multiprocessing.Value("i", 0)     # shared with workers, even persistent ones
        self._skipped = multiprocessing.Value("i", 0)
        num_global = self.world_size * self.num_workers
        self.sample_striding = len(self.shard_paths) < num_global
        if self.sample_striding:
            logger.warning("%s: %d shards for %d ranks x %d workers; every worker reads all "
                           "shards and keeps its share of samples (more I/O). Build smaller "
                           "shards (build.shard_max_samples) or use fewer workers to avoid it.",
                           split_name, len(self.shard_paths), world_size, self.num_workers)
        total = sum(self.shard_sizes)
        if training:
            self.batches_per_rank = total // (world_size * batch_size)
            if self.batches_per_rank == 0:
                raise ValueError(f"{split_name}: {total} samples are fewer than one batch of "
                                 f"{batch_size} per rank x {world_size} ranks; lower batch_size")

    # --- public --------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the shard order for the next iteration (training); workers see it too."""
        self._epoch.value = epoch

    @property
    def skipped(self) -> int:
        """Samples lost to damaged shards so far, over all workers."""
        return self._skipped.value

    def __len__(self) -> int:
        if self.training:
            return self.batches_per_rank
        return sum(-(-n // self.batch_size) for n in self._eval_counts_per_worker())

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        global_worker = self.rank * self.num_workers + worker
        epoch = self._epoch.value
        if self.training:
            yield from self._train_batches(global_worker, worker, epoch)
        else:
            yield from self._batches(self._eval_samples(global_worker), partial=True)

    # --- assignment ----------------------------------------------------------------------

    def _num_global(self) -> int:
        return self.world_size * self.num_workers

    def _shard_order(self, epoch: int, cycle: int = 0) -> list[int]:
        order = list(range(len(self.shard_paths)))
        if self.training:
            random.Random(f"{self.seed}:{epoch}:{cycle}").shuffle(order)
        return order

    def _my_shards(self, order: list[int], global_worker: int) -> list[int]:
        if self.sample_striding:
            return order
        return order[global_worker::self._num_global()]

    def _eval_counts_per_worker(self) -> list[int]:
        """Samples each of this rank's workers yields in evaluation (for __len__)."""
        counts = []
        for worker in range(self.num_workers):
            global_worker = self.rank * self.num_workers + worker
            if self.sample_striding:
                total = sum(self.shard_sizes)
                counts.append(len(range(global_worker, total, self._num_global())))
            else:
                mine = self._my_shards(self._shard_order(0), global_worker)
                counts.append(sum(self.shard_sizes[i] for i in mine))
        return counts

    # --- reading -------------------------------------------------------------------------

    def _samples(self, shard_indices: list[int], stride_of: int | None = None):
        """Raw samples (dict with jpg/cls) from these shards, in order, damaged ones skipped."""
        position = 0
        for index in shard_indices:
            path = self.shard_paths[index]
            for sample in self._read_shard(path):
                if stride_of is not None:
                    keep = position % self._num_global() == stride_of
                    position += 1
                    if not keep:
                        continue
                yield sample

    def _read_shard(self, path: str):
        errors = []

        def note_error(exc: Exception) -> bool:
            errors.append(exc)
            return False  # stop reading this shard: past a broken header nothing is trustworthy

        expected = self.shard_sizes[self.shard_paths.index(path)]
        count = 0
        with open(path, "rb") as tar_stream:  # ours to close, not the garbage collector's
            files = wds.tariterators.tar_file_expander(
                [{"url": path, "stream": tar_stream}], handler=note_error,
                select_files=_is_known_member)
            for sample in wds.tariterators.group_by_keys(files, handler=note_error):
                if "jpg" not in sample or "cls" not in sample:
                    errors.append(ValueError(f"sample {sample.get('__key__')!r} incomplete"))
                    continue
                count += 1
                yield {"jpg": sample["jpg"], "cls": sample["cls"]}
        if errors or count != expected:
            lost = max(0, expected - count)
            with self._skipped.get_lock():
                self._skipped.value += lost
            logger.warning("damaged shard %s: read %d of %d samples, skipped the rest (%s)",
                           path, count, expected, errors[0] if errors else "fewer samples than listed")

    def _eval_samples(self, global_worker: int):
        order = self._shard_order(0)
        if self.sample_striding:
            return self._samples(order, stride_of=global_worker)
        return self._samples(self._my_shards(order, global_worker))

    def _train_batches(self, global_worker: int, worker: int, epoch: int):
        # This rank's batches are dealt to its workers; DataLoader takes them round-robin.
        quota = self.batches_per_rank // self.num_workers + (
            worker < self.batches_per_rank % self.num_workers)
        if quota == 0:
            return
        rng = random.Random(f"{self.seed}:{epoch}:{global_worker}")

        def endless():
            cycle = 0
            while True:
                order = self._shard_order(epoch, cycle)
                if self.sample_striding:
                    source = self._samples(order, stride_of=global_worker)
                else:
                    source = self._samples(self._my_shards(order, global_worker))
                produced = False
                for sample in source:
                    produced = True
                    yield sample
                if not produced:
                    raise RuntimeError(f"{self.split_name}: worker {global_worker} found no "
                                       "readable sample in its shards")
                cycle += 1

        batches = self._batches(_buffer_shuffle(endless(), self.shuffle_buffer, rng), partial=False,
                                rng=rng)
        for _ in range(quota):
            yield next(batches)

    def _batches(self, samples, partial: bool, rng: random.Random | None = None):
        images = np.empty((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
        labels = np.empty(self.batch_size, np.int64)
        filled = 0
        for sample in samples:
            try:
                image = decode_rgb(sample["jpg"], self.image_size)
                if self.training:
                    images[filled] = random_resized_crop(image, self.image_size, rng)
                else:
                    images[filled] = center_crop(image, self.image_size)
                labels[filled] = int(sample["cls"])
            except (OSError, ValueError, SyntaxError) as exc:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logger.warning("skipping undecodable sample: %s", exc)
                continue
            filled += 1
            if filled == self.batch_size:
                yield _to_tensors(images, labels, filled)
                filled = 0
        if partial and filled:
            yield _to_tensors(images, labels, filled)


def _is_known_member(name: str) -> bool:
    return name.rpartition(".")[2] in _KNOWN_MEMBERS


def _to_tensors(images: np.ndarray, labels: np.ndarray, count: int):
    # NCHW uint8, copied out of the reused buffer; normalise on the device.
    batch = torch.from_numpy(images[:count].copy()).permute(0, 3, 1, 2).contiguous()
    return batch, torch.from_numpy(labels[:count].copy())


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
