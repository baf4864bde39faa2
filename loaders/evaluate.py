"""Accuracy that is exact across ranks: correct and total are summed, not averaged.

Ranks may hold different numbers of evaluation batches (every sample once does not divide
evenly), so nothing here talks to other ranks per batch: a DistributedDataParallel model
is unwrapped (its forward may broadcast buffers, which would wait on a rank that has run
out), and the single all_reduce comes after every rank's own loop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .normalize import normalize


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> dict:
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, count, loss sum
    for batch in loader:
        images, labels = batch[0], batch[1]  # a keys=True loader adds the sample keys
        images = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        totals[0] += (logits.argmax(1) == labels).sum()
        totals[1] += labels.numel()
        totals[2] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    correct, count, loss_sum = totals.tolist()
    return {"correct": int(correct), "total": int(count),
            "accuracy": correct / count if count else float("nan"),
            "loss": loss_sum / count if count else float("nan")}
