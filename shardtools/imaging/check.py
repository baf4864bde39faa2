"""The image check: every image passes `process_image` before it is written to a shard.

It tells the real format from the bytes, refuses decompression bombs from the header,
decodes, normalises (EXIF orientation, colour mode, transparency, bit depth), resizes,
rejects blank placeholders and re-encodes as baseline JPEG. Bad input raises
`ImageRejected` with one of `REASON_CODES`; nothing else escapes. See
docs/image-check.md.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from shardtools.errors import ConfigError, ImageRejected
from shardtools.imaging import sniff
from shardtools.settings import ImageSettings

logger = logging.getLogger(__name__)

REASON_CODES: dict[str, str] = {
    "not_an_image": "the bytes are no image at all (HTML, XML, JSON, text, empty)",
    "unsupported_format": "an image kind this build cannot decode (HEIC/AVIF without "
    "a plugin, SVG, JPEG 2000, JPEG XL)",
    "too_many_pixels": "width x height (or a TIFF tile) in the header exceeds "
    "max_pixels; nothing was decoded",
    "too_small": "the shorter side is below min_side",
    "truncated": "the file ends before its image data does",
    "decode_error": "the decoder failed on corrupt or malformed data (or a JPEG "
    "with an absurd number of scans)",
    "blank": "one flat colour: every channel spans at most blank_tolerance levels",
}

WARNING_CODES: dict[str, str] = {
    "exif_unreadable": "EXIF could not be parsed; no orientation was applied from it",
    "orientation_invalid": "the EXIF orientation was not 1-8 and was ignored",
    "icc_unreadable": "the embedded colour profile was unusable; converted without it",
    "decoder_warning": "the decoder skipped something malformed (MPO index, APNG "
    "control chunk, TIFF tag)",
    "truncated_tolerated": "the file was cut short and kept (tolerate_truncation)",
}

RESIZE_MODES = ("shorter_side", "longer_side", "keep")
# Pillow's filters are antialiased when shrinking (their support grows with the factor).
# bilinear (a triangle filter), the default, is what torchvision uses on PIL images and
# about 1.8x faster than lanczos here (640 px -> 256 px: 2.9 vs 5.2 ms per image, decode
# and encode included); lanczos keeps a little more fine texture.
RESAMPLE_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

# A JPEG with more scans than this is refused (see `_process`).
MAX_JPEG_SCANS = 100

# Transparent pixels are composited over white, as most pages show them.
TRANSPARENCY_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ProcessedImage:
    """An image that passed the check, ready for a shard."""

    jpeg: bytes  # what goes into the shard
    width: int
    height: int
    source_format: str  # real format of the input bytes ("jpeg", "png", "mpo", ...)
    # Dimensions of the input as displayed, i.e. after its EXIF orientation.
    source_width: int
    source_height: int
    warnings: tuple[str, ...]  # codes from WARNING_CODES; the image is still kept


def process_image(data: bytes, settings: ImageSettings) -> ProcessedImage:
    """Check, normalise and re-encode one image.

    Raises `ImageRejected` (reason in `REASON_CODES`) for any bad input, and
    `ConfigError` only for settings no image could satisfy.
    """
    _check_settings(settings)
    try:
        return _process(bytes(data), settings)
    except ImageRejected:
        raise
    except Exception as exc:  # decoders fed hostile bytes raise nearly anything
        reason = _reason_for(exc)
        logger.debug("image rejected as %s", reason, exc_info=True)
        raise ImageRejected(reason, _describe(exc)) from exc


# Pillow plugin names to open each sniffed format with; nothing else is ever tried, so
# no other plugin (EPS through Ghostscript, say) sees bytes from the network.
_PILLOW_FORMATS = {
    "jpeg": ("JPEG",),  # MPO files come back from the JPEG plugin
    "png": ("PNG",),
    "webp": ("WEBP",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "tiff": ("TIFF",),
    "avif": ("AVIF",),
    "heic": ("HEIF",),
}

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes whose embedded profile, if any, is an RGB one (grey images carry grey
# profiles, which converting to RGB has no use for).
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "YCbCr"})
_JPEG_EOI = b"\xff\xd9"
# Formats whose rows arrive in order (GIF and some PNGs interlace; see `_load`).
_ROW_ORDER_FORMATS = frozenset({"png", "bmp", "tiff"})
_PIL_DIR = os.path.dirname(Image.__file__)

_warnings_lock = threading.RLock()


def _reset_lock_in_child() -> None:
    # A fork taken while another thread held the lock would leave it held forever.
    global _warnings_lock
    _warnings_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def _check_settings(settings: ImageSettings) -> None:
    if settings.resize not in RESIZE_MODES:
        raise ConfigError("image.resize", f"must be one of {', '.join(RESIZE_MODES)}")
    if settings.size < 1:
        raise ConfigError("image.size", "must be at least 1")
    if not 1 <= settings.quality <= 100:
        raise ConfigError("image.quality", "must be between 1 and 100")
    if settings.resample not in RESAMPLE_FILTERS:
        raise ConfigError("image.resample", f"must be one of {', '.join(RESAMPLE_FILTERS)}")


def _process(data: bytes, settings: ImageSettings) -> ProcessedImage:
    warns: list[str] = []
    fmt = _real_format(data)
    header = sniff.read_header(data, fmt)
    if header is not None:
        _check_dimensions(header.width, header.height, settings)
    if fmt == "webp" and _riff_cut_short(data):
        # libwebp decodes whole files only, so there is nothing to tolerate.
        raise ImageRejected("truncated", "RIFF size exceeds the data")
    if fmt == "tiff" and _tiff_cut_short(data):
        # Writers often put the directory last, so a cut TIFF has none at all.
        raise ImageRejected("truncated", "TIFF directory beyond the data")
    if fmt == "jpeg" and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        # Each progressive scan is a pass over the whole image: thousands of tiny
        # scans make a small file take minutes. Real encoders write at most a few
        # dozen. Entropy-coded data never holds FF DA, so little else is counted.
        raise ImageRejected("decode_error", f"more than {MAX_JPEG_SCANS} JPEG scans")

    im = _open(data, fmt, warns)
    width, height = im.size
    # The plugin's own reading is what gets decoded; a header this module could not
    # parse, or parsed differently, is caught here, still before any pixel.
    _check_dimensions(width, height, settings)
    if im.format == "TIFF":
        _check_tiff_tiles(im, settings)
    source_format = "mpo" if im.format == "MPO" else fmt
    target = _target_size(width, height, settings)
    may_pass = settings.passthrough and _is_plain_jpeg(data, header, im, source_format)
    if fmt == "jpeg":
        _draft(im, target)
    im = _load(im, data, fmt, target, settings, warns)

    with _captured_warnings(warns, as_code="exif_unreadable"):
        orientation = _orientation(im, warns)
    rgb = _to_rgb(im, warns)
    if rgb.size != target:
        rgb = rgb.resize(target, RESAMPLE_FILTERS[settings.resample], reducing_gap=3.0)
    transpose = _TRANSPOSE.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
        if orientation in _SWAPS_AXES:
            width, height = height, width
    _check_blank(rgb, settings.blank_tolerance)

    # Passing through needs the decoded pixels untouched: no conversion (`rgb is im`),
    # no resize, no rotation and nothing odd noticed on the way.
    if may_pass and rgb is im and not warns:
        jpeg = data
    else:
        jpeg = _encode(rgb, settings.quality)
    return ProcessedImage(
        jpeg=jpeg,
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
        source_width=width,
        source_height=height,
        warnings=tuple(dict.fromkeys(warns)),
    )


def _real_format(data: bytes) -> str:
    fmt = sniff.sniff_format(data)
    if fmt is None:
        kind = sniff.body_kind(data)
        raise ImageRejected("not_an_image", f"{kind} body of {len(data)} bytes")
    if fmt in sniff.DECODABLE_FORMATS:
        return fmt
    if fmt in ("heic", "avif") and _plugin_ready(fmt):
        return fmt
    raise ImageRejected("unsupported_format", f"{fmt} cannot be decoded here")


@functools.cache
def _plugin_ready(fmt: str) -> bool:
    """Whether HEIC or AVIF can be decoded: optional plugins, never a dependency."""
    if fmt == "avif":
        from PIL import features

        if features.check_module("avif"):  # built into Pillow >= 11.2
            return True
        module_name = "pillow_avif"  # registers its opener on import
    else:
        module_name = "pillow_heif"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    if fmt == "heic":
        module.register_heif_opener()
    return True


def _check_dimensions(width: int, height: int, settings: ImageSettings) -> None:
    if width * height > settings.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"{width}x{height} is over max_pixels {settings.max_pixels}",
        )
    if min(width, height) < settings.min_side:
        raise ImageRejected(
            "too_small", f"{width}x{height} is under min_side {settings.min_side}"
        )


def _check_tiff_tiles(im: Image.Image, settings: ImageSettings) -> None:
    # libtiff allocates a whole tile per read, and tiles may be far larger than the
    # image: a 1 KB file with 32768x32768 tiles would cost a gigabyte.
    tags = getattr(im, "tag_v2", {})
    width, height = tags.get(322, 0), tags.get(323, 0)
    if not (isinstance(width, int) and isinstance(height, int)):
        return  # malformed; libtiff will refuse it
    if width * height > settings.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"TIFF tiles of {width}x{height} are over max_pixels {settings.max_pixels}",
        )


def _tiff_cut_short(data: bytes) -> bool:
    if data[2:4] not in (b"*\x00", b"\x00*"):
        return False  # BigTIFF: 64-bit offsets, not read here
    order = "little" if data[:2] == b"II" else "big"
    return int.from_bytes(data[4:8], order) >= len(data)


def _riff_cut_short(data: bytes) -> bool:
    return int.from_bytes(data[4:8], "little") + 8 > len(data)


def _open(data: bytes, fmt: str, warns: list[str]) -> Image.Image:
    """Parse the header only; no pixel is decoded until `load`."""
    _import_plugins()
    with _captured_warnings(warns):
        return Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS[fmt])


@functools.cache
def _import_plugins() -> None:
    # Registered up front so Image.open finds them without importing every plugin.
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        JpegImagePlugin,
        MpoImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )


@contextmanager
def _captured_warnings(warns: list[str], as_code: str = "") -> Iterator[None]:
    """Turn what Pillow reports through `warnings` into warning codes (`as_code`, or
    one guessed from the message).

    Pillow warns, rather than raises, about corrupt EXIF, malformed MPO or APNG
    headers and large images. Under an "error" filter that would reject a good image,
    elsewhere it would print once and be lost. `catch_warnings` swaps process-wide
    state, so the lock keeps threads from interleaving it; only header and metadata
    parsing runs inside, never a full decode.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with _warnings_lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _sort_warnings(caught, warns, as_code)


def _sort_warnings(
    caught: list[warnings.WarningMessage], warns: list[str], as_code: str
) -> None:
    for w in caught:
        if not w.filename.startswith(_PIL_DIR):
            # Another thread's warning, caught in passing: let it go on its way.
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        logger.debug("pillow: %s", w.message)
        if issubclass(w.category, Image.DecompressionBombWarning):
            continue  # Pillow's own limit; max_pixels is what counts here
        if as_code:
            warns.append(as_code)
        elif "exif" in str(w.message).lower():
            warns.append("exif_unreadable")
        else:
            warns.append("decoder_warning")


def _target_size(width: int, height: int, settings: ImageSettings) -> tuple[int, int]:
    if settings.resize == "keep":
        return width, height
    size = settings.size
    if settings.resize == "shorter_side":
        by_width = width <= height
    else:
        by_width = width >= height
    side = width if by_width else height
    if side <= size:  # never upscale
        return width, height
    if by_width:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size


def _is_plain_jpeg(
    data: bytes, header: sniff.Header | None, im: Image.Image, source_format: str
) -> bool:
    """A baseline 3-channel JPEG with nothing after its end marker (phones append
    videos and depth maps there), so that its bytes could go to a shard as they are."""
    return (
        source_format == "jpeg"
        and header is not None
        and header.jpeg_sof == 0xC0
        and im.mode == "RGB"
        and data.rstrip(b"\x00").endswith(_JPEG_EOI)
    )


def _draft(im: Image.Image, target: tuple[int, int]) -> None:
    # Let libjpeg scale by 1/2, 1/4 or 1/8 while decoding, but only down to twice the
    # target, so that the final Lanczos pass still has detail to work from.
    im.draft(None, (2 * target[0], 2 * target[1]))


def _load(
    im: Image.Image,
    data: bytes,
    fmt: str,
    target: tuple[int, int],
    settings: ImageSettings,
    warns: list[str],
) -> Image.Image:
    try:
        im.load()
        return im
    except OSError as exc:
        if not _is_truncation(exc):
            raise
        if not settings.tolerate_truncation:
            raise ImageRejected("truncated", _describe(exc)) from exc
    # ImageFile.LOAD_TRUNCATED_IMAGES would do the same for every image in the
    # process; this does it for this one only.
    if fmt == "jpeg":
        # End the data with an EOI marker so libjpeg finishes; missing blocks are grey.
        im = _open(data + _JPEG_EOI, fmt, warns)
        _draft(im, target)
        im.load()
    elif fmt in _ROW_ORDER_FORMATS and not im.info.get("interlace"):
        # Keep the rows decoded so far; the rest of the canvas stays black.
        im.tile = []
        im.load()
    else:
        # Interlaced rows, or libwebp: what arrived is no usable picture.
        raise ImageRejected("truncated", f"a cut {fmt} cannot be tolerated")
    warns.append("truncated_tolerated")
    return im


def _is_truncation(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, SyntaxError)) and "truncat" in str(exc).lower()


def _orientation(im: Image.Image, warns: list[str]) -> int:
    try:
        exif = im.getexif()
        value = exif.get(0x0112)
    except Exception:  # a hostile EXIF block can raise nearly anything
        logger.debug("EXIF unreadable", exc_info=True)
        warns.append("exif_unreadable")
        return 1
    raw = im.info.get("exif")
    if not exif and isinstance(raw, bytes) and len(raw.removeprefix(b"Exif\0\0")) > 8:
        # Pillow gives up silently on some broken blocks (a bad byte order, say): a
        # block of entries that yields none was not read.
        warns.append("exif_unreadable")
    if value is None:
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    warns.append("orientation_invalid")
    return 1


def _to_rgb(im: Image.Image, warns: list[str]) -> Image.Image:
    """The image as 8-bit RGB; the very same object when it already is one and needs
    no colour conversion."""
    icc = im.info.get("icc_profile")
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im, icc, warns)
    source_mode = im.mode
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        im = _flatten(im)
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if icc and source_mode in _RGB_MODES:
        converted = _icc_to_srgb(im, icc, "RGB", warns)
        if converted is not None:
            return converted
    return im


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, warns: list[str]) -> Image.Image:
    if im.format in ("JPEG", "MPO") and "adobe" not in im.info:
        # Pillow reads every CMYK JPEG as Adobe's inverted kind; without the Adobe
        # marker the inks are stored plain, so undo the inversion.
        from PIL import ImageChops

        im = ImageChops.invert(im)
    if icc:
        converted = _icc_to_srgb(im, icc, "CMYK", warns)
        if converted is not None:
            return converted
    # No usable profile: Pillow's (255 - ink) * (255 - black) / 255, as unmanaged
    # viewers do.
    return im.convert("RGB")


def _icc_to_srgb(
    im: Image.Image, icc: bytes, space: str, warns: list[str]
) -> Image.Image | None:
    """Convert through the embedded profile, or None when it is sRGB already
    (nothing to do) or unusable (a warning)."""
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != space:
            raise ValueError(f"{profile.profile.xcolor_space} profile on {space} data")
        description = profile.profile.profile_description or ""
        if space == "RGB" and "srgb" in description.lower():
            return None
        return ImageCms.profileToProfile(im, profile, _srgb(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        logger.debug("ICC profile unusable", exc_info=True)
        warns.append("icc_unreadable")
        return None


@functools.cache
def _srgb() -> object:
    from PIL import ImageCms

    return ImageCms.createProfile("sRGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit and float grey to 8-bit "L", keeping every level apart
    that 8 bits can (Pillow's own conversion clips instead)."""
    import numpy as np

    values = np.asarray(im)
    if im.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), posinf=0.0, neginf=0.0)
        fits = values.min() >= 0 and values.max() <= 1
        known = (0.0, 1.0) if fits else None
    else:
        values = values.astype(np.int64)
        fits = values.min() >= 0 and values.max() <= 0xFFFF
        known = (0, 0xFFFF) if fits else None
    # Outside the usual range there is no telling what it was: stretch what is there.
    low, high = known or (values.min(), values.max())
    span = max(float(high - low), 1e-12)
    scaled = np.rint((values - low) * (255.0 / span))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBa", "La"):  # premultiplied: back to straight alpha first
        im = im.convert(im.mode.upper())
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, TRANSPARENCY_BACKGROUND)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _check_blank(rgb: Image.Image, tolerance: int) -> None:
    spans = [high - low for low, high in rgb.getextrema()]
    if max(spans) <= tolerance:
        raise ImageRejected("blank", f"every channel spans at most {max(spans)} levels")


def _encode(rgb: Image.Image, quality: int) -> bytes:
    # Pillow would carry a JPEG comment over from `info`; the shard gets pixels only.
    rgb.info = {}
    buffer = io.BytesIO()
    rgb.save(
        buffer,
        "JPEG",
        quality=quality,
        subsampling="4:2:0",
        # Huffman optimisation would save ~4% of bytes for ~30% more encode time; shards
        # are read far more often than written, but the build is the bottleneck users see.
        optimize=False,
        progressive=False,
    )
    return buffer.getvalue()


def _reason_for(exc: BaseException) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too_many_pixels"
    if _is_truncation(exc):
        return "truncated"
    return "decode_error"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
