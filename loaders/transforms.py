"""Decode a stored image and crop it to the training size, all in compiled code.

The build stores images close to the training size, so the decode is most of the cost.
Per sample: read the header, pick the crop box (the same random draws on every path),
then one of two paths writes the crop into its row of the batch:

- Region decode (`_cropdecode`, C, built at install where libjpeg-turbo's headers are
  present): libjpeg-turbo decodes only the box's columns and rows, scaled in the DCT
  domain by 1/2, 1/4 or 1/8 when the box is that much larger than the output, and a
  fixed-point bilinear kernel (SSSE3 where the CPU has it) writes the output. A training
  crop covers a quarter to four fifths of the image, so this costs less than decoding
  the whole image.
- General path, for PNG, CMYK JPEGs, or where the extension did not build: decode the
  whole image (simplejpeg when installed, else Pillow), slice the box, and scale it with
  torch's uint8 bilinear kernel (antialiased past a 2x shrink). A box that already has
  the output size is copied, not scaled.

Both sample the way torch's interpolate(mode="bilinear", align_corners=False) does and
agree within a few levels per pixel; tests/loader/test_cropdecode.py checks that.
"""

from __future__ import annotations

import io
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:  # optional: about a third faster than Pillow for the same libjpeg-turbo decode
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

try:  # optional: built from _cropdecode.c at install when libjpeg-turbo's headers exist
    from . import _cropdecode
except ImportError:  # pragma: no cover - depends on the environment
    _cropdecode = None
# An escape hatch, read at import (so DataLoader workers see it too): the general path only.
_REGION_SWITCHED_OFF = os.environ.get("SHARDTOOLS_REGION_DECODE", "1") == "0"
if _REGION_SWITCHED_OFF:
    _cropdecode = None

# Fraction of the shorter side kept by the evaluation centre crop (the usual 224/256).
EVAL_CROP_FRACTION = 0.875
TRAIN_SCALE = (0.25, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)
# Refused before decoding: a stored image this large is not one our build wrote.
MAX_PIXELS = 64_000_000


def decoder_name() -> str:
    """Which path decodes JPEG samples here, for logs and the benchmark."""
    whole = "simplejpeg" if simplejpeg is not None else "pillow"
    if _cropdecode is None:
        why = "switched off (SHARDTOOLS_REGION_DECODE=0)" if _REGION_SWITCHED_OFF else "not built"
        return f"{whole} (whole image) + torch resize; region decoder {why}"
    return (f"region decode (libjpeg-turbo {_cropdecode.LIBJPEG_TURBO}, "
            f"{_cropdecode.RESAMPLE_KERNELS} resize); {whole} for the rest")


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


def _simplejpeg_takes(data: bytes) -> bool:
    """Whether simplejpeg decodes this file to RGB, judged from its header alone."""
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return False
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False  # e.g. a chroma sampling TurboJPEG does not name
    return colorspace not in ("CMYK", "YCCK")


def decode_rgb(data: bytes, min_side: int = 0) -> np.ndarray:
    """HWC uint8 RGB, downscaled in the DCT domain only while both sides stay >= min_side."""
    width, height = image_size_of(data)
    if width * height > MAX_PIXELS:
        raise ValueError(f"image of {width}x{height} pixels exceeds the loader's limit")
    if _simplejpeg_takes(data):
        # Damage raises here. It is not handed on to Pillow, which decodes a damaged JPEG
        # with the missing rows grey: a sample that does not decode cleanly is skipped.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side,
                                      min_width=min_side)
    # PNG, WebP, and JPEGs simplejpeg does not take (CMYK, unusual chroma sampling).
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


def train_into(out: np.ndarray, data: bytes, size: int, rng: random.Random,
               flip_p: float = 0.5) -> None:
    """A random resized crop, maybe mirrored, written into `out` (size x size x 3 uint8)."""
    width, height = _checked_size(data)
    box = random_box(width, height, rng)
    flip = rng.random() < flip_p
    # A crop covers at least sqrt(min scale) of each side: decode no smaller than that.
    _crop_into(out, data, (width, height), box, size, flip,
               min_side=math.ceil(size / math.sqrt(TRAIN_SCALE[0])))


def eval_into(out: np.ndarray, data: bytes, size: int) -> None:
    """The centre crop, written into `out` (size x size x 3 uint8)."""
    width, height = _checked_size(data)
    _crop_into(out, data, (width, height), center_box(width, height), size, False,
               min_side=math.ceil(size / EVAL_CROP_FRACTION))


def train_view(data: bytes, size: int, rng: random.Random, flip_p: float = 0.5) -> torch.Tensor:
    """train_into as a new 3 x size x size tensor."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    train_into(out, data, size, rng, flip_p)
    return torch.from_numpy(out).permute(2, 0, 1)


def eval_view(data: bytes, size: int) -> torch.Tensor:
    out = np.empty((size, size, 3), dtype=np.uint8)
    eval_into(out, data, size)
    return torch.from_numpy(out).permute(2, 0, 1)


def _checked_size(data: bytes) -> tuple[int, int]:
    width, height = image_size_of(data)
    if width * height > MAX_PIXELS:
        raise ValueError(f"image of {width}x{height} pixels exceeds the loader's limit")
    return width, height


def _crop_into(out: np.ndarray, data: bytes, full_size, box, size: int, flip: bool,
               min_side: int) -> None:
    if _cropdecode is not None and data[:2] == b"\xff\xd8":
        try:
            _cropdecode.decode_crop(data, box, size, out, flip)
            return
        except _cropdecode.NotHandled:
            pass  # CMYK, or no end marker at the very end: the general path decides
        # Any other ValueError is damage and propagates: the sample is skipped.
    image = decode_rgb(data, min_side=min_side)
    height, width = image.shape[:2]
    if (width, height) != tuple(full_size):  # shrunk while decoding: shrink the box too
        sx, sy = width / full_size[0], height / full_size[1]
        left, top = min(width - 1, int(box[0] * sx)), min(height - 1, int(box[1] * sy))
        box = (left, top, max(left + 1, min(width, round(box[2] * sx))),
               max(top + 1, min(height, round(box[3] * sy))))
    out[...] = crop_resize(image, box, size, flip).permute(1, 2, 0).numpy()
