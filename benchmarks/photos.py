"""Real-photo images for the benchmarks: crops of the shared corpus (27 photos) when it is
beside the checkout, else of the six photos shipped for the demo."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "photos"
SHIPPED = REPO / "shardtools" / "demo" / "photos"


def photo_paths() -> list[Path]:
    return sorted(CORPUS.glob("*.jpg")) or sorted(SHIPPED.glob("*.jpg"))


def derived_photos(count: int, long_side: int = 640, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` distinct (never byte-identical) JPEGs about the size of a photo host's 'medium' image: a random
    crop of a corpus photo scaled back to `long_side`."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in photo_paths()]
    images = []
    seen = set()
    i = 0
    while len(images) < count:
        source = sources[i % len(sources)]
        i += 1
        width, height = source.size
        scale = rng.uniform(0.7, 1.0)
        crop_w, crop_h = int(width * scale), int(height * scale)
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
        crop = source.crop((left, top, left + crop_w, top + crop_h))
        factor = long_side / max(crop.size)
        crop = crop.resize((round(crop.width * factor), round(crop.height * factor)), Image.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if data not in seen:  # two crops can round to the same box: keep samples distinct
            seen.add(data)
            images.append(data)
    return images
