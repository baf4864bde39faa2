"""The class index: label text -> class id, stable for the life of a dataset.

Ids are never changed or reused. Labels first seen in a build get the next ids, in a
sorted order (numbers numerically), so the index does not depend on download timing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_json_atomic
from .errors import DatasetError

FORMAT_VERSION = 1


class ClassIndex:
    def __init__(self, labels: list[str] | None = None):
        self._labels: list[str] = list(labels or [])
        self._ids = {label: i for i, label in enumerate(self._labels)}

    @classmethod
    def load(cls, path: Path) -> "ClassIndex":
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = sorted(data["classes"], key=lambda e: e["id"])
            labels = [e["label"] for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: class index unreadable ({exc})") from exc
        if [e["id"] for e in entries] != list(range(len(labels))):
            raise DatasetError(f"{path}: class ids must be 0..N-1 without gaps")
        return cls(labels)

    def save(self, path: Path) -> None:
        write_json_atomic(path, {
            "format_version": FORMAT_VERSION,
            "num_classes": len(self._labels),
            "classes": [{"id": i, "label": label} for i, label in enumerate(self._labels)],
        })

    def add_new(self, labels) -> list[str]:
        """Give ids to the labels not yet known; returns those added."""
        new = sorted({label for label in labels if label not in self._ids}, key=_label_order)
        for label in new:
            self._ids[label] = len(self._labels)
            self._labels.append(label)
        return new

    def id_of(self, label: str) -> int:
        return self._ids[label]

    def label_of(self, class_id: int) -> str:
        return self._labels[class_id]

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: str) -> bool:
        return label in self._ids


def _label_order(label: str):
    # Numbers numerically ("9" before "10"), ties ("7", "07") and all else by text, so the
    # order never depends on set iteration. isascii: "²".isdigit() is true, int("²") fails.
    digits = label[1:] if label.startswith("-") else label
    if digits.isascii() and digits.isdigit():
        return (0, int(label), label)
    return (1, 0, label)
