"""Rejections: decompression bombs, tiny, truncated and blank images, hostile bytes."""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from shardtools.errors import ImageRejected
from shardtools.imaging import check, sniff
from shardtools.imaging.check import (
    MAX_JPEG_SCANS,
    REASON_CODES,
    WARNING_CODES,
    process_image,
)

from .corpus import (
    assert_close,
    decode,
    encode,
    interlaced_png,
    set_jpeg_size,
    set_tiff_size,
    settings,
    tiled_tiff,
    zero_png,
)


@pytest.fixture
def allocations(monkeypatch):
    """Sizes of every image buffer Pillow's core is asked for.

    tracemalloc only sees Python's allocator, and Pillow takes pixel memory from
    malloc directly, so the buffers are watched at the source.
    """
    sizes: list[tuple[int, int]] = []
    for name in ("new", "fill"):
        original = getattr(Image.core, name)

        def spy(mode, size, *args, _original=original):
            sizes.append(tuple(size))
            return _original(mode, size, *args)

        monkeypatch.setattr(Image.core, name, spy)
    return sizes


def _rejection(data: bytes, **changes) -> ImageRejected:
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, settings(**changes))
    return rejected.value


@pytest.mark.parametrize("header_parser", ["own", "pillow's"])
def test_png_bomb_refused_before_decoding(header_parser, png_bomb, allocations,
                                          monkeypatch):
    """A real PNG of 20000x11000 pixels (660 MB decoded, 0.6 MB on disk) is
    `too_many_pixels`, refused from its header: no pixel buffer is allocated and
    Python's own peak stays near the file's size. Also when the header must be read
    by Pillow's plugin instead of sniff.read_header."""
    if header_parser != "own":
        monkeypatch.setattr(sniff, "read_header", lambda data, fmt: None)
    tracemalloc.start()
    try:
        rejection = _rejection(png_bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rejection.reason == "too_many_pixels"
    size = "20000x11000" if header_parser == "own" else "220000000"
    assert size in rejection.detail
    assert peak < 16 * 2**20, peak  # a decode would need 660 MB
    assert all(w * h <= 1_000_000 for w, h in allocations), allocations


@pytest.mark.parametrize("header_parser", ["own", "pillow's"])
def test_max_pixels_below_pillows_own_limit(header_parser, allocations, monkeypatch):
    """max_pixels is enforced on its own, below the limit Pillow itself warns at: a
    9000x8000 PNG (72 Mpx) is refused at the default 64 Mpx, without decoding."""
    if header_parser != "own":
        monkeypatch.setattr(sniff, "read_header", lambda data, fmt: None)
    data = zero_png(9000, 8000)
    assert _rejection(data).reason == "too_many_pixels"
    assert all(w * h <= 1_000_000 for w, h in allocations)


def test_max_pixels_setting(photo_bytes):
    """The limit is the setting: the 640x400 photo passes at 256000 pixels and is
    refused at 255999."""
    process_image(photo_bytes, settings(max_pixels=256_000))
    assert _rejection(photo_bytes, max_pixels=255_999).reason == "too_many_pixels"


def _gif_with_frame(width: int, height: int, small_photo) -> bytes:
    """A small GIF whose first frame claims to be width x height."""
    data = bytearray(encode(small_photo.resize((32, 20)), "GIF"))
    at = data.index(b"\x2c")  # the image descriptor
    while struct.unpack_from("<HH", data, at + 5) != (32, 20):
        at = data.index(b"\x2c", at + 1)
    struct.pack_into("<HH", data, at + 5, width, height)
    return bytes(data)


def _header_bombs(small_photo) -> dict[str, bytes]:
    jpeg = encode(small_photo, "JPEG")
    gif = bytearray(encode(small_photo, "GIF"))
    struct.pack_into("<HH", gif, 6, 60000, 60000)
    bmp = bytearray(encode(small_photo, "BMP"))
    struct.pack_into("<ii", bmp, 18, 30000, -30000)
    turned = small_photo.transpose(Image.Transpose.ROTATE_180)
    webp = bytearray(encode(small_photo, "WEBP", save_all=True, append_images=[turned]))
    assert webp[12:16] == b"VP8X"
    webp[24:30] = (16383).to_bytes(3, "little") * 2
    lossy = bytearray(encode(small_photo, "WEBP"))
    assert lossy[12:16] == b"VP8 "
    struct.pack_into("<HH", lossy, 26, 16383, 16383)
    return {
        "jpeg": set_jpeg_size(jpeg, 30000, 30000),
        "gif-screen": bytes(gif),
        "gif-frame": _gif_with_frame(60000, 60000, small_photo),
        "bmp": bytes(bmp),
        "webp-canvas": bytes(webp),
        "webp-lossy": bytes(lossy),
        "tiff": set_tiff_size(encode(small_photo, "TIFF"), 60000, 60000),
    }


def test_header_bombs_never_reach_the_decoder(small_photo, allocations, monkeypatch):
    """JPEG, GIF (screen and first frame), BMP, WebP and TIFF headers declaring
    hundreds of megapixels are `too_many_pixels` before Pillow even opens them."""
    opened = []
    monkeypatch.setattr(check, "_open", lambda *args: opened.append(args))
    for name, data in _header_bombs(small_photo).items():
        rejection = _rejection(data)
        assert rejection.reason == "too_many_pixels", name
    assert opened == [] and allocations == []


def test_too_small(small_photo):
    """A shorter side under min_side is `too_small`; at min_side it passes."""
    tiny = encode(small_photo.resize((40, 15)), "PNG")
    assert _rejection(tiny).reason == "too_small"
    assert process_image(tiny, settings(min_side=15)).width == 40


TRUNCATABLE = {
    "jpeg": ("JPEG", {}),
    "jpeg-progressive": ("JPEG", {"progressive": True}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "tiff": ("TIFF", {}),
    "tiff-deflate": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "webp": ("WEBP", {}),
}


def test_jpeg_cut_at_70_percent_is_truncated(photo_bytes):
    """A JPEG whose last 30% never arrived is `truncated`."""
    cut = photo_bytes[: len(photo_bytes) * 7 // 10]
    assert _rejection(cut).reason == "truncated"


@pytest.mark.parametrize("case", TRUNCATABLE)
def test_cut_files_are_truncated(case, small_photo):
    """Cut at 70%, every accepted format is `truncated` (not a generic error)."""
    fmt, params = TRUNCATABLE[case]
    data = encode(small_photo, fmt, **params)
    assert _rejection(data[: len(data) * 7 // 10]).reason == "truncated"


class _Unset:
    """Falsy like the real default; replaced only if someone assigns the flag."""

    def __bool__(self) -> bool:
        return False


# Where the rows that arrive end up: BMP stores its rows bottom up.
TOLERATED = {
    "jpeg": ("JPEG", {}, "top"),
    "jpeg-progressive": ("JPEG", {"progressive": True}, "top"),
    "png": ("PNG", {}, "top"),
    "bmp": ("BMP", {}, "bottom"),
    "tiff": ("TIFF", {}, "top"),
}


@pytest.mark.parametrize("case", TOLERATED)
def test_tolerated_truncation_keeps_what_arrived(case, photo, monkeypatch):
    """With tolerate_truncation the part that arrived is kept, with a warning, and
    Pillow's process-wide LOAD_TRUNCATED_IMAGES is never touched."""
    fmt, params, part = TOLERATED[case]
    sentinel = _Unset()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", sentinel)
    data = encode(photo, fmt, **params)
    cut = data[: len(data) * 7 // 10]
    out = process_image(cut, settings(tolerate_truncation=True, resize="keep"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is sentinel
    assert out.warnings == ("truncated_tolerated",)
    assert (out.width, out.height) == photo.size
    half = photo.height // 2
    box = (0, 0, photo.width, half) if part == "top" else (0, half, *photo.size)
    assert_close(decode(out.jpeg).crop(box), decode(data).crop(box))
    # The next image, strict again, is still refused.
    assert _rejection(cut).reason == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is sentinel


UNTOLERATED = {
    "gif": lambda im: encode(im, "GIF"),  # Pillow interlaces GIFs
    "png-interlaced": interlaced_png,
    "webp": lambda im: encode(im, "WEBP"),
    "tiff-deflate": lambda im: encode(im, "TIFF", compression="tiff_adobe_deflate"),
}


@pytest.mark.parametrize("case", UNTOLERATED)
def test_truncation_not_tolerated_where_nothing_usable_arrives(case, photo):
    """Interlaced GIF and PNG (only some rows of each pass arrived), WebP (decoded
    whole or not at all) and a TIFF whose directory was at the cut-off end stay
    `truncated` even with tolerate_truncation."""
    data = UNTOLERATED[case](photo)
    assert decode(data).size == photo.size  # whole, it decodes
    cut = data[: len(data) * 7 // 10]
    assert _rejection(cut, tolerate_truncation=True).reason == "truncated"


def _flat(value, size=(200, 200), noise=0, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    values = np.full((size[1], size[0], 3), value, dtype=np.int16)
    if noise:
        values += rng.integers(-noise, noise + 1, values.shape, dtype=np.int16)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def test_black_white_and_grey_placeholders_are_blank():
    """All black, all white, and flat grey with noise inside blank_tolerance (here
    +-2 around 128: a span of 4) are `blank`."""
    cases = {
        "black-jpeg": encode(_flat(0, (1200, 900)), "JPEG"),
        "white-png": encode(_flat(255), "PNG"),
        "grey-noise-png": encode(_flat(128, noise=2), "PNG"),
        "white-gif": encode(_flat(255), "GIF"),
    }
    assert np.ptp(np.asarray(decode(cases["grey-noise-png"]))) == 4
    for name, data in cases.items():
        assert _rejection(data).reason == "blank", name


def test_fully_transparent_is_blank():
    """A fully transparent image flattens to the background, so it is `blank`."""
    clear = Image.new("RGBA", (200, 200), (12, 200, 40, 0))
    assert _rejection(encode(clear, "PNG")).reason == "blank"


def test_blank_tolerance_is_the_limit():
    """Noise spanning 6 levels is kept at tolerance 4 and blank at 6; a small mark
    on a flat field is kept."""
    noisy = encode(_flat(128, noise=3), "PNG")
    process_image(noisy, settings())
    assert _rejection(noisy, blank_tolerance=6).reason == "blank"
    marked = _flat(255)
    marked.paste((0, 0, 0), (90, 90, 110, 110))
    process_image(encode(marked, "PNG"), settings())


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # cut anywhere
        return bytes(buf[: rng.randrange(len(buf))])
    if kind == 1:  # flip bytes in the headers, where the parsers live
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(min(len(buf), 700))] = rng.randrange(256)
    elif kind == 2:  # flip bytes anywhere
        for _ in range(rng.randint(1, 30)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 3:  # splice in garbage
        at = rng.randrange(len(buf))
        buf[at:at] = rng.randbytes(rng.randint(1, 300))
    elif kind == 4:  # delete a stretch
        at = rng.randrange(len(buf))
        del buf[at : at + rng.randint(1, 2000)]
    else:  # absurd 16-bit fields: lengths, dimensions, counts
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(min(len(buf), 700) - 1)
            buf[at : at + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff"])
    return bytes(buf)


def _check_survives(data: bytes) -> str:
    try:
        out = process_image(data, settings())
    except ImageRejected as rejection:
        assert rejection.reason in REASON_CODES
        return rejection.reason
    assert set(out.warnings) <= set(WARNING_CODES)
    assert decode(out.jpeg).size == (out.width, out.height)
    return "kept"


def test_fuzzed_jpegs_only_ever_raise_image_rejected(photo_bytes):
    """200 random mutations and truncations of a real JPEG: each is kept (as a valid
    JPEG) or rejected with a known reason; nothing else ever escapes."""
    rng = random.Random(1234)
    outcomes = [_check_survives(_mutate(photo_bytes, rng)) for _ in range(200)]
    assert "kept" in outcomes and len(set(outcomes)) >= 3  # the mutations bite


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_fuzzed_other_formats(fmt, small_photo):
    """The same for 40 mutations each of the other accepted formats."""
    rng = random.Random(fmt)
    data = encode(small_photo.resize((80, 50)), fmt)
    for _ in range(40):
        _check_survives(_mutate(data, rng))


def test_tiff_with_giant_tiles_is_refused(allocations):
    """A 64x64 TIFF whose tiles claim 32768x32768 pixels (libtiff would allocate a
    gigabyte for one) is `too_many_pixels`; a normal tiled TIFF decodes."""
    bomb = tiled_tiff(64, 64, 32768, zlib.compress(bytes(4096)))
    rejection = _rejection(bomb)
    assert rejection.reason == "too_many_pixels" and "tile" in rejection.detail
    assert all(w * h <= 1_000_000 for w, h in allocations)
    ramp = bytes(range(256)) * 16  # 64x64 grey, a ramp along each 256-byte stretch
    fine = tiled_tiff(64, 64, 64, zlib.compress(ramp))
    out = process_image(fine, settings())
    assert out.source_format == "tiff"
    assert_close(decode(out.jpeg), decode(fine))


def _progressive_with_scans(small_photo, extra: int) -> bytes:
    data = encode(small_photo.resize((64, 40)), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra + b"\xff\xd9"


def test_jpeg_with_thousands_of_scans_is_refused(small_photo):
    """Each progressive scan costs a pass over the whole image, so a JPEG of more
    than MAX_JPEG_SCANS scans (a CPU bomb) is `decode_error`; a few dozen decode."""
    assert process_image(_progressive_with_scans(small_photo, 40), settings(min_side=1))
    bomb = _progressive_with_scans(small_photo, MAX_JPEG_SCANS)
    rejection = _rejection(bomb, min_side=1)
    assert rejection.reason == "decode_error" and "scans" in rejection.detail
