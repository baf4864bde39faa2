"""Turn uint8 NCHW batches into normalised floats, on whatever device they are on."""

from __future__ import annotations

import torch

# ImageNet statistics: a usual default for photos; the demo's small CNN does not care.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std
