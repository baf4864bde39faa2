"""Decoding and cropping: compiled paths, the Pillow fallback, odd images, the output layout."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import make_loader, transforms


def _jpeg(width, height, mode="RGB", fmt="JPEG"):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_a_box_of_the_output_size_is_copied_exactly_and_flips_mirror():
    image = np.arange(40 * 30 * 3, dtype=np.uint32).astype(np.uint8).reshape(30, 40, 3)
    out = transforms.crop_resize(image, (5, 2, 21, 18), 16)
    assert torch.equal(out, torch.from_numpy(image[2:18, 5:21]).permute(2, 0, 1))
    assert torch.equal(transforms.crop_resize(image, (5, 2, 21, 18), 16, flip=True), out.flip(2))


def test_scaled_crops_have_the_requested_size_and_keep_a_flat_colour():
    flat = np.full((50, 70, 3), (10, 200, 90), dtype=np.uint8)
    for box in [(0, 0, 70, 50), (3, 4, 13, 14), (10, 0, 60, 50)]:
        out = transforms.crop_resize(flat, box, 24)
        assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
        assert out.reshape(3, -1).unique(dim=1).tolist() == [[10], [200], [90]]


def test_random_boxes_stay_inside_and_repeat_for_the_same_seed():
    boxes = [transforms.random_box(300, 200, random.Random(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    rng = random.Random(1)
    for _ in range(200):
        left, top, right, bottom = transforms.random_box(300, 200, rng)
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200


@pytest.mark.parametrize("decoder", ["installed", "pillow"])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_every_jpeg_kind_decodes_to_rgb_with_either_decoder(monkeypatch, decoder, mode):
    if decoder == "pillow":
        monkeypatch.setattr(transforms, "simplejpeg", None)
    out = transforms.decode_rgb(_jpeg(48, 32, mode))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8 and out.flags.writeable


def test_the_fallback_decodes_the_same_pixels(monkeypatch):
    data = _jpeg(64, 48)
    installed = transforms.decode_rgb(data)
    monkeypatch.setattr(transforms, "simplejpeg", None)
    fallback = transforms.decode_rgb(data)
    assert np.abs(installed.astype(int) - fallback).mean() < 2


def test_png_members_decode_too():
    assert transforms.decode_rgb(_jpeg(20, 10, fmt="PNG")).shape == (10, 20, 3)


@pytest.mark.parametrize("decoder", ["installed", "pillow"])
def test_large_images_are_shrunk_while_decoding_but_never_below_what_the_crop_needs(
        monkeypatch, decoder):
    if decoder == "pillow":
        monkeypatch.setattr(transforms, "simplejpeg", None)
    out = transforms.decode_rgb(_jpeg(1024, 800), min_side=150)
    assert 150 <= min(out.shape[:2]) <= 200  # at least 1/4 in the DCT domain
    assert out.shape[1] / out.shape[0] == pytest.approx(1024 / 800, rel=0.02)
    assert transforms.decode_rgb(_jpeg(160, 150), min_side=150).shape[:2] == (150, 160)


def test_images_beyond_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(transforms, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="exceeds"):
        transforms.decode_rgb(_jpeg(48, 32))


def test_batches_are_uint8_nchw_channels_last_with_int64_labels(many):
    images, labels = next(iter(make_loader(many, "train", batch_size=4, num_workers=1,
                                           image_size=24, persistent_workers=False)))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (4,)
