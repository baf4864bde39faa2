"""One rank of the distributed loader checks; run by test_distributed.py as 2 processes.

The environment is torchrun's (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT).
Every training batch is followed by an all_reduce, as a DDP step would be, so unequal
batch counts show up as a timeout error instead of passing unnoticed. Results go to
OUT/rank<R>.json, warnings to OUT/rank<R>.log (the DataLoader workers inherit the handler).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from loaders import evaluate, make_loader


class PredictsClassZero(torch.nn.Module):
    def forward(self, images):
        logits = torch.zeros(len(images), 4)
        logits[:, 0] = 1
        return logits


def train_pass(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    keys = []
    for images, labels, batch_keys in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        step = torch.ones(1)
        dist.all_reduce(step)  # a collective per step: a rank with fewer batches would hang
        keys.append(batch_keys)
    return keys


def eval_pass(loader):
    return [k for _, _, batch_keys in loader for k in batch_keys]


def main(datasets: dict, out: str) -> None:
    rank = int(os.environ["RANK"])
    logging.basicConfig(filename=os.path.join(out, f"rank{rank}.log"), level=logging.WARNING,
                        format="%(process)d %(name)s %(message)s")
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    common = {"image_size": 16, "keys": True}
    results = {"rank": rank, "world_size": dist.get_world_size()}

    for workers in (0, 2):
        with make_loader(datasets["uneven"], "train", batch_size=4, num_workers=workers,
                         **common) as loader:
            results[f"uneven_w{workers}"] = {"len": len(loader), "batches": train_pass(loader)}

    def shard_walk(seed, epochs):
        with make_loader(datasets["many"], "train", batch_size=2, num_workers=2, seed=seed,
                         shuffle_buffer=1, **common) as loader:
            return [train_pass(loader, epoch) for epoch in epochs]

    results["epochs_seed0"] = shard_walk(0, [0, 1])
    results["epochs_seed0_again"] = shard_walk(0, [0])
    results["epochs_seed1"] = shard_walk(1, [0])

    for name in ("many", "single", "damaged"):
        loader = make_loader(datasets[name], "val", batch_size=3, num_workers=2, **common)
        results[f"{name}_val"] = {"keys": eval_pass(loader), "len": len(loader),
                                  "skipped": loader.skipped}
        plain = make_loader(datasets[name], "val", batch_size=3, num_workers=2, image_size=16)
        results[f"{name}_eval"] = evaluate(PredictsClassZero(), plain, torch.device("cpu"))
    for name in ("single", "damaged"):
        with make_loader(datasets[name], "train", batch_size=2, num_workers=2, **common) as loader:
            results[f"{name}_train"] = {"len": len(loader), "batches": train_pass(loader)}

    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as stream:
        json.dump(results, stream)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2])
