"""Tell an image's real format from its first bytes, whatever its name or Content-Type says."""

from __future__ import annotations

# Formats we can decode with Pillow alone. HEIC and AVIF need a plugin (see check.py).
DECODABLE_FORMATS = frozenset({"jpeg", "png", "webp", "gif", "bmp", "tiff", "mpo"})


def sniff_format(data: bytes) -> str | None:
    """Return a format name ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heic", "avif")
    when the bytes start like that image kind, else None (HTML, JSON, empty, anything else).

    MPO (camera multi-picture) files start like JPEG and are reported as "jpeg" here; the
    decoder tells them apart.
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
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "heic"
    return None
