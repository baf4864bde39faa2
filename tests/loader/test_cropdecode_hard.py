"""Harder checks of the region decoder (loaders/_cropdecode.c): exact agreement with a whole
decode through the same resampler, unusual sampling factors, damage that libjpeg reports only
at the end of the file, the general path's fallback, fuzzed input, and thread-local scratch.

Fixtures: data/sampling_y4x2.jpg and data/sampling_y2x4.jpg are a 203 x 97 crop of
PHOTOS[0] encoded by the system libjpeg with luma sampled 4x2 (resp. 2x4) over 1x1 chroma,
which Pillow cannot write (its encoder knows only 4:4:4, 4:2:2 and 4:2:0).
"""

from __future__ import annotations

import io
import random
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS
from loaders import transforms

from .test_cropdecode import KINDS as BASE_KINDS

cropdecode = pytest.importorskip("loaders._cropdecode", reason="the region decoder did not build")
simplejpeg = pytest.importorskip("simplejpeg")

DATA = Path(__file__).parent / "data"


def _encode(image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _region(data, box, size, flip=False):
    out = np.empty((size, size, 3), dtype=np.uint8)
    cropdecode.decode_crop(data, box, size, out, flip)
    return out


@pytest.fixture(scope="module")
def photo():
    with Image.open(PHOTOS[2]) as image:
        image = image.convert("RGB")
        image.thumbnail((10_000, 256))
        return image.crop((0, 0, image.width - 5, image.height - 3))  # odd on both sides


# --- the same resampler, emulated: a box the region decoder reads must equal the whole decode


ONE = 128  # 7-bit weights, as _cropdecode.c's WEIGHT_BITS


def _taps(n_in, n_out):
    first, weight = [], []
    for i in range(n_out):
        at = max(0.0, (i + 0.5) * n_in / n_out - 0.5)
        index = min(int(at), n_in - 1)
        first.append(index)
        weight.append(int((at - index) * ONE + 0.5) if index < n_in - 1 else 0)
    return np.array(first), np.array(weight)


def _emulate(src: np.ndarray, size: int, flip: bool) -> np.ndarray:
    h, w = src.shape[:2]
    xs, wx = _taps(w, size)
    ys, wy = _taps(h, size)
    if flip:
        xs, wx = xs[::-1], wx[::-1]
    s = src.astype(np.int64)
    across = s[:, xs] * (ONE - wx)[None, :, None] + s[:, np.minimum(xs + 1, w - 1)] * wx[None, :, None]
    out = across[ys] * (ONE - wy)[:, None, None] + across[np.minimum(ys + 1, h - 1)] * wy[:, None, None]
    return ((out + (1 << 13)) >> 14).astype(np.uint8)


KINDS = {**BASE_KINDS, "restart markers": dict(quality=85, restart_marker_blocks=1),
         "grayscale": dict(quality=90)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_boxes_at_every_edge_equal_the_whole_decode_bit_for_bit(photo, kind):
    # Under a 2x shrink the region decoder decodes at full size, so its output must be the
    # whole image's pixels of the box through the same 7-bit bilinear: any difference is a
    # cropping or row-skipping error, not resampling noise.
    image = photo.convert("L") if kind == "grayscale" else photo
    data = _encode(image, **KINDS[kind])
    pixels, height, width = cropdecode.decode_whole(data)
    whole = np.frombuffer(pixels, np.uint8).reshape(height, width, 3)
    rng = random.Random(kind)
    boxes = [(0, 0, width, height), (width - 1, height - 1, width, height), (0, 0, 1, 1)]
    for w, h in [(1, 1), (2, 17), (15, 3), (16, 16), (17, 33), (40, 9)]:
        boxes += [(0, 0, w, h), (width - w, 0, width, h), (0, height - h, w, height),
                  (width - w, height - h, width, height)]
    for _ in range(30):
        left, top = rng.randrange(width), rng.randrange(height)
        boxes.append((left, top, rng.randint(left + 1, width), rng.randint(top + 1, height)))
    for box in boxes:
        side = min(box[2] - box[0], box[3] - box[1])
        for size in {1, side, max(1, side * 2 // 3 + 1), rng.randint(side, 600)}:
            if 2 * size <= max(box[2] - box[0], box[3] - box[1]):
                continue  # that would be decoded at a DCT scale
            flip = rng.random() < 0.5
            expected = _emulate(whole[box[1]:box[3], box[0]:box[2]], size, flip)
            assert np.array_equal(_region(data, box, size, flip), expected), (box, size, flip)


@pytest.mark.parametrize("name", ["sampling_y4x2.jpg", "sampling_y2x4.jpg"])
def test_unusual_sampling_factors_at_dct_scales_match_a_scaled_whole_decode(name):
    # libjpeg-turbo 2.1.5's jpeg_crop_scanline gets columns wrong when a scaled decode gives
    # the chroma a larger inverse DCT than the luma and it still needs upsampling (luma 4x2
    # or 2x4 over 1x1 chroma, at 1/2 and 1/4). The region decoder must not return that.
    data = (DATA / name).read_bytes()
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
    rng = random.Random(name)
    for m in (2, 4):
        with Image.open(io.BytesIO(data)) as image:  # Pillow's own libjpeg, scaled by m/8
            image.draft("RGB", (width * m // 8, height * m // 8))
            scaled = np.asarray(image.convert("RGB"))
        assert scaled.shape[:2] == (-(-height * m // 8), -(-width * m // 8))
        for _ in range(25):
            size = rng.randint(4, 20)
            bw = rng.randint(8 * size // m, width) if 8 * size // m <= width else width
            bh = rng.randint(8 * size // m, height) if 8 * size // m <= height else height
            if bw * m < 8 * size or bh * m < 8 * size or (bw * m >= 16 * size and bh * m >= 16 * size):
                continue  # not decoded at this m
            left, top = rng.randint(0, width - bw), rng.randint(0, height - bh)
            box = (left, top, left + bw, top + bh)
            sbox = (left * m // 8, top * m // 8, min(scaled.shape[1], -(-(left + bw) * m // 8)),
                    min(scaled.shape[0], -(-(top + bh) * m // 8)))
            expected = _emulate(scaled[sbox[1]:sbox[3], sbox[0]:sbox[2]], size, False)
            diff = np.abs(_region(data, box, size).astype(int) - expected)
            assert diff.max() <= 4, (m, box, size, int(diff.max()))


# --- damage


def _flips_libjpeg_reports_only_at_the_end(good: bytes, count: int):
    sos = good.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], "big")
    found = []
    for pos in range(start + 50, len(good) - 4, 211):
        bad = bytearray(good)
        bad[pos] ^= 0x10
        try:
            simplejpeg.decode_jpeg(bytes(bad), strict=True)
        except ValueError as exc:
            if "extraneous bytes before marker 0xd9" in str(exc):
                found.append(bytes(bad))
        if len(found) == count:
            break
    assert found, "no flipped bit of that kind in this photo"
    return found


def test_damage_libjpeg_reports_at_the_end_marker_is_an_error_when_the_box_reaches_it(photo):
    # A flipped bit in baseline entropy data usually desynchronises the Huffman decoder
    # silently; libjpeg notices only at the EOI marker ("N extraneous bytes before marker
    # 0xd9"). A decode that has produced every row must still read that far.
    good = _encode(photo, quality=90)
    for bad in _flips_libjpeg_reports_only_at_the_end(good, 3):
        with pytest.raises(ValueError, match="does not decode"):
            cropdecode.decode_whole(bad)
        with pytest.raises(ValueError, match="does not decode"):
            _region(bad, (0, 0, photo.width, photo.height), 64)
        with pytest.raises(ValueError, match="does not decode"):
            _region(bad, (10, photo.height - 50, 120, photo.height), 32)


def test_a_cut_file_the_region_decoder_refuses_is_not_padded_grey_by_the_fallback(photo):
    # _cropdecode refuses it ("premature end of data segment"); the general path must not
    # then hand it to Pillow, which fills the missing rows with grey.
    good = _encode(photo, quality=90)
    cut = good[: len(good) * 2 // 5] + b"\xff\xd9"
    with pytest.raises(ValueError):
        _region(cut, (0, 0, photo.width, photo.height), 64)
    out = np.empty((64, 64, 3), np.uint8)
    with pytest.raises((ValueError, OSError)):
        transforms.eval_into(out, cut, 64)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    d = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        d = d[: rng.randrange(2, len(d))] + b"\xff\xd9"
    elif kind == 2:
        i = rng.randrange(len(d))
        d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
    elif kind == 3:
        i = rng.randrange(len(d))
        del d[i:i + rng.randint(1, 60)]
    elif kind == 4:  # the frame header's height or width
        for i in range(len(d) - 9):
            if d[i] == 0xFF and d[i + 1] in (0xC0, 0xC1, 0xC2):
                struct.pack_into(">H", d, i + rng.choice((5, 7)),
                                 rng.choice((0, 1, 7, 8, 9, 16, 17, 8000, 65500, 65535)))
                break
    else:
        i = rng.randrange(len(d))
        d[i:i + 200] = bytes(len(d[i:i + 200]))
    return bytes(d)


def test_fuzzed_jpegs_raise_value_error_or_decode(photo):
    small = photo.resize((61, 47))
    seeds = [_encode(small, quality=80), _encode(small, quality=80, progressive=True),
             _encode(small, quality=90, subsampling=0, restart_marker_blocks=2),
             _encode(small.convert("L"), quality=80), _encode(photo.resize((1, 40)), quality=80),
             _encode(photo.resize((40, 1)), quality=80)]
    rng = random.Random(0)
    for _ in range(600):
        data = _mutate(rng.choice(seeds), rng)
        left, top = rng.randrange(61), rng.randrange(47)
        box = (left, top, rng.randint(left + 1, 61), rng.randint(top + 1, 47))
        try:
            _region(data, box, rng.choice((1, 7, 32, 100)), rng.random() < 0.5)
        except ValueError:
            pass
        try:
            cropdecode.decode_whole(data)
        except ValueError:
            pass


# --- scratch memory


def _rss_mb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    pytest.skip("no /proc")


def test_the_scratch_buffer_goes_with_its_thread(photo):
    big = _encode(photo.resize((2000, 1500)), quality=80)  # a whole decode needs 9 MB
    cropdecode.decode_whole(big)
    before = _rss_mb()
    for _ in range(40):
        thread = threading.Thread(target=cropdecode.decode_whole, args=(big,))
        thread.start()
        thread.join()
    assert _rss_mb() - before < 100  # 40 leaked buffers would be 360 MB
