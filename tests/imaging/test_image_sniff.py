"""Format sniffing and header reading (shardtools.imaging.sniff)."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from shardtools.imaging.sniff import (
    DECODABLE_FORMATS,
    body_kind,
    read_header,
    sniff_format,
)

from .corpus import decode, encode


def test_decodable_formats_are_pillows_own():
    """The formats decoded without plugins stay as the build expects."""
    expected = {"jpeg", "png", "webp", "gif", "bmp", "tiff", "mpo"}
    assert expected == DECODABLE_FORMATS


HEADER_CASES = {
    "jpeg": ("JPEG", {}),
    "jpeg-progressive": ("JPEG", {"progressive": True}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "tiff": ("TIFF", {}),
    "webp-lossy": ("WEBP", {}),
    "webp-lossless": ("WEBP", {"lossless": True}),
    "webp-extended": ("WEBP", {"exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"}),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_header_size_matches_pillow(case, photo):
    """read_header gives the size Pillow decodes, for odd sizes too, and marks
    baseline and progressive JPEG apart."""
    fmt, params = HEADER_CASES[case]
    source = photo.resize((333, 217))
    data = encode(source, fmt, **params)
    kind = sniff_format(data)
    assert kind == ("jpeg" if fmt == "JPEG" else fmt.lower())
    header = read_header(data, kind)
    assert header is not None and (header.width, header.height) == decode(data).size
    if fmt == "JPEG":
        assert header.jpeg_sof == (0xC2 if params else 0xC0)


def test_animated_webp_header_is_the_canvas(photo):
    """For extended WebP (animation) the canvas size counts."""
    frames = [photo.resize((300, 200)), photo.resize((300, 200)).rotate(180)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert data[12:16] == b"VP8X"
    header = read_header(data, "webp")
    assert header is not None and (header.width, header.height) == (300, 200)


def test_read_header_never_raises():
    """Cut or garbled headers give None or some size, never an exception."""
    rng = random.Random(5)
    photo = Image.new("RGB", (40, 30), (9, 99, 199))
    samples = {
        kind: encode(photo, fmt)
        for kind, fmt in [("jpeg", "JPEG"), ("png", "PNG"), ("gif", "GIF"),
                          ("bmp", "BMP"), ("tiff", "TIFF"), ("webp", "WEBP")]
    }
    for kind, data in samples.items():
        for cut in range(len(data[:200])):
            read_header(data[:cut], kind)
        for _ in range(100):
            garbled = bytearray(data[:200])
            for _ in range(5):
                garbled[rng.randrange(len(garbled))] = rng.randrange(256)
            read_header(bytes(garbled), kind)
    assert read_header(b"\x00\x00\x00\x1cftypavif", "avif") is None


BRANDS = {
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf": "avif",
    # Generic major brand, AVIF only among the compatible ones.
    b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf": "avif",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic": "heic",
    b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic": "heic",
    b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom": None,  # an MP4 video
}


@pytest.mark.parametrize("head, expected", BRANDS.items())
def test_isobmff_brands(head, expected):
    """HEIC and AVIF are told apart by all their brands, videos are no image."""
    assert sniff_format(head + bytes(32)) == expected


def test_other_signatures():
    """BigTIFF counts as TIFF; SVG, JPEG 2000 and JPEG XL are named (so they can be
    called unsupported); text bodies are None."""
    assert sniff_format(b"II+\x00\x08\x00\x00\x00" + bytes(24)) == "tiff"
    assert sniff_format(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>") == "svg"
    assert sniff_format(b"<?xml version='1.0'?>\n<svg/>") == "svg"
    assert sniff_format(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(20)) == "jp2"
    assert sniff_format(b"\xff\x0a\xfa\x7f" + bytes(20)) == "jxl"
    for body in (b"", b"<html></html>", b"<?xml version='1.0'?><Error/>", b"{}"):
        assert sniff_format(body) is None


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"", "empty"),
        (b"  <!DOCTYPE HTML PUBLIC>", "html"),
        (b"<?xml version='1.0'?><x/>", "xml"),
        (b'[{"a": 1}]', "json"),
        (b"Forbidden", "text"),
        (b"\x00\x9f\x92\x96", "binary"),
    ],
)
def test_body_kind(body, kind):
    """Non-image bodies are named for the rejection detail."""
    assert body_kind(body) == kind
