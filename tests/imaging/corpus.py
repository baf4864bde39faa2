"""Builders for the image-check corpus: every case is generated from the demo photos."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from shardtools.settings import ImageSettings

PHOTO_DIR = Path(__file__).parents[2] / "shardtools" / "demo" / "photos"


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """The reference decode: plain Pillow, nothing of the code under test."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float64)


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, on the 0-255 scale."""
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(pixels(a) - pixels(b)).mean())


def settings(**changes) -> ImageSettings:
    return dataclasses.replace(ImageSettings(), **changes)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def zero_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG, built without ever holding the raw pixels.

    The zlib stream is one full-flushed block of zero rows repeated: after a full flush
    the compressor starts afresh, so each repeat compresses to the same bytes, and the
    Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    row = 1 + 3 * width  # filter byte, then RGB
    rows_per_chunk = 100
    assert height % rows_per_chunk == 0
    compressor = zlib.compressobj(9)
    chunk = bytes(row * rows_per_chunk)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)[:-4]  # without the checksum of 2 chunks
    adler = ((row * height % 65521) << 16) | 1
    stream = first + repeat * (height // rows_per_chunk - 1) + tail
    stream += struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every JPEG header segment before the first scan."""
    segments = []
    pos = 2
    while True:
        marker = data[pos + 1]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segments.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            return segments
        pos += 2 + length


def drop_jpeg_segments(data: bytes, marker: int) -> bytes:
    for found, start, end in reversed(jpeg_segments(data)):
        if found == marker:
            data = data[:start] + data[end:]
    return data


def set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Make the frame header declare another size; the scan data stays as it was."""
    for marker, start, _end in jpeg_segments(data):
        if marker in (0xC0, 0xC1, 0xC2):
            at = start + 5
            return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]
    raise AssertionError("no frame header")


def set_tiff_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite ImageWidth and ImageLength in the first IFD of a little-endian TIFF."""
    out = bytearray(data)
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", out, at + 8, value)
    return bytes(out)


def with_orientation(im: Image.Image, orientation, fmt="JPEG", **params) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **params)


def jpeg_loss(reference: Image.Image, quality: int = 90) -> float:
    """What one JPEG encode at `quality` (the default output) costs this image, as a
    mean difference: the floor any output compared with `reference` sits on."""
    rgb = reference.convert("RGB")
    return mean_diff(decode(encode(rgb, "JPEG", quality=quality)), rgb)


def assert_close(got: Image.Image, reference: Image.Image, margin: float = 0.75):
    """`got` differs from `reference` by little more than a JPEG re-encode would."""
    floor = jpeg_loss(reference)
    diff = mean_diff(got, reference)
    assert diff <= floor + margin, f"mean difference {diff:.2f}, JPEG floor {floor:.2f}"


def tiled_tiff(width: int, height: int, tile: int, payload: bytes, compression=8):
    """A little-endian 8-bit grey TIFF with one tile of tile x tile pixels, written
    by hand (Pillow does not write tiles)."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, compression),
        (262, 3, 1),
        (277, 3, 1),
        (322, 4, tile),
        (323, 4, tile),
        (324, 4, 0),  # TileOffsets: filled in below
        (325, 4, len(payload)),
    ]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, value in entries:
        value = data_at if tag == 324 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return bytes(out + b"\x00\x00\x00\x00" + payload)


def interlaced_png(im: Image.Image) -> bytes:
    """An Adam7-interlaced RGB PNG, written by hand (Pillow writes none)."""
    values = np.asarray(im.convert("RGB"))
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
              (1, 0, 2, 2), (0, 1, 1, 2)]  # x0, y0, x step, y step
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub = values[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                raw += b"\x00" + row.tobytes()  # filter: none
    ihdr = struct.pack(">IIBBBBB", im.width, im.height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(raw)))
        + png_chunk(b"IEND", b"")
    )
