"""Which inputs the image check accepts, by their real format, and what it makes of
them."""

from __future__ import annotations

import random

import pytest
from PIL import Image, features

from shardtools.errors import ImageRejected
from shardtools.imaging import check
from shardtools.imaging.check import process_image

from .corpus import assert_close, decode, encode, mean_diff, settings


def test_every_demo_photo_passes(photos):
    """Real photos come out as baseline RGB JPEGs, shorter side 256, close to a plain
    Pillow decode resized the same way."""
    for name, data in photos.items():
        out = process_image(data, settings())
        got = decode(out.jpeg)
        reference = decode(data)
        assert got.format == "JPEG" and got.mode == "RGB", name
        assert min(got.size) == 256 and got.size == (out.width, out.height), name
        assert (out.source_width, out.source_height) == reference.size, name
        assert out.source_format == "jpeg" and out.warnings == (), name
        assert_close(got, reference.resize(got.size, Image.Resampling.LANCZOS))


FORMATS = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"quality": 90}),
    "webp-lossless": ("WEBP", {"lossless": True}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "tiff": ("TIFF", {}),
    "tiff-deflate": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "jpeg-progressive": ("JPEG", {"progressive": True, "quality": 95}),
}


@pytest.mark.parametrize("case", FORMATS)
def test_formats_accepted(case, small_photo):
    """PNG, WebP, GIF, BMP and TIFF (and progressive JPEG) are decoded to the same
    pixels a plain Pillow decode gives."""
    fmt, params = FORMATS[case]
    data = encode(small_photo, fmt, **params)
    out = process_image(data, settings())
    expected_format = "jpeg" if fmt == "JPEG" else fmt.lower()
    assert out.source_format == expected_format
    assert (out.width, out.height) == (320, 200)
    assert_close(decode(out.jpeg), decode(data))


def test_webp_named_jpg_is_accepted(tmp_path, small_photo):
    """The format comes from the bytes: WebP saved as photo.jpg is read as WebP."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(small_photo, "WEBP", quality=90))
    data = path.read_bytes()
    out = process_image(data, settings())
    assert out.source_format == "webp"
    assert_close(decode(out.jpeg), decode(data))


def test_png_named_jpg_is_accepted(tmp_path, small_photo):
    """Likewise a PNG behind a .jpg name."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(small_photo, "PNG"))
    assert process_image(path.read_bytes(), settings()).source_format == "png"


def test_mpo_gives_its_first_picture(small_photo):
    """A camera MPO (two JPEGs in one file) is accepted as "mpo" and gives its first
    picture, never the second."""
    second = small_photo.transpose(Image.Transpose.ROTATE_180)
    data = encode(small_photo, "MPO", save_all=True, append_images=[second])
    assert decode(data).format == "MPO"
    out = process_image(data, settings())
    assert out.source_format == "mpo"
    got = decode(out.jpeg)
    assert_close(got, decode(data))
    assert mean_diff(got, second) > 15


ANIMATED = {"gif": ("GIF", {}), "webp": ("WEBP", {"quality": 90}), "png": ("PNG", {})}


@pytest.mark.parametrize("case", ANIMATED)
def test_animated_image_gives_first_frame(case, small_photo):
    """Animated GIF, WebP and PNG (APNG) give their first frame."""
    fmt, params = ANIMATED[case]
    frames = [
        small_photo,
        small_photo.transpose(Image.Transpose.ROTATE_180),
        small_photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert decode(data).n_frames == 3  # really animated
    out = process_image(data, settings())
    got = decode(out.jpeg)
    assert_close(got, decode(data))  # Pillow opens at the first frame
    assert mean_diff(got, frames[1]) > 15


NOT_IMAGES = {
    "empty": b"",
    "html": b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1></body></html>\n",
    "html-lowercase-bom": b"\xef\xbb\xbf  <html><body>moved</body></html>",
    "xml": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>",
    "json": b'{"error": "rate limited", "retry_after": 30}',
    "text": b"Service Unavailable\r\n",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "zeros": bytes(4096),
    "random": random.Random(7).randbytes(4096),
}


@pytest.mark.parametrize("case", NOT_IMAGES)
def test_non_image_bodies_are_not_an_image(case):
    """HTML, XML, JSON, text, empty and other non-image bodies are `not_an_image`."""
    with pytest.raises(ImageRejected) as rejected:
        process_image(NOT_IMAGES[case], settings())
    assert rejected.value.reason == "not_an_image"


def test_html_page_says_html():
    """The rejection detail names what the body looked like, for the build log."""
    with pytest.raises(ImageRejected) as rejected:
        process_image(NOT_IMAGES["html"], settings())
    assert "html" in rejected.value.detail


def test_svg_and_jpeg2000_are_unsupported(small_photo):
    """Image kinds that are never decoded here are `unsupported_format`, not
    `not_an_image`: SVG, JPEG 2000."""
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"'
        b' height="10"><rect width="10" height="10"/></svg>'
    )
    cases = [svg, encode(small_photo, "JPEG2000")]
    for data in cases:
        with pytest.raises(ImageRejected) as rejected:
            process_image(data, settings())
        assert rejected.value.reason == "unsupported_format"


def _heic_like() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


def test_heic_without_plugin_is_unsupported(monkeypatch):
    """HEIC is only decoded when pillow-heif is importable; without it,
    `unsupported_format`."""
    monkeypatch.setattr(check, "_plugin_ready", lambda fmt: False)
    with pytest.raises(ImageRejected) as rejected:
        process_image(_heic_like(), settings())
    assert rejected.value.reason == "unsupported_format"


def test_heic_plugin_detection_matches_import():
    """Whether HEIC counts as decodable follows whether pillow_heif imports."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        expected = False
    else:
        expected = True
    assert check._plugin_ready("heic") is expected


@pytest.mark.skipif(not features.check_module("avif"), reason="no AVIF in Pillow")
def test_avif_accepted_when_pillow_decodes_it(small_photo):
    """AVIF is accepted when a decoder is present (built into Pillow since 11.2)."""
    data = encode(small_photo, "AVIF", quality=90, speed=10)
    out = process_image(data, settings())
    assert out.source_format == "avif"
    assert_close(decode(out.jpeg), decode(data))


def test_avif_without_plugin_is_unsupported(monkeypatch):
    """With no AVIF decoder, AVIF bytes are `unsupported_format`."""
    monkeypatch.setattr(check, "_plugin_ready", lambda fmt: False)
    data = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64)
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, settings())
    assert rejected.value.reason == "unsupported_format"


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel_come_out_rgb(mode, small_photo):
    """Grey and 1-bit images come out as 3-channel JPEGs of the same grey."""
    data = encode(small_photo.convert(mode), "PNG")
    got = decode(process_image(data, settings()).jpeg)
    assert got.mode == "RGB" and got.layers == 3
    assert_close(got, decode(data))


def test_malformed_mpo_index_falls_back_to_its_jpeg(small_photo):
    """An MPO whose picture index is unreadable is still its first picture, read as
    plain JPEG, with a warning."""
    data = encode(small_photo, "MPO", save_all=True,
                  append_images=[small_photo.transpose(Image.Transpose.ROTATE_180)])
    index = data.index(b"MPF\x00")
    count_tag = data.index(b"\x01\xb0", index)  # NumberOfImages, little-endian
    broken = data[:count_tag] + b"\x01\xbf" + data[count_tag + 2 :]
    out = process_image(broken, settings())
    assert out.source_format == "jpeg"
    assert out.warnings == ("decoder_warning",)
    assert_close(decode(out.jpeg), decode(data))
