"""Train a small CNN on a built dataset: `python -m loaders.train --config FILE`.

Runs on one process, or under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPUs)
with DistributedDataParallel. Streams the train split for a bounded number of steps,
evaluates on val, prints samples/s, loss and accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .evaluate import evaluate
from .loader import make_loader
from .normalize import normalize
from .transforms import decoder_name

logger = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: enough to show learning, cheap on a CPU."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers = []
        channels = 3
        for multiple in (1, 2, 4, 8):
            layers += [nn.Conv2d(channels, width * multiple, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width * multiple), nn.ReLU(inplace=True)]
            channels = width * multiple
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def train(settings, num_classes: int, log=print) -> dict:
    """Train for settings.max_steps steps; returns the final figures."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    model = SmallCNN(num_classes).to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=0.9,
                                weight_decay=5e-4)
    train_loader = make_loader(settings.dataset, "train", batch_size=settings.batch_size,
                               num_workers=settings.num_workers, image_size=settings.image_size,
                               seed=settings.seed, shuffle_buffer=settings.shuffle_buffer,
                               persistent_workers=True)
    val_loader = make_loader(settings.dataset, "val", batch_size=settings.batch_size,
                             num_workers=settings.num_workers, image_size=settings.image_size)

    if rank == 0:
        log(f"loaders.train: {len(train_loader)} batches per epoch per rank; JPEG path: "
            f"{decoder_name()}")
    step, epoch, seen = 0, 0, 0
    loss_value = float("nan")
    started = time.perf_counter()
    while step < settings.max_steps:
        train_loader.dataset.set_epoch(epoch)
        for images, labels in train_loader:
            images = normalize(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += labels.numel()
            loss_value = loss.item()
            if rank == 0 and (step % 10 == 0 or step == 1):
                rate = seen / (time.perf_counter() - started)
                log(f"step {step:>5}  epoch {epoch}  loss {loss_value:.3f}  {rate:,.0f} samples/s "
                    f"per rank")
            if step >= settings.max_steps:
                break
        epoch += 1
    elapsed = time.perf_counter() - started
    result = evaluate(model, val_loader, device)
    figures = {"steps": step, "epochs_started": epoch, "train_loss": loss_value,
               "train_samples_per_s": seen / elapsed, "val_accuracy": result["accuracy"],
               "val_loss": result["loss"], "val_samples": result["total"],
               "skipped_samples": train_loader.dataset.skipped}
    if rank == 0:
        log(f"trained {step} steps in {elapsed:.1f} s ({figures['train_samples_per_s']:,.0f} "
            f"samples/s per rank); val accuracy {result['accuracy']:.1%} on {result['total']} "
            f"samples (val loss {result['loss']:.3f})")
    return figures


def main(argv=None) -> int:
    from shardtools.config import load_config
    from shardtools.errors import ShardToolsError

    parser = argparse.ArgumentParser(prog="python -m loaders.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config with a 'train' section")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--dataset", help="override train.dataset (a directory built by "
                        "`shardtools build`, e.g. demo-run/dataset after `make demo`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    try:
        config = load_config(args.config, only="train")  # training needs no records
    except ShardToolsError as exc:
        print(f"loaders.train: config error: {exc}", file=sys.stderr)
        return 2
    if config.train is None:
        print(f"loaders.train: {args.config} has no 'train' section", file=sys.stderr)
        return 2
    settings = config.train
    if args.max_steps is not None:
        if args.max_steps < 1:
            print("loaders.train: --max-steps must be at least 1", file=sys.stderr)
            return 2
        settings = dataclasses.replace(settings, max_steps=args.max_steps)
    if args.dataset is not None:
        settings = dataclasses.replace(settings, dataset=str(Path(args.dataset).resolve()))

    from shardtools.dataset import read_manifest

    try:  # before any process group: a missing dataset is a one-line error on every rank
        num_classes = read_manifest(settings.dataset)["num_classes"]
    except ShardToolsError as exc:
        print(f"loaders.train: {exc}\n  Build it first (`shardtools build --config "
              f"{args.config}`), or pass --dataset DIR; after `make demo`, "
              "`--config demo-run/demo.yaml` trains on the demo's dataset.", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        train(settings, num_classes)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
