"""What a dataset directory holds, for people (`status DIR`) and scripts (`status DIR --json`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .classes import ClassIndex
from .dataset import CLASSES, LEDGER, iter_ledger, lock_holder, read_manifest

# Human output names this many thin classes per split; --json has them all.
_FEW_SHOWN = 10


def dataset_status(dataset_dir: str | Path, few: int = 5) -> dict:
    """Counts from the manifest and the ledger. Keys `splits`, `classes`, `pending` and
    `rejected` are a stable interface for scripts. `few_samples` lists, per split, the
    classes with fewer than `few` samples there (none at all included)."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    pending = Counter()
    rejected = Counter()
    notes = Counter()
    ledger = dataset_dir / LEDGER
    if ledger.exists():
        for _, row in iter_ledger(ledger):
            if row["status"] == "pending":
                pending[row.get("reason")] += 1
            elif row["status"] == "rejected":
                rejected[row.get("reason")] += 1
            if row.get("label_conflict"):
                notes["label_conflicts"] += 1
            if row.get("note") == "duplicate_content":
                notes["duplicate_content"] += 1
    holder = lock_holder(dataset_dir)
    unfinished = [b["build"] for b in manifest["builds"] if b.get("status") == "running"]
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
        "label_conflicts": notes["label_conflicts"],
        "duplicate_content": notes["duplicate_content"],
        "few_samples_threshold": few,
        "few_samples": _few_samples(dataset_dir, manifest, few),
        "builds": len(manifest["builds"]),
        "history": manifest["builds"],
        "unfinished_build": {
            "lock": holder[0] if holder else None,
            "lock_state": holder[1] if holder else None,
            "running_in_history": unfinished,
        } if holder or unfinished else None,
    }


def _few_samples(dataset_dir: Path, manifest: dict, few: int) -> dict[str, list[dict]]:
    classes = ClassIndex.load(dataset_dir / CLASSES)
    out = {}
    for split, counts in manifest["class_counts"].items():
        if not manifest["splits"].get(split, {}).get("num_samples"):
            continue  # an empty split (say a fraction of 0) has nothing to report
        thin = [{"id": i, "label": classes.label_of(i), "samples": counts.get(str(i), 0)}
                for i in range(len(classes)) if counts.get(str(i), 0) < few]
        out[split] = sorted(thin, key=lambda x: (x["samples"], x["id"]))
    return out


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
    if status.get("label_conflicts"):
        lines.append(f"  {status['label_conflicts']:,} records disagree on the label with the "
                     "sample they belong to (ledger: label_conflict)")
    if status.get("duplicate_content"):
        lines.append(f"  {status['duplicate_content']:,} records have the bytes of another "
                     "sample and are kept once (ledger note: duplicate_content)")
    threshold = status.get("few_samples_threshold")
    for split, thin in status.get("few_samples", {}).items():
        if not thin:
            continue
        shown = ", ".join(f"{c['label']} ({c['samples']})" for c in thin[:_FEW_SHOWN])
        more = f", and {len(thin) - _FEW_SHOWN:,} more" if len(thin) > _FEW_SHOWN else ""
        lines.append(f"  {split}: {len(thin):,} classes with fewer than {threshold} samples: "
                     f"{shown}{more}")
    unfinished = status.get("unfinished_build")
    if unfinished:
        who = unfinished["lock"] or "a build"
        state = unfinished["lock_state"] or "the history says running"
        lines.append(f"  unfinished build: {who} ({state}); run the build again to finish it")
    if status["history"]:
        lines.append("  history:")
        for entry in status["history"]:
            lines.append("    " + _history_line(entry))
    return "\n".join(lines)


def _history_line(entry: dict) -> str:
    state = entry.get("status", "complete")
    line = f"build {entry['build']} {entry.get('started', '?')} {state}"
    if state == "complete":
        line += (f" {entry.get('finished', '?')}: {entry.get('records', 0):,} records, "
                 f"{entry.get('new_samples', 0):,} new samples in "
                 f"{len(entry.get('new_shards', [])):,} shards, {entry.get('pending', 0):,} "
                 f"pending, {entry.get('rejected', 0):,} rejected")
    else:
        line += f": {len(entry.get('new_shards', [])):,} shards listed before it stopped"
    if entry.get("resumed"):
        line += " (finished build " + ", ".join(map(str, entry["resumed"])) + ")"
    return line


def _reasons(by_reason: dict) -> str:
    if not by_reason:
        return ""
    return ": " + ", ".join(f"{reason} {count:,}" for reason, count in by_reason.items())
