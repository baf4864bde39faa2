"""Collapse records into samples: one sample per URL, whatever the number of records.

Label rule: the first record of a URL, in input order (files in config order, lines in
file order), sets the sample's label. A later record that names another label is kept in
the ledger as a duplicate with a `label_conflict` note and counted in the summary. Input
order only grows at the end when records are appended, so the rule never changes a label
already written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cache import url_key
from .records import Record


@dataclass
class Sample:
    key: str
    url: str
    label: str
    group_key: str
    first: Record
    duplicates: list[Record] = field(default_factory=list)
    conflicting: list[Record] = field(default_factory=list)  # duplicates with another label
    split: str | None = None
    class_id: int | None = None

    @property
    def records(self) -> list[Record]:
        return [self.first, *self.duplicates]


def collapse(records) -> dict[str, Sample]:
    """Map sample key -> Sample, in first-appearance order (dicts keep insertion order)."""
    samples: dict[str, Sample] = {}
    for record in records:
        key = url_key(record.url)
        sample = samples.get(key)
        if sample is None:
            # Prefixed so a group value can never collide with a URL used as a group.
            group_key = f"group:{record.group}" if record.group is not None else f"url:{record.url}"
            samples[key] = Sample(key, record.url, record.label, group_key, record)
            continue
        sample.duplicates.append(record)
        if record.label != sample.label:
            sample.conflicting.append(record)
    return samples
