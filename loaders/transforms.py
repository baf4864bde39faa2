"""Decode a stored image and crop it to the training size, all in compiled code.

The build stores images close to the training size, so decode time is the floor. The
path per sample: read the header, pick the crop box, decode (libjpeg-turbo through
simplejpeg when it is installed, else Pillow; DCT-domain downscaling only when the image
is much larger than any crop needs), slice the box out of the array, and scale it with
torch's uint8 bilinear kernel (antialiased when shrinking). A box that already has the
output size is copied, not scaled. Profiling showed Pillow's `resize` costing more than
the decode itself for these sizes; torch's channels-last uint8 kernel is about 4x faster.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:  # optional: about a third faster than Pillow for the same libjpeg-turbo decode
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

# Fraction of the shorter side kept by the evaluation centre crop (the usual 224/256).
EVAL_CROP_FRACTION = 0.875
TRAIN_SCALE = (0.25, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)
# Refused before decoding: a stored image this large is not one our build wrote.
MAX_PIXELS = 64_000_000


def decoder_name() -> str:
    return "simplejpeg" if simplejpeg is not None else "pillow"


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only."""
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except ValueError:
            pass  # Pillow may still read it (e.g. CMYK); let it decide
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def decode_rgb(data: bytes, min_side: int = 0) -> np.ndarray:
    """HWC uint8 RGB, downscaled in the DCT domain only while both sides stay >= min_side."""
    width, height = image_size_of(data)
    if width * height > MAX_PIXELS:
        raise ValueError(f"image of {width}x{height} pixels exceeds the loader's limit")
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side,
                                          min_width=min_side)
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as image:
        if min_side:
            image.draft("RGB", (min_side, min_side))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.array(image)  # writable: torch.from_numpy refuses read-only arrays


def random_box(width: int, height: int, rng: random.Random, scale=TRAIN_SCALE,
               ratio=TRAIN_RATIO) -> tuple[int, int, int, int]:
    """A random area/aspect crop (left, top, right, bottom), as RandomResizedCrop picks it."""
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = rng.randint(0, width - crop_w)
            top = rng.randint(0, height - crop_h)
            return left, top, left + crop_w, top + crop_h
    return center_box(width, height, 1.0)  # odd aspect: the largest centred square


def center_box(width: int, height: int, fraction: float = EVAL_CROP_FRACTION):
    side = max(1, round(min(width, height) * fraction))
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(image: np.ndarray, box, size: int, flip: bool = False) -> torch.Tensor:
    """The box of an HWC uint8 array as a 3 x size x size uint8 tensor (a view or a new one)."""
    left, top, right, bottom = box
    crop = torch.from_numpy(image[top:bottom, left:right]).permute(2, 0, 1)
    if (right - left, bottom - top) == (size, size):
        return crop.flip(2) if flip else crop
    # Channels-last contiguous input takes torch's vectorised uint8 path (a flipped view
    # would not: its strides fail the fast path's check, so the flip comes after).
    crop = crop.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    # Bilinear reads a 2x2 neighbourhood, which covers every source pixel down to a 2x
    # shrink: antialiasing is needed only past that. The stored images are near the
    # training size, so this is the common case, and it saves about a third of the resize.
    heavy_shrink = right - left > 2 * size or bottom - top > 2 * size
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=heavy_shrink)[0]
    return out.flip(2) if flip else out


def train_view(data: bytes, size: int, rng: random.Random, flip_p: float = 0.5) -> torch.Tensor:
    # A crop covers at least sqrt(min scale) of each side: decode no smaller than that.
    image = decode_rgb(data, min_side=math.ceil(size / math.sqrt(TRAIN_SCALE[0])))
    height, width = image.shape[:2]
    return crop_resize(image, random_box(width, height, rng), size, flip=rng.random() < flip_p)


def eval_view(data: bytes, size: int) -> torch.Tensor:
    image = decode_rgb(data, min_side=math.ceil(size / EVAL_CROP_FRACTION))
    height, width = image.shape[:2]
    return crop_resize(image, center_box(width, height), size)
