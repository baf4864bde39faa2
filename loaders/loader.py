"""`make_loader(dataset_dir, split)`: a torch DataLoader over a built dataset's shards.

Reads the manifest and local (or WebDataset-URL) shards only; never the network for images.
Batches are assembled inside the workers; the DataLoader only moves them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .stream import ShardStream, read_split


def make_loader(dataset_dir, split: str, *, batch_size: int = 64, num_workers: int = 2,
                image_size: int = 224, training: bool | None = None, seed: int = 0,
                shuffle_buffer: int = 1000, pin_memory: bool | None = None,
                persistent_workers: bool = False) -> DataLoader:
    """Train (`training` defaults to split == "train"): shuffled, random crops and flips,
    the same number of batches on every rank. Val/test: every sample once across all ranks
    and workers, centre crops, fixed order. Yields (uint8 images NCHW, int64 labels);
    call `loader.dataset.set_epoch(epoch)` before each training epoch.
    """
    if training is None:
        training = split == "train"
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    paths, sizes, _ = read_split(dataset_dir, split)
    stream = ShardStream(paths, sizes, training=training, batch_size=batch_size,
                         image_size=image_size, num_workers=num_workers, rank=rank,
                         world_size=world_size, seed=seed, shuffle_buffer=shuffle_buffer,
                         split_name=f"{dataset_dir}:{split}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=persistent_workers and num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
