"""The region decoder (loaders/_cropdecode.c) against the general path it replaces.

The reference is what the loader does without the extension: a whole-image decode with
simplejpeg, the box sliced out, torch's bilinear resize. The region decoder must give the
same crops within a few levels per pixel, on real photos, for every kind of JPEG the
build or a user's hand-made shard may hold, and must refuse bad input with ValueError.
"""

from __future__ import annotations

import io
import random
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS
from loaders import transforms

cropdecode = pytest.importorskip("loaders._cropdecode", reason="the region decoder did not build")
simplejpeg = pytest.importorskip("simplejpeg")


def _encode(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo():
    # A real photo at a size the build stores (shorter side 256), odd width on purpose:
    # not a multiple of the 16-pixel blocks that cropped decoding works in.
    with Image.open(PHOTOS[0]) as image:
        image = image.convert("RGB")
        image.thumbnail((10_000, 256))
        return image.crop((0, 0, image.width - 3, image.height))


KINDS = {
    "4:2:0": dict(quality=90, subsampling=2),
    "4:2:2": dict(quality=90, subsampling=1),
    "4:4:4": dict(quality=90, subsampling=0),
    "progressive": dict(quality=85, progressive=True),
    "restart markers": dict(quality=85, restart_marker_blocks=4),
}


def _reference(data: bytes, box, size: int, flip: bool) -> np.ndarray:
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return transforms.crop_resize(whole, box, size, flip).permute(1, 2, 0).numpy()


def _region(data: bytes, box, size: int, flip: bool) -> np.ndarray:
    out = np.empty((size, size, 3), dtype=np.uint8)
    cropdecode.decode_crop(data, box, size, out, flip)
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_whole_image_decodes_as_simplejpeg_decodes_it(photo, kind):
    data = _encode(photo, **KINDS[kind])
    pixels, height, width = cropdecode.decode_whole(data)
    assert (width, height) == photo.size
    ours = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)
    assert np.abs(ours.astype(int) - simplejpeg.decode_jpeg(data)).max() <= 1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_random_training_crops_match_the_general_path(photo, kind):
    data = _encode(photo, **KINDS[kind])
    rng = random.Random(kind)
    for _ in range(40):
        box = transforms.random_box(*photo.size, rng)
        flip = rng.random() < 0.5
        diff = np.abs(_region(data, box, 224, flip).astype(int) - _reference(data, box, 224, flip))
        # 7-bit weights against torch's finer ones: a level or two, never a shifted edge.
        assert diff.max() <= 3, (box, flip)
        assert diff.mean() < 0.5, (box, flip)


def _available_kernels():
    found = []
    for name in ("c", "ssse3", "avx2"):
        try:
            previous = cropdecode._use_kernels(name)
        except ValueError:
            continue
        cropdecode._use_kernels(previous)
        found.append(name)
    return found


def test_every_kernel_set_gives_the_same_bytes(photo):
    # Plain C, SSSE3 and AVX2 do the same integer arithmetic: outputs must be identical,
    # for every width remainder the vector loops leave to their tails.
    data = _encode(photo, quality=90)
    rng = random.Random(5)
    cases = [(transforms.random_box(*photo.size, rng), size, rng.random() < 0.5)
             for size in (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 224, 225)]
    results = {}
    previous = cropdecode.RESAMPLE_KERNELS
    try:
        for name in _available_kernels():
            cropdecode._use_kernels(name)
            results[name] = [_region(data, box, size, flip) for box, size, flip in cases]
    finally:
        cropdecode._use_kernels(previous)
    assert "c" in results
    for name, outputs in results.items():
        for got, want, case in zip(outputs, results["c"], cases):
            assert np.array_equal(got, want), (name, case)


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="not available"):
        cropdecode._use_kernels("neon-on-x86")


def test_grayscale_jpegs_come_out_as_rgb(photo):
    data = _encode(photo.convert("L"), quality=90)
    box = (10, 20, 110, 120)  # under a 2x shrink: decoded at full size, as the reference
    out = _region(data, box, 64, False)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out.astype(int) - _reference(data, box, 64, False)).max() <= 3


def test_a_box_of_the_output_size_is_copied_exactly(photo):
    data = _encode(photo, quality=95)
    box = (37, 11, 37 + 160, 11 + 160)
    whole = simplejpeg.decode_jpeg(data)
    assert np.array_equal(_region(data, box, 160, False), whole[11:171, 37:197])
    assert np.array_equal(_region(data, box, 160, True), whole[11:171, 37:197][:, ::-1])


def test_flat_colour_stays_flat_at_every_scale():
    flat = _encode(Image.new("RGB", (1000, 700), (10, 200, 90)), quality=95)
    for box, size in [((0, 0, 1000, 700), 100), ((3, 4, 13, 14), 24), ((100, 0, 700, 700), 64)]:
        out = _region(flat, box, size, False)
        assert np.abs(out.astype(int) - (10, 200, 90)).max() <= 2, box


def test_boxes_much_larger_than_the_output_are_shrunk_while_decoding(photo):
    # 2x and more: decoded at 1/2, 1/4 or 1/8, then a bilinear step of less than 2x.
    # The reference antialiases instead; both are proper downscales of the same pixels.
    with Image.open(PHOTOS[1]) as big:
        big = big.convert("RGB")
    data = _encode(big, quality=90)
    for box, size in [((0, 0, big.width, big.height), 96), ((40, 30, 600, 420), 64)]:
        ours = _region(data, box, size, False).astype(int)
        reference = _reference(data, box, size, False).astype(int)
        assert np.abs(ours - reference).mean() < 4, box


def test_threads_decode_at_once_and_agree_with_one_at_a_time(photo):
    # The GIL is released while decoding, and each thread has its own scratch buffer.
    data = [_encode(photo, quality=q) for q in (70, 80, 90, 95)]
    boxes = [(0, 0, 200, 200), (50, 20, 300, 250), (10, 10, 120, 90), (100, 0, 335, 256)]
    serial = [_region(d, b, 96, i % 2 == 1) for i, (d, b) in enumerate(zip(data, boxes))]
    results: dict = {}

    def work(index):
        for _ in range(20):
            out = _region(data[index], boxes[index], 96, index % 2 == 1)
            if not np.array_equal(out, serial[index]):
                results[index] = "differs"
                return
        results[index] = "same"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {0: "same", 1: "same", 2: "same", 3: "same"}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "png"])
def test_undecodable_data_raises_value_error(photo, damage):
    # The box is in the top rows: a cut-off file must fail even when the box's rows are intact.
    data = _encode(photo, quality=90)
    bad = {"truncated": data[: len(data) // 2],
           "garbage": b"\xff\xd8" + bytes(500) + b"\xff\xd9",
           "empty": b"", "png": _png(photo)}[damage]
    with pytest.raises(ValueError, match="does not decode"):
        _region(bad, (0, 0, 64, 64), 32, False)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_cmyk_is_refused_here_and_decoded_by_the_general_path(photo):
    data = _encode(photo.convert("CMYK"), quality=90)
    with pytest.raises(ValueError, match="CMYK"):
        _region(data, (0, 0, 64, 64), 32, False)
    out = np.empty((32, 32, 3), dtype=np.uint8)
    transforms.eval_into(out, data, 32)  # falls back to Pillow, which converts CMYK
    assert out.std() > 0


@pytest.mark.parametrize("box", [(-1, 0, 10, 10), (0, 0, 0, 10), (5, 5, 5, 9),
                                 (0, 0, 10_000, 10), (0, 0, 10, 10_000)])
def test_boxes_outside_the_image_are_refused(photo, box):
    with pytest.raises(ValueError, match="box"):
        _region(_encode(photo, quality=90), box, 32, False)


def test_the_output_buffer_must_match_and_be_writable(photo):
    data = _encode(photo, quality=90)
    with pytest.raises(ValueError, match="contiguous 32 x 32 x 3"):
        cropdecode.decode_crop(data, (0, 0, 64, 64), 32, np.empty((32, 31, 3), np.uint8))
    with pytest.raises((TypeError, ValueError)):  # refused as a buffer, or as its layout
        cropdecode.decode_crop(data, (0, 0, 64, 64), 32,
                               np.empty((32, 64, 3), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="writable"):
        cropdecode.decode_crop(data, (0, 0, 64, 64), 32, bytes(32 * 32 * 3))
    with pytest.raises(ValueError, match="uint8"):  # the right byte count, the wrong type
        cropdecode.decode_crop(data, (0, 0, 64, 64), 32, np.empty(32 * 32 * 3 // 4, np.float32))
    with pytest.raises(ValueError, match="C int"):
        cropdecode.decode_crop(data, (0, 0, 2**40, 64), 32, np.empty((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="size"):
        cropdecode.decode_crop(data, (0, 0, 64, 64), 0, bytearray(0))


@pytest.mark.parametrize("size", [224, 96, 40])
def test_both_paths_give_the_same_crops_from_the_same_seed(photo, monkeypatch, size):
    # 224 from a 256-pixel image: decoded at full size. 96 and 40: boxes of 2x the output
    # and more, decoded at 1/2 or 1/4 by both paths (the same scales, the same box).
    data = _encode(photo, quality=90)
    fast = [transforms.train_view(data, size, random.Random(seed)) for seed in range(8)]
    fast.append(transforms.eval_view(data, size))
    monkeypatch.setattr(transforms, "_cropdecode", None)
    general = [transforms.train_view(data, size, random.Random(seed)) for seed in range(8)]
    general.append(transforms.eval_view(data, size))
    for ours, theirs in zip(fast, general):
        diff = (ours.int() - theirs.int()).abs()
        assert diff.max() <= 3 and diff.float().mean() < 0.5


def test_the_loader_reports_which_decoder_it_uses():
    if transforms._REGION_SWITCHED_OFF:
        assert "switched off (SHARDTOOLS_REGION_DECODE=0)" in transforms.decoder_name()
        return
    assert transforms.decoder_name().startswith("region decode (libjpeg-turbo")
    assert cropdecode.RESAMPLE_KERNELS in ("avx2", "ssse3", "c")


def test_eval_crops_match_the_general_path_too(photo, monkeypatch):
    data = _encode(photo, quality=90)
    ours = transforms.eval_view(data, 200)
    monkeypatch.setattr(transforms, "_cropdecode", None)
    assert (ours.int() - transforms.eval_view(data, 200).int()).abs().max() <= 3
    assert ours.shape == (3, 200, 200) and ours.dtype == torch.uint8
