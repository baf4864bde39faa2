"""Who reads what: a pure function of the manifest's counts, the seed and the epoch.

Every rank and every worker computes the same plan from the same inputs, so they agree
on it without talking to each other.

Global worker `g = rank * workers + worker`. Workers form groups of `group_size`; each
group gets whole shards, dealt to balance sample counts, and worker `j` of a group keeps
the samples at positions `p % group_size == j` of its group's shards (positions counted
from the manifest, so a damaged shard cannot shift another worker's share). With enough
shards `group_size` is 1: one shard, one worker. With fewer shards than workers the group
is a rank's workers (shards >= ranks) or everyone, and shards are read more than once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerPart:
    shards: tuple[int, ...]   # shard indices, in reading order
    stride: int               # keep every stride-th sample ...
    phase: int                # ... starting at this position
    num_samples: int          # samples this worker keeps per pass
    quota: int | None         # training: batches to yield this epoch; evaluation: None


def group_size(num_shards: int, world_size: int, num_workers: int) -> int:
    if num_shards >= world_size * num_workers:
        return 1
    if num_shards >= world_size:
        return num_workers
    return world_size * num_workers


def shard_order(num_shards: int, *, shuffle: bool, seed: int, epoch: int) -> list[int]:
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def deal(order: list[int], sizes: list[int], bins: int, per_rank: int = 1) -> list[list[int]]:
    """Largest shards first, each to the bin with fewest samples so far.

    Bins are rank-major (`rank * per_rank + worker`); ties go to worker 0 of every rank
    before worker 1 of any, so ranks stay balanced even when workers cannot be. The sort
    is stable, so shards of equal size keep their (shuffled) order: with the usual
    equal-sized shards this is round-robin dealing of the shuffled list.
    """
    dealt: list[list[int]] = [[] for _ in range(bins)]
    load = [0] * bins
    for shard in sorted(order, key=lambda s: -sizes[s]):
        target = min(range(bins), key=lambda b: (load[b], b % per_rank, b // per_rank))
        dealt[target].append(shard)
        load[target] += sizes[shard]
    return dealt


def kept(count: int, stride: int, phase: int) -> int:
    """How many of positions 0..count-1 satisfy p % stride == phase."""
    return len(range(phase, count, stride))


def split_quota(quota: int, weights: list[int]) -> list[int]:
    """`quota` split in proportion to `weights` (largest remainders; ties to the lowest)."""
    total = sum(weights)
    if total == 0:
        base = [quota // len(weights)] * len(weights)
        for i in range(quota - sum(base)):
            base[i] += 1
        return base
    exact = [quota * w / total for w in weights]
    base = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in by_remainder[:quota - sum(base)]:
        base[i] += 1
    return base


def plan_epoch(sizes: list[int], *, world_size: int, num_workers: int, seed: int, epoch: int,
               training: bool, batch_size: int) -> list[WorkerPart]:
    """One WorkerPart per global worker (rank-major)."""
    num_global = world_size * num_workers
    size = group_size(len(sizes), world_size, num_workers)
    order = shard_order(len(sizes), shuffle=training, seed=seed, epoch=epoch)
    groups = deal(order, sizes, num_global // size, num_workers if size == 1 else 1)
    parts = []
    for g in range(num_global):
        shards = tuple(groups[g // size])
        count = sum(sizes[s] for s in shards)
        parts.append(WorkerPart(shards, size, g % size, kept(count, size, g % size), None))
    if not training:
        return parts
    per_rank = batches_per_rank(sum(sizes), world_size, batch_size)
    out = []
    for rank in range(world_size):
        mine = parts[rank * num_workers:(rank + 1) * num_workers]
        quotas = split_quota(per_rank, [p.num_samples for p in mine])
        out += [WorkerPart(p.shards, p.stride, p.phase, p.num_samples, q) for p, q in zip(mine, quotas)]
    return out


def batches_per_rank(total_samples: int, world_size: int, batch_size: int) -> int:
    return total_samples // (world_size * batch_size)
