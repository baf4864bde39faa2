"""Pictures of a dataset: a contact sheet of random samples, and samples per class per split.

The contact sheet is for the eye: a blank, broken or mislabelled image stands out at a
glance among its neighbours. It reads shards with the standard library's tarfile, so it
works on any machine that has the dataset, without torch.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .dataset import CLASSES, read_manifest
from .errors import DatasetError

_CAPTION_HEIGHT = 18


def contact_sheet(dataset_dir: str | Path, split: str, out: str | Path, num_samples: int = 48,
                  columns: int = 8, tile: int = 160, seed: int | None = None) -> int:
    """Write a PNG grid of `num_samples` random samples of `split` with their labels;
    returns how many were drawn."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DatasetError(f"{dataset_dir} has no split {split!r} (it has {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    total = sum(s["num_samples"] for s in shards)
    if total == 0:
        raise DatasetError(f"{dataset_dir}: split {split!r} has no samples yet")
    rng = random.Random(seed)
    wanted = set(rng.sample(range(total), min(num_samples, total)))

    labels = _labels(dataset_dir)
    picked = []
    position = 0
    for shard in shards:
        if not any(position <= i < position + shard["num_samples"] for i in wanted):
            position += shard["num_samples"]
            continue
        for image, class_id in _samples(dataset_dir / shard["name"]):
            if position in wanted:
                picked.append((image, labels.get(class_id, str(class_id))))
            position += 1
    rng.shuffle(picked)

    rows = -(-len(picked) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + _CAPTION_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (jpeg, label) in enumerate(picked):
        x, y = (index % columns) * tile, (index // columns) * (tile + _CAPTION_HEIGHT)
        with Image.open(io.BytesIO(jpeg)) as image:
            image = image.convert("RGB")
            image.thumbnail((tile - 4, tile - 4))
            sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        draw.text((x + 4, y + tile + 2), label[:24], fill=(0, 0, 0), font=font)
    sheet.save(out, "PNG")
    return len(picked)


def class_plot(dataset_dir: str | Path, out: str | Path, max_classes: int = 60,
               few: int = 5) -> int:
    """Write a PNG of samples per class per split; returns the number of classes drawn.

    Up to `max_classes` classes: one stacked bar per class, labelled. More (an iNaturalist
    dataset has thousands): per split, every class's count sorted from largest to smallest
    on a log scale, so the long tail of rare classes, the part worth seeing, is visible,
    with the number of classes under `few` samples in the legend. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DatasetError("drawing plots needs matplotlib: pip install 'shardtools[viz]'") from None
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    labels = _labels(dataset_dir)
    counts = manifest["class_counts"]
    num_classes = max(len(labels), manifest.get("num_classes", 0),
                      1 + max((int(c) for per in counts.values() for c in per), default=-1))
    class_ids = range(num_classes)
    if num_classes <= max_classes:
        figure, axes = plt.subplots(figsize=(max(6, num_classes * 0.25 + 2), 4.5), dpi=100)
        bottom = [0] * num_classes
        for split, per_class in counts.items():
            values = [per_class.get(str(c), 0) for c in class_ids]
            axes.bar(range(num_classes), values, bottom=bottom, label=split)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes.set_xticks(range(num_classes), [labels.get(c, str(c))[:18] for c in class_ids],
                        rotation=90, fontsize=7)
        axes.set_title(f"samples per class per split ({num_classes} classes)")
    else:
        figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
        for split, per_class in counts.items():
            values = sorted((per_class.get(str(c), 0) for c in class_ids), reverse=True)
            rare = sum(1 for v in values if v < few)
            axes.plot(range(1, num_classes + 1), [max(v, 0.5) for v in values],
                      label=f"{split} ({rare:,} classes under {few})")
        axes.set_yscale("log")
        axes.set_xlabel("classes, from most to fewest samples")
        axes.set_title(f"samples per class per split ({num_classes:,} classes; 0 drawn as 0.5)")
    axes.set_ylabel("samples")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return num_classes


def _labels(dataset_dir: Path) -> dict[int, str]:
    path = dataset_dir / CLASSES
    if not path.exists():
        return {}
    return {c["id"]: c["label"] for c in json.loads(path.read_text(encoding="utf-8"))["classes"]}


def _samples(shard: Path):
    """(jpeg bytes, class id) per sample, in shard order."""
    current_key, jpeg, class_id = None, None, None
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if key != current_key:
                if jpeg is not None and class_id is not None:
                    yield jpeg, class_id
                current_key, jpeg, class_id = key, None, None
            if extension == "jpg":
                jpeg = tar.extractfile(member).read()
            elif extension == "cls":
                class_id = int(tar.extractfile(member).read())
    if jpeg is not None and class_id is not None:
        yield jpeg, class_id
