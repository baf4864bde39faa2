"""Tell an image's real format from its first bytes, whatever its name or Content-Type
says, and read its declared size without decoding it."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Formats we can decode with Pillow alone. HEIC and AVIF need a plugin (see check.py).
DECODABLE_FORMATS = frozenset({"jpeg", "png", "webp", "gif", "bmp", "tiff", "mpo"})


@dataclass(frozen=True)
class Header:
    """What an image's header declares, read without decoding any pixel."""

    width: int
    height: int
    # JPEG only: the start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...).
    jpeg_sof: int | None = None


def sniff_format(data: bytes) -> str | None:
    """Return a format name ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heic",
    "avif") when the bytes start like that image kind, else None (HTML, JSON, empty,
    anything else).

    MPO (camera multi-picture) files start like JPEG and are reported as "jpeg" here;
    the decoder tells them apart. A few image kinds that are never decoded here are
    named too ("svg", "jp2", "jxl") so that callers can say "unsupported" rather than
    "not an image".
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    # Classic TIFF, then BigTIFF.
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _isobmff_brand(data)
    # JPEG 2000 in its box format, then as a bare codestream.
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head[:4] == b"\xffO\xffQ":
        return "jp2"
    if head[:2] == b"\xff\x0a" or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if _looks_like_svg(data):
        return "svg"
    return None


def body_kind(data: bytes) -> str:
    """Name what a non-image body looks like, for messages: "empty", "html", "xml",
    "json", "text" or "binary"."""
    if not data:
        return "empty"
    text = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text:
        return "text"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "html"
    if b"<html" in text:
        return "html"
    if text.startswith(b"<"):
        return "xml"
    if text[:1] in (b"{", b"["):
        return "json"
    return "binary" if b"\x00" in data[:512] else "text"


def read_header(data: bytes, fmt: str) -> Header | None:
    """Dimensions as the header of `data` (already sniffed as `fmt`) declares them.

    Reads the header only (a few dozen bytes for most formats) and never raises;
    None when the header is missing, malformed or of a kind not parsed here (HEIC,
    AVIF, BigTIFF), so the caller falls back to the decoder's own header parse.
    """
    reader = _HEADER_READERS.get(fmt)
    if reader is None:
        return None
    try:
        return reader(data)
    except (struct.error, IndexError, ValueError):
        return None


_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
)


def _isobmff_brand(data: bytes) -> str | None:
    # An AVIF file may carry a generic major brand ("mif1") and name "avif" only among
    # its compatible brands, so look at all of them before calling it HEIC.
    size = int.from_bytes(data[:4], "big")
    box = data[8 : min(max(size, 16), 256)]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
    brands.discard(b"\x00\x00\x00\x00")
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIC_BRANDS:
        return "heic"
    return None


def _looks_like_svg(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg")) and (
        b"<svg" in head
    )


# JPEG start-of-frame markers: every 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}


def _jpeg_header(data: bytes) -> Header | None:
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # image ended or scan began without a frame header
            return None
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            # Height 0 means "given later by a DNL marker"; let the decoder deal.
            if height == 0 or width == 0:
                return None
            return Header(width, height, jpeg_sof=marker)
        pos += length
    return None


def _png_header(data: bytes) -> Header | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return Header(width, height)


def _gif_header(data: bytes) -> Header | None:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    # The first frame may reach past the logical screen, and the decoder grows the
    # canvas to hold it, so its extent counts too.
    try:
        while True:
            block = data[pos]
            if block == 0x21:  # extension: label, then sub-blocks up to a zero length
                pos += 2
                while data[pos]:
                    pos += data[pos] + 1
                pos += 1
            elif block == 0x2C:
                left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
                return Header(max(width, left + w), max(height, top + h))
            else:
                break
    except (IndexError, struct.error):
        pass  # cut short: the screen size is all there is
    return Header(width, height)


def _bmp_header(data: bytes) -> Header | None:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # OS/2 1.x
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return Header(abs(width), abs(height))  # negative height: rows stored top-down


def _webp_header(data: bytes) -> Header | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas, which animation frames are drawn on
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return Header(width, height)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", data, 21)
        return Header((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return Header(width & 0x3FFF, height & 0x3FFF)
    return None


def _tiff_header(data: bytes) -> Header | None:
    order = data[:2]
    if data[2:4] not in (b"*\x00", b"\x00*"):
        return None  # BigTIFF
    endian = "<" if order == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(min(count, 512)):
        tag, kind, _n = struct.unpack_from(endian + "HHI", data, ifd + 2 + 12 * i)
        if tag in (256, 257):
            fmt = endian + ("H" if kind == 3 else "I")
            (found[tag],) = struct.unpack_from(fmt, data, ifd + 2 + 12 * i + 8)
    if 256 not in found or 257 not in found:
        return None
    return Header(found[256], found[257])


_HEADER_READERS = {
    "jpeg": _jpeg_header,
    "png": _png_header,
    "gif": _gif_header,
    "bmp": _bmp_header,
    "webp": _webp_header,
    "tiff": _tiff_header,
}
