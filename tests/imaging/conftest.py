"""Session fixtures for the image-check tests, built from the shipped demo photos."""

from __future__ import annotations

import pytest
from PIL import Image

from .corpus import PHOTO_DIR, decode, zero_png


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """The shipped photos' bytes by file name."""
    return {path.name: path.read_bytes() for path in sorted(PHOTO_DIR.glob("*.jpg"))}


@pytest.fixture(scope="session")
def photo_bytes(photos) -> bytes:
    return photos["LadyBird.jpg"]


@pytest.fixture(scope="session")
def photo(photo_bytes) -> Image.Image:
    """A real 640x400 photo, decoded once; tests copy before changing it."""
    return decode(photo_bytes)


@pytest.fixture(scope="session")
def small_photo(photo) -> Image.Image:
    """The photo at 320x200: its shorter side is under the default target of 256, so
    nothing is resized and outputs compare with the input pixel for pixel."""
    return photo.resize((320, 200), Image.Resampling.LANCZOS)


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    """A valid PNG of 20000x11000 RGB pixels (660 MB decoded) in well under 1 MB."""
    return zero_png(20000, 11000)
