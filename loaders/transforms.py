"""Decode a stored image and crop it to the training size, all in compiled code.

The build stores images close to the training size, so the decode is most of the cost.
Per sample: read the header, pick the crop box (the same random draws on every path),
then one of two paths writes the crop into its row of the batch:

- Region decode (`_cropdecode`, C, built at install where libjpeg-turbo's headers are
  present): libjpeg-turbo decodes only the box's columns and rows, scaled in the DCT
  domain by 1/2, 1/4 or 1/8 when the box is at least twice the output (`dct_eighths`),
  and a fixed-point bilinear kernel (AVX2 or SSSE3 where the CPU has them) writes the
  output. A training crop covers 25-100 % of the image's area, so this costs less than
  decoding the whole image.
- General path, for PNG, CMYK JPEGs, or where the extension did not build: decode the
  image at the same DCT scale (simplejpeg when installed, else Pillow), slice the same
  box, and scale it with torch's uint8 bilinear kernel (antialiased only past a 2x shrink
  on both sides). A box that already has the output size is copied, not scaled.

Both sample the way torch's interpolate(mode="bilinear", align_corners=False) does and
agree within 3 levels per pixel; tests/loader/test_cropdecode.py checks that.
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
_REGION_SWITCHED_OFF = os.environ.get("SHARDTOOLS_REGION_DECODE", "1").strip().lower() in (
    "0", "false", "no", "off")
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


def _header(data: bytes) -> tuple[int, int, bool]:
    """(width, height, whether simplejpeg decodes it to RGB), from one read of the header."""
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            return width, height, colorspace not in ("CMYK", "YCCK")
        except ValueError:
            pass  # e.g. a chroma sampling TurboJPEG does not name: Pillow decides
    with Image.open(io.BytesIO(data)) as image:
        return image.size[0], image.size[1], False


def _checked_header(data: bytes) -> tuple[int, int, bool]:
    header = _header(data)
    if header[0] * header[1] > MAX_PIXELS:
        raise ValueError(f"image of {header[0]}x{header[1]} pixels exceeds the loader's limit")
    return header


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only."""
    return _header(data)[:2]


def dct_eighths(width: int, height: int, least: int) -> int:
    """The smallest M of 1, 2, 4 and 8 whose M/8 scale keeps both sides >= `least`.

    Only these scales, on both paths: libjpeg-turbo's 7/8, 3/4, ... kernels are plain C and
    slower than a full decode, and the region decoder uses the same rule, so the two paths
    decode a crop at the same scale."""
    for eighths in (1, 2, 4):
        if width * eighths >= least * 8 and height * eighths >= least * 8:
            return eighths
    return 8


def decode_rgb(data: bytes, min_side: int = 0, *, eighths: int | None = None) -> np.ndarray:
    """HWC uint8 RGB, decoded at `eighths`/8 scale (1, 2, 4 or 8), or by default at the
    smallest of those that keeps both sides >= min_side."""
    header = _checked_header(data)
    if eighths is None:
        eighths = dct_eighths(header[0], header[1], min_side) if min_side else 8
    return _decode_scaled(data, header, eighths)


def _decode_scaled(data: bytes, header, eighths: int) -> np.ndarray:
    width, height, simplejpeg_takes = header
    # The decoders pick the smallest scale whose output reaches these sides: exactly M/8.
    scaled = (-(-width * eighths // 8), -(-height * eighths // 8))
    if simplejpeg_takes:
        # Damage raises here. It is not handed on to Pillow, which decodes a damaged JPEG
        # with the missing rows grey: a sample that does not decode cleanly is skipped.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=scaled[0],
                                      min_height=scaled[1])
    # PNG, WebP, and JPEGs simplejpeg does not take (CMYK, unusual chroma sampling).
    with Image.open(io.BytesIO(data)) as image:
        if eighths != 8:
            image.draft("RGB", scaled)  # JPEG only; 1/2, 1/4, 1/8 are all draft knows
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
    # shrink. Past that on both sides, antialias. One side past 2x and the other not is
    # left plain, as the region decoder does (the DCT-domain scale is the same on both
    # axes, so it cannot take that case further): with crops of at most 4:3 that side
    # shrinks by less than 8/3. Plain bilinear also saves about a third of the resize.
    heavy_shrink = right - left > 2 * size and bottom - top > 2 * size
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=heavy_shrink)[0]
    return out.flip(2) if flip else out


def train_into(out: np.ndarray, data: bytes, size: int, rng: random.Random,
               flip_p: float = 0.5) -> None:
    """A random resized crop, maybe mirrored, written into `out` (size x size x 3 uint8)."""
    header = _checked_header(data)
    box = random_box(header[0], header[1], rng)
    flip = rng.random() < flip_p
    _crop_into(out, data, header, box, size, flip)


def eval_into(out: np.ndarray, data: bytes, size: int) -> None:
    """The centre crop, written into `out` (size x size x 3 uint8)."""
    header = _checked_header(data)
    _crop_into(out, data, header, center_box(header[0], header[1]), size, False)


def train_view(data: bytes, size: int, rng: random.Random, flip_p: float = 0.5) -> torch.Tensor:
    """train_into as a new 3 x size x size tensor."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    train_into(out, data, size, rng, flip_p)
    return torch.from_numpy(out).permute(2, 0, 1)


def eval_view(data: bytes, size: int) -> torch.Tensor:
    out = np.empty((size, size, 3), dtype=np.uint8)
    eval_into(out, data, size)
    return torch.from_numpy(out).permute(2, 0, 1)


def _crop_into(out: np.ndarray, data: bytes, header, box, size: int, flip: bool) -> None:
    if _cropdecode is not None and data[:2] == b"\xff\xd8":
        try:
            _cropdecode.decode_crop(data, box, size, out, flip)
            return
        except _cropdecode.NotHandled:
            pass  # CMYK, or no end marker at the very end: the general path decides
        # Any other ValueError is damage and propagates: the sample is skipped.
    # The same scale and the same box in the scaled image as _cropdecode.c takes.
    left, top, right, bottom = box
    eighths = dct_eighths(right - left, bottom - top, size)
    image = _decode_scaled(data, header, eighths)
    height, width = image.shape[:2]
    if (width, height) != tuple(header[:2]):  # shrunk while decoding: shrink the box too
        right = min(width, -(-right * eighths // 8))
        bottom = min(height, -(-bottom * eighths // 8))
        left = min(right - 1, left * eighths // 8)
        top = min(bottom - 1, top * eighths // 8)
    out[...] = crop_resize(image, (left, top, right, bottom), size, flip).permute(1, 2, 0).numpy()
