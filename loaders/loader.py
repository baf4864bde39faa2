"""`make_loader(dataset_dir, split)`: a torch DataLoader over a built dataset's shards.

Reads the manifest and local (or WebDataset-URL) shards only; never the network for images.
Batches are assembled inside the workers; the DataLoader only moves them.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .ring import RingBatch, forget_rings
from .stream import ShardStream, read_split

logger = logging.getLogger(__name__)


class ShardLoader(DataLoader):
    """A DataLoader that starts each pass at the right epoch.

    `set_epoch(e)` before a pass chooses the epoch; a pass without it takes the next one,
    so the shard order changes every epoch even when the caller forgets.
    """

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def skipped(self) -> int:
        return self.dataset.skipped

    def __iter__(self):
        self.dataset.begin_epoch()  # before the workers (persistent or new) start the pass
        iterator = super().__iter__()
        if not self.dataset.ring_slots or self.num_workers == 0:
            return iterator
        if not hasattr(self, "_ring_tokens"):
            self._ring_tokens = set()  # rings of this loader's workers, to forget on close
        return _TakingIterator(iterator, self._ring_tokens,
                               forget_at_end=not self.persistent_workers)

    def close(self) -> None:
        """Stop persistent workers now rather than whenever the loader is collected, and
        unmap their batch slots (batches still held keep their own mapping)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        tokens = getattr(self, "_ring_tokens", set())
        forget_rings(tokens)
        tokens.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _TakingIterator:
    """The DataLoader's iterator, with each RingBatch turned into tensors (see ring.py).

    With pin_memory the pin thread has already done that (RingBatch.pin_memory) and says
    which ring the batch came from; a batch a worker sent as plain tensors (no free slot)
    passes through unchanged. The rings seen are remembered by their full token, so that
    forgetting them can never touch another loader's, even if a pid was reused.
    """

    def __init__(self, iterator, loader_tokens: set, forget_at_end: bool):
        self._iterator = iterator
        self._loader_tokens = loader_tokens
        self._tokens: set = set()
        self._forget_at_end = forget_at_end

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._forget()
            raise
        if isinstance(batch, RingBatch):
            self._seen(batch.token)
            return batch.take()
        token = getattr(batch, "ring_token", None)
        if token is not None:  # pinned by the pin thread
            self._seen(token)
            return tuple(batch)
        return batch

    def _seen(self, token: str) -> None:
        if token not in self._tokens:
            self._tokens.add(token)
            self._loader_tokens.add(token)

    def __len__(self):
        return len(self._iterator)

    def __getattr__(self, name):  # _workers, _shutdown_workers, ... of the real iterator
        if name in ("_iterator", "_tokens", "_loader_tokens", "_forget_at_end"):
            raise AttributeError(name)  # not set yet: __init__ failed part-way
        return getattr(self._iterator, name)

    def _forget(self):
        if self._forget_at_end:  # these workers exit with the pass: drop their mappings
            forget_rings(self._tokens)
            self._loader_tokens.difference_update(self._tokens)
            self._tokens = set()

    def __del__(self):
        try:
            self._forget()
        except Exception:  # noqa: BLE001 - at interpreter exit modules may be half gone
            pass


def make_loader(dataset_dir, split: str, *, batch_size: int = 64, num_workers: int = 2,
                image_size: int = 224, training: bool | None = None, seed: int = 0,
                shuffle_buffer: int = 1000, pin_memory: bool | None = None,
                persistent_workers: bool | None = None, prefetch_factor: int = 2,
                rank: int | None = None, world_size: int | None = None,
                keys: bool = False) -> ShardLoader:
    """Train (`training` defaults to split == "train"): shuffled shards and samples, random
    crops and flips, exactly `len(loader)` full batches on every rank. Val/test: every
    sample once across all ranks and workers, centre crops, fixed order, partial batches.
    Yields (uint8 images N x 3 x image_size x image_size, int64 labels), plus the list of
    sample keys when `keys` is true.

    Rank and world size come from torch.distributed when it is initialised.
    `persistent_workers` defaults to on for training (no restart stall at each epoch).
    """
    if training is None:
        training = split == "train"
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None:
        distributed = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    paths, sizes, _ = read_split(dataset_dir, split)
    stream = ShardStream(paths, sizes, training=training, batch_size=batch_size,
                         image_size=image_size, num_workers=num_workers, rank=rank,
                         world_size=world_size, seed=seed, shuffle_buffer=shuffle_buffer,
                         split_name=f"{dataset_dir}:{split}", keys=keys)
    # Reused shared-memory batch slots: the in-flight batches, one being taken, one spare.
    stream.ring_slots = prefetch_factor + 2 if num_workers > 0 else 0
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = training
    return ShardLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=persistent_workers and num_workers > 0,
                       prefetch_factor=prefetch_factor if num_workers > 0 else None)
