"""Decode a stored JPEG and crop it to the training size, in Pillow's compiled code.

The stored images are already close to the training size (the build resizes them), so a
full decode plus one `resize(box=...)` call, which crops and scales in a single C pass, is
the cheapest path; no per-pixel Python, no float conversion (normalise on the device).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image

# Fraction of the shorter side kept by the evaluation centre crop (the usual 224/256).
EVAL_CROP_FRACTION = 0.875


def decode_rgb(jpeg: bytes, target_size: int) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    # DCT-domain downscaling when the stored image is at least twice the target; a no-op
    # for images stored near the training size.
    image.draft("RGB", (target_size, target_size))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def random_resized_crop(image: Image.Image, size: int, rng: random.Random,
                        scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5) -> np.ndarray:
    """A random area/aspect crop scaled to size x size, flipped half the time; HWC uint8."""
    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = rng.randint(0, width - crop_w)
            top = rng.randint(0, height - crop_h)
            box = (left, top, left + crop_w, top + crop_h)
            break
    if box is None:  # odd aspect: fall back to the largest centred square
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    out = image.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < flip_p:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """The centred square covering EVAL_CROP_FRACTION of the shorter side, scaled; HWC uint8."""
    width, height = image.size
    side = min(width, height) * EVAL_CROP_FRACTION
    left = (width - side) / 2
    top = (height - side) / 2
    out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(out)
