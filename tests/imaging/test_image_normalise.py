"""Normalisation: orientation, colour modes, transparency, bit depth, profiles."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageCms

from shardtools.imaging.check import TRANSPARENCY_BACKGROUND, process_image

from .corpus import (
    assert_close,
    decode,
    drop_jpeg_segments,
    encode,
    mean_diff,
    pixels,
    settings,
    with_orientation,
)

TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def test_orientation_6_on_a_4x2_jpeg():
    """A 4x2 JPEG tagged orientation 6 comes out 2x4 with its pixels turned as the
    tag says (the reference turned with Image.transpose), and without the tag."""
    grey = np.array([[0, 30, 60, 90], [255, 225, 195, 165]], dtype=np.uint8)
    source = Image.fromarray(np.dstack([grey] * 3))
    data = with_orientation(source, 6, quality=100, subsampling=0)
    out = process_image(data, settings(min_side=1, quality=100))
    assert (out.width, out.height) == (2, 4)
    assert (out.source_width, out.source_height) == (2, 4)
    got = decode(out.jpeg)
    expected = decode(data).transpose(Image.Transpose.ROTATE_270)
    assert np.abs(pixels(got) - pixels(expected)).max() <= 8
    wrong = decode(data).transpose(Image.Transpose.ROTATE_90)
    # The pattern tells the turns apart.
    assert np.abs(pixels(got) - pixels(wrong)).max() > 100
    assert 0x0112 not in got.getexif()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_applied_once(orientation, small_photo):
    """Each EXIF orientation 1-8 is applied exactly once (a second application, or
    none, would not match), on PNG as well as JPEG."""
    for fmt in ("JPEG", "PNG"):
        data = with_orientation(small_photo, orientation, fmt)
        out = process_image(data, settings())
        reference = decode(data)
        method = TRANSPOSE.get(orientation)
        expected = reference if method is None else reference.transpose(method)
        got = decode(out.jpeg)
        assert got.size == expected.size == (out.width, out.height)
        assert_close(got, expected)
        assert not got.getexif()


@pytest.mark.parametrize("value", [0, 9, 300])
def test_invalid_orientation_is_ignored_with_a_warning(value, small_photo):
    """An orientation outside 1-8 rotates nothing and says so in a warning."""
    data = with_orientation(small_photo, value)
    out = process_image(data, settings())
    assert out.warnings == ("orientation_invalid",)
    assert_close(decode(out.jpeg), decode(data))


CORRUPT_EXIF = {
    # IFD offset far past the end.
    "offset": b"Exif\x00\x00II*\x00\xff\xff\x00\x00" + b"\x07" * 40,
    # One entry announced, its bytes cut off.
    "cut": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00",
    # Not a TIFF byte order at all.
    "order": b"Exif\x00\x00XX*\x00\x08\x00\x00\x00" + bytes(20),
    # An entry with an absurd count pointing outside.
    "count": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00"
    + b"\xff\xff\xff\x7f\x00\x00\x10\x00\x00\x00\x00\x00",
}


@pytest.mark.parametrize("case", CORRUPT_EXIF)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_corrupt_exif_keeps_image_with_warning(case, fmt, small_photo):
    """Unparsable EXIF is a warning, never a crash or a rejection; nothing is
    rotated."""
    data = encode(small_photo, fmt, exif=CORRUPT_EXIF[case])
    out = process_image(data, settings())
    assert "exif_unreadable" in out.warnings
    assert (out.width, out.height) == (320, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain Pillow warns about this EXIF
        reference = decode(data)
    assert_close(decode(out.jpeg), reference)


def gcr_cmyk(rgb: Image.Image) -> Image.Image:
    """CMYK with full black generation (K carries the darkness), built so that the
    usual unmanaged formula R = (255 - C)(255 - K) / 255 gives `rgb` back."""
    values = pixels(rgb)
    brightest = values.max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inks = np.where(brightest > 0, 255 - 255 * values / brightest, 0)
    cmyk = np.concatenate([inks, 255 - brightest], axis=2)
    return Image.frombytes("CMYK", rgb.size, np.rint(cmyk).astype(np.uint8).tobytes())


def test_adobe_cmyk_jpeg_colours(small_photo):
    """An Adobe (inverted) CMYK JPEG, the kind Photoshop writes, comes out in the
    colours of the RGB it was made from."""
    data = encode(gcr_cmyk(small_photo), "JPEG", quality=95)
    assert b"Adobe" in data[:200] and decode(data).mode == "CMYK"
    got = decode(process_image(data, settings()).jpeg)
    assert_close(got, small_photo, margin=1.5)


def test_plain_cmyk_jpeg_colours(small_photo):
    """A CMYK JPEG without the Adobe marker stores its inks uninverted; it must not
    come out as a negative."""
    cmyk = gcr_cmyk(small_photo)
    # Pillow writes inverted inks with an Adobe marker: invert first, drop the marker.
    data = drop_jpeg_segments(encode(ImageChops.invert(cmyk), "JPEG", quality=95), 0xEE)
    assert b"Adobe" not in data[:200] and decode(data).mode == "CMYK"
    got = decode(process_image(data, settings()).jpeg)
    assert_close(got, small_photo, margin=1.5)


def _ramp_16bit() -> np.ndarray:
    """A horizontal ramp over the whole 16-bit range, 1024 steps, 32 rows."""
    ramp = np.rint(np.linspace(0, 65535, 1024)).astype(np.uint16)
    return np.tile(ramp, (32, 1))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_keeps_its_levels(fmt):
    """A 16-bit grey ramp is scaled to 8 bits, not clipped: about 256 distinct levels
    survive, each where value / 257 puts it."""
    ramp = _ramp_16bit()
    data = encode(Image.fromarray(ramp), fmt)
    assert decode(data).mode == "I;16"
    out = process_image(data, settings(resize="keep"))
    got = np.asarray(decode(out.jpeg).convert("L"), dtype=np.float64)
    assert got.shape == ramp.shape
    assert len(np.unique(got[16])) >= 250  # Pillow's convert("L") would leave 5
    assert np.abs(got.mean(axis=0) - ramp[0] / 257).max() < 3


def test_32bit_integer_and_float_grey_are_scaled():
    """32-bit integer grey holding 16-bit values, and float grey in 0..1, scale the
    same way."""
    ramp = _ramp_16bit()
    cases = [
        Image.fromarray(ramp.astype(np.int32)),
        Image.fromarray((ramp / 65535).astype(np.float32)),
    ]
    for source in cases:
        data = encode(source, "TIFF")
        out = process_image(data, settings(resize="keep"))
        got = np.asarray(decode(out.jpeg).convert("L"), dtype=np.float64)
        assert np.abs(got.mean(axis=0) - ramp[0] / 257).max() < 3, source.mode


def composite(rgba: Image.Image) -> Image.Image:
    """The reference flattening, straight from the alpha formula."""
    values = np.asarray(rgba.convert("RGBA"), dtype=np.float64)
    alpha = values[..., 3:] / 255
    flat = values[..., :3] * alpha + np.array(TRANSPARENCY_BACKGROUND) * (1 - alpha)
    return Image.fromarray(np.rint(flat).astype(np.uint8))


def test_palette_png_with_transparent_index(small_photo):
    """A palette PNG with a transparent index comes out composited over the
    background: the transparent area is background, the rest the palette colours."""
    palette = small_photo.quantize(64)
    palette.paste(63, (100, 50, 200, 150))  # a block of the transparent index
    data = encode(palette, "PNG", transparency=63)
    out = process_image(data, settings())
    got = decode(out.jpeg)
    expected = composite(decode(data))
    assert_close(got, expected)
    # Inside the block, clear of the JPEG blocks its edges share with the photo.
    block = pixels(got)[66:134, 116:184]
    assert np.abs(block - np.array(TRANSPARENCY_BACKGROUND)).max() <= 3


def test_palette_png_with_alpha_per_entry(small_photo):
    """A palette whose entries carry partial alpha (tRNS with many values) is
    blended entry by entry."""
    palette = small_photo.quantize(64)
    alphas = bytes(range(0, 256, 4))  # 64 entries, from clear to nearly opaque
    data = encode(palette, "PNG", transparency=alphas)
    got = decode(process_image(data, settings()).jpeg)
    assert_close(got, composite(decode(data)))


def _alpha_ramp(size: tuple[int, int]) -> Image.Image:
    ramp = np.linspace(0, 255, size[0]).astype(np.uint8)
    return Image.fromarray(np.tile(ramp, (size[1], 1)))


ALPHA_CASES = {
    "rgba-png": ("RGBA", "PNG", {}),
    "la-png": ("LA", "PNG", {}),
    "rgba-webp": ("RGBA", "WEBP", {"lossless": True}),
    "rgba-tiff": ("RGBA", "TIFF", {}),
    "la-tiff": ("LA", "TIFF", {}),
}


@pytest.mark.parametrize("case", ALPHA_CASES)
def test_alpha_is_composited(case, small_photo):
    """LA and RGBA images are composited over the background by their alpha."""
    mode, fmt, params = ALPHA_CASES[case]
    source = small_photo.convert(mode[:-1])
    source.putalpha(_alpha_ramp(source.size))
    data = encode(source, fmt, **params)
    assert decode(data).mode == mode
    got = decode(process_image(data, settings()).jpeg)
    assert_close(got, composite(decode(data)))
    # Clear on the left, opaque on the right.
    assert pixels(got)[:, :4].mean() > 250
    edge = (300, 0, 320, 200)
    assert mean_diff(got.crop(edge), source.convert("RGB").crop(edge)) < 6


def test_grey_with_colour_key_transparency(small_photo):
    """A grey PNG with a tRNS colour key shows that grey as background."""
    grey = small_photo.convert("L")
    grey.paste(7, (0, 0, 50, 50))
    data = encode(grey, "PNG", transparency=7)
    got = decode(process_image(data, settings()).jpeg)
    assert pixels(got)[5:45, 5:45].min() >= 250
    assert_close(got, composite(decode(data)))


def _srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_srgb_profile_changes_nothing(small_photo):
    """An embedded sRGB profile needs no conversion and gives no warning."""
    data = encode(small_photo, "JPEG", quality=95, icc_profile=_srgb_bytes())
    out = process_image(data, settings())
    assert out.warnings == ()
    assert_close(decode(out.jpeg), decode(data))


def test_other_rgb_profile_is_converted(small_photo):
    """An RGB profile not named sRGB goes through a real colour transform (here one
    whose primaries are sRGB's, so the colours must stay put)."""
    icc = _srgb_bytes()
    renamed = icc.replace("sRGB".encode("utf-16-be"), "Demo".encode("utf-16-be"))
    assert renamed != icc
    assert "srgb" not in ImageCms.ImageCmsProfile(io.BytesIO(renamed)).profile.\
        profile_description.lower()
    data = encode(small_photo, "PNG", icc_profile=renamed)
    out = process_image(data, settings())
    assert out.warnings == ()
    assert_close(decode(out.jpeg), small_photo)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_unusable_profile_is_a_warning(fmt, small_photo):
    """A garbage or mismatched colour profile is a warning; the colours are converted
    without it."""
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    for icc in (b"\x00" * 128 + b"acsp" + b"\x01" * 300, lab):
        data = encode(small_photo, fmt, icc_profile=icc)
        out = process_image(data, settings())
        assert out.warnings == ("icc_unreadable",)
        assert_close(decode(out.jpeg), decode(data))
