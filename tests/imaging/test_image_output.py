"""What comes out: sizes, the JPEG itself, passthrough, and running in workers."""

from __future__ import annotations

import multiprocessing
import pickle
import re
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from shardtools.errors import ConfigError, ImageRejected
from shardtools.imaging.check import (
    REASON_CODES,
    RESAMPLE_FILTERS,
    WARNING_CODES,
    ProcessedImage,
    process_image,
)

from .corpus import assert_close, decode, encode, settings, with_orientation

DOC = Path(__file__).parents[2] / "docs" / "image-check.md"

RESIZES = [
    # resize, size, source size, output size
    ("shorter_side", 256, (640, 400), (410, 256)),
    ("shorter_side", 256, (400, 640), (256, 410)),
    ("shorter_side", 256, (300, 300), (256, 256)),
    ("shorter_side", 512, (640, 400), (640, 400)),  # never upscaled
    ("longer_side", 256, (640, 400), (256, 160)),
    ("longer_side", 256, (400, 640), (160, 256)),
    ("longer_side", 1000, (640, 400), (640, 400)),
    ("keep", 256, (640, 400), (640, 400)),
]


@pytest.mark.parametrize("resize, size, source, expected", RESIZES)
def test_resize_modes(resize, size, source, expected, photo):
    """shorter_side makes the shorter side `size`, longer_side the longer one, keep
    keeps; none ever upscales, and the pixels match a Lanczos resize of the
    reference."""
    data = encode(photo.resize(source, Image.Resampling.LANCZOS), "PNG")
    out = process_image(data, settings(resize=resize, size=size))
    got = decode(out.jpeg)
    assert got.size == (out.width, out.height) == expected
    assert (out.source_width, out.source_height) == source
    assert_close(got, decode(data).resize(expected, Image.Resampling.LANCZOS))


@pytest.mark.parametrize("size", [256, 64])
def test_jpeg_draft_is_used_and_quality_holds(size, photo, monkeypatch):
    """A JPEG much larger than the target is DCT-scaled while decoding (draft), and
    the result stays as close to a full decode + resize with the same filter as a JPEG
    re-encode allows."""
    big = photo.resize((2560, 1600), Image.Resampling.LANCZOS)
    data = encode(big, "JPEG", quality=95)
    scales = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, requested):
        result = original(self, mode, requested)
        scales.append(self.decoderconfig[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    chosen = settings(size=size)
    out = process_image(data, chosen)
    assert scales and scales[0] >= 2
    assert min(out.width, out.height) == size
    reference = decode(data).resize((out.width, out.height), RESAMPLE_FILTERS[chosen.resample])
    assert_close(decode(out.jpeg), reference, margin=0.5)


def test_output_is_a_plain_baseline_jpeg(small_photo):
    """The output is baseline (not progressive) 4:2:0 RGB JPEG with no metadata: no
    EXIF (GPS included), ICC profile, XMP or comment survives."""
    exif = Image.Exif()
    exif[0x0110] = "Camera Model"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPSLatitude
    data = encode(
        small_photo,
        "JPEG",
        progressive=True,
        exif=exif.tobytes(),
        comment=b"private note",
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'></x:xmpmeta>",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )
    out = process_image(data, settings())
    assert out.warnings == ()  # all of it well-formed
    got = decode(out.jpeg)
    assert got.mode == "RGB"
    assert "progressive" not in got.info and "progression" not in got.info
    assert JpegImagePlugin.get_sampling(got) == 2
    for key in ("exif", "icc_profile", "xmp", "comment"):
        assert key not in got.info, key
    assert b"private note" not in out.jpeg and b"Camera Model" not in out.jpeg


def test_quality_setting(photo_bytes):
    """quality is the encoder's: lower quality, fewer bytes."""
    low = process_image(photo_bytes, settings(quality=50)).jpeg
    high = process_image(photo_bytes, settings(quality=95)).jpeg
    assert len(low) < len(high) * 0.7


def test_passthrough_keeps_bytes_when_allowed(small_photo):
    """With passthrough, a baseline RGB JPEG that fits and needs no rotation is kept
    byte for byte."""
    data = encode(small_photo, "JPEG", quality=85)
    out = process_image(data, settings(passthrough=True))
    assert out.jpeg == data
    assert (out.width, out.height) == (320, 200) and out.source_format == "jpeg"


def _cmyk(im: Image.Image) -> bytes:
    return encode(im.convert("CMYK"), "JPEG")


NOT_PASSED = {
    "passthrough-off": (lambda im: encode(im, "JPEG"), False),
    "too-large": (lambda im: encode(im.resize((640, 400)), "JPEG"), True),
    "progressive": (lambda im: encode(im, "JPEG", progressive=True), True),
    "rotated": (lambda im: with_orientation(im, 6), True),
    "grey": (lambda im: encode(im.convert("L"), "JPEG"), True),
    "cmyk": (_cmyk, True),
    "trailing-data": (lambda im: encode(im, "JPEG") + b"MOTION-PHOTO" * 50, True),
    "mpo": (lambda im: encode(im, "MPO", save_all=True, append_images=[im]), True),
    "png": (lambda im: encode(im, "PNG"), True),
    "corrupt-exif": (lambda im: encode(im, "JPEG", exif=b"Exif\0\0XX*\0" + bytes(20)),
                     True),
}


@pytest.mark.parametrize("case", NOT_PASSED)
def test_passthrough_reencodes_otherwise(case, small_photo):
    """Anything else is re-encoded even with passthrough on: a larger image, a
    progressive, rotated, grey or CMYK JPEG, data after the end marker, MPO, other
    formats, unreadable metadata."""
    make, passthrough = NOT_PASSED[case]
    data = make(small_photo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corrupt EXIF case warns in plain Pillow
        reference = decode(data)
    out = process_image(data, settings(passthrough=passthrough))
    assert out.jpeg != data
    got = decode(out.jpeg)
    assert got.mode == "RGB" and "progressive" not in got.info
    if case == "rotated":
        reference = reference.transpose(Image.Transpose.ROTATE_270)
    assert_close(got, reference.resize(got.size, Image.Resampling.LANCZOS))


def test_passthrough_still_checks_the_image():
    """Passing through is no shortcut round the check: a blank JPEG that would fit
    is still `blank`."""
    data = encode(Image.new("RGB", (200, 200), (250, 250, 250)), "JPEG")
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, settings(passthrough=True))
    assert rejected.value.reason == "blank"


@pytest.mark.parametrize(
    "field, value", [("resize", "fit"), ("size", 0), ("quality", 0), ("quality", 101)]
)
def test_impossible_settings_are_config_errors(field, value, photo_bytes):
    """Settings no image could satisfy are a ConfigError, not a rejection of every
    image."""
    with pytest.raises(ConfigError):
        process_image(photo_bytes, settings(**{field: value}))


def test_results_and_rejections_pickle(photo_bytes):
    """process_image, its result and its rejection survive pickling, as they must
    to cross into and out of worker processes."""
    assert pickle.loads(pickle.dumps(process_image)) is process_image
    out = process_image(photo_bytes, settings())
    assert pickle.loads(pickle.dumps(out)) == out
    rejection = ImageRejected("too_small", "3x3 is under min_side 16")
    back = pickle.loads(pickle.dumps(rejection))
    assert (back.reason, back.detail) == ("too_small", "3x3 is under min_side 16")


def test_runs_in_a_spawned_worker(photo_bytes):
    """In a spawned worker process the result is the same as in this one, and a
    rejection comes back as ImageRejected with its reason."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        remote = pool.submit(process_image, photo_bytes, settings()).result()
        failed = pool.submit(process_image, b"<html></html>", settings())
        with pytest.raises(ImageRejected) as rejected:
            failed.result()
    assert isinstance(remote, ProcessedImage)
    assert remote == process_image(photo_bytes, settings())
    assert rejected.value.reason == "not_an_image"


def test_threads_give_the_same_results(photo_bytes, small_photo):
    """From many threads at once (the default, processes=0) results match a
    sequential run, including images whose metadata makes Pillow warn, and the
    process's warning filters are left as they were."""
    inputs = [
        photo_bytes,
        encode(small_photo, "JPEG", exif=b"Exif\0\0II*\0\xff\xff\0\0" + bytes(40)),
        encode(small_photo, "PNG"),
        photo_bytes[: len(photo_bytes) // 2],
        with_orientation(small_photo, 8),
    ] * 6

    def run(data):
        try:
            return process_image(data, settings())
        except ImageRejected as rejection:
            return rejection.reason

    sequential = [run(data) for data in inputs]
    filters_before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(run, inputs))
    assert threaded == sequential
    assert warnings.filters == filters_before
    assert "exif_unreadable" in sequential[1].warnings


def test_import_is_cheap():
    """Importing the check pulls in Pillow's core only: numpy, colour management and
    the plugins wait until an image needs them."""
    code = (
        "import sys\n"
        "import PIL.Image, shardtools.errors, shardtools.settings\n"
        "before = set(sys.modules)\n"
        "import shardtools.imaging.check\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    added = result.stdout.split()
    heavy = [m for m in added if m.split(".")[0] == "numpy" or "ImageCms" in m]
    assert heavy == []
    assert not [m for m in added if m.endswith("ImagePlugin")]


def test_every_code_has_a_one_line_meaning_and_is_documented():
    """REASON_CODES and WARNING_CODES give each code one line, and
    docs/image-check.md describes every one of them."""
    doc = DOC.read_text()
    for code, meaning in {**REASON_CODES, **WARNING_CODES}.items():
        assert re.fullmatch(r"[a-z_]+", code)
        assert meaning and "\n" not in meaning
        assert f"`{code}`" in doc, code
