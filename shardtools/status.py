"""What a dataset directory holds, for people (`status DIR`) and scripts (`status DIR --json`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .dataset import LEDGER, read_manifest


def dataset_status(dataset_dir: str | Path) -> dict:
    """Counts from the manifest and the ledger. Keys `splits`, `classes`, `pending` and
    `rejected` are a stable interface for scripts."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    pending = Counter()
    rejected = Counter()
    ledger = dataset_dir / LEDGER
    if ledger.exists():
        with open(ledger, "rb") as stream:
            for raw in stream:
                row = json.loads(raw)
                if row["status"] == "pending":
                    pending[row["reason"]] += 1
                elif row["status"] == "rejected":
                    rejected[row["reason"]] += 1
    return {
        "dataset": str(dataset_dir),
        "format_version": manifest["format_version"],
        "splits": {
            name: {"samples": entry["num_samples"], "shards": len(entry["shards"]),
                   "bytes": entry["num_bytes"]}
            for name, entry in manifest["splits"].items()
        },
        "classes": manifest["num_classes"],
        "pending": sum(pending.values()),
        "rejected": sum(rejected.values()),
        "pending_by_reason": dict(pending.most_common()),
        "rejected_by_reason": dict(rejected.most_common()),
        "builds": len(manifest["builds"]),
        "history": manifest["builds"],
    }


def format_status(status: dict) -> str:
    lines = [f"dataset {status['dataset']} (format {status['format_version']}, "
             f"{status['builds']} builds, {status['classes']} classes)"]
    for name, split in status["splits"].items():
        lines.append(f"  {name:<6} {split['samples']:>9,} samples in {split['shards']:>5} shards "
                     f"({split['bytes'] / 1e6:,.1f} MB)")
    lines.append(f"  pending  {status['pending']:,} records" + _reasons(status["pending_by_reason"]))
    lines.append(f"  rejected {status['rejected']:,} records" + _reasons(status["rejected_by_reason"]))
    if status["pending"]:
        lines.append("  pending records are tried again by the next build")
    return "\n".join(lines)


def _reasons(by_reason: dict) -> str:
    if not by_reason:
        return ""
    return ": " + ", ".join(f"{reason} {count:,}" for reason, count in by_reason.items())
