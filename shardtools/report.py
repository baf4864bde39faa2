"""The short summary printed at the end of a build, in words a user can act on."""

from __future__ import annotations

from .build import BuildSummary


def format_summary(summary: BuildSummary) -> str:
    s = summary
    lines = [f"build of {s.dataset_dir}: {s.records:,} records, {s.samples:,} distinct URLs "
             f"in {s.wall_s:.1f} s"]
    if s.resumed_builds:
        ids = ", ".join(str(b) for b in s.resumed_builds)
        lines.append(f"  resumed after interrupted build {ids}: its listed shards were kept"
                     + (f", {len(s.removed_leftovers)} unfinished files removed"
                        if s.removed_leftovers else ""))
    if s.damaged_shards:
        lines.append(f"  {len(s.damaged_shards):,} listed shards are missing or cut (e.g. "
                     f"{s.damaged_shards[0]}): their samples are lost to the loader; run "
                     "`shardtools verify` and restore them from a backup")
    if not s.changed:
        lines.append("  nothing new to write; the dataset is unchanged")
    else:
        per_split = ", ".join(f"{name} {count:,}" for name, count in sorted(s.written_by_split.items()))
        lines.append(f"  wrote {s.new_samples:,} new samples ({per_split or 'none'}) into "
                     f"{len(s.new_shards)} new shards; {s.already_written:,} were already written")
        lines.append(f"  images: {s.from_cache:,} from the cache, {s.downloaded:,} downloaded")
    if s.new_classes:
        lines.append(f"  {s.new_classes:,} new classes")
    if s.label_conflicts:
        lines.append(f"  {s.label_conflicts:,} records disagree with the first record of their URL "
                     "on the label; the first record's label is kept (see ledger: label_conflict)")
    if s.duplicate_content:
        lines.append(f"  {s.duplicate_content:,} URLs return bytes identical to another sample; "
                     "kept once (ledger note: duplicate_content)")
    if s.duplicate_label_conflicts:
        lines.append(f"  {s.duplicate_label_conflicts:,} of those have another label than the "
                     "sample they duplicate; its label is kept (ledger: label_conflict)")
    if s.suspected_placeholders:
        worst = max(s.suspected_placeholders.values())
        lines.append(f"  {len(s.suspected_placeholders):,} images each come from 5 or more "
                     f"different URLs (up to {worst:,}): suspected placeholders, see the "
                     "warnings and the ledger (note: duplicate_content)")
    if s.pending_records:
        lines.append(f"  pending: {s.pending_records:,} records ({_reasons(s.pending_by_reason)}); "
                     "run the build again later to fetch them")
    if s.rejected_records:
        lines.append(f"  rejected: {s.rejected_records:,} records ({_reasons(s.rejected_by_reason)})")
    if s.cache_created:
        lines.append("  the cache folder did not exist and was created: no image could come "
                     "from a cache (is build.cache_dir right?)")
    if s.cache_errors:
        lines.append(f"  {s.cache_errors:,} cache files could not be read or written (see the "
                     "warnings); their images were downloaded or written all the same")
    if s.splits:
        lines.append("")
        lines.append(f"  {'split':<10} {'new samples':>11} {'new shards':>10} {'samples':>9} {'shards':>7}")
        for name, split in s.splits.items():
            lines.append(f"  {name:<10} {split['new_samples']:>11,} {split['new_shards']:>10,} "
                         f"{split['samples']:>9,} {split['shards']:>7,}")
    if s.hosts:
        lines.append("")
        lines.append(f"  {'host':<40} {'requests':>8} {'429s':>6} {'windows':>7}")
        for host, report in s.hosts.items():
            lines.append(f"  {host[:40]:<40} {report.get('requests', 0):>8,} "
                         f"{report.get('http_429', 0):>6,} {report.get('windows', 0):>7,}")
    lines.append("")
    lines.append(f"  wall time {s.wall_s:.1f} s, {s.samples_per_s:,.0f} samples/s resolved")
    if s.stats_file:
        lines.append(f"  counters: {s.stats_file}")
    return "\n".join(lines)


def _reasons(by_reason: dict) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(by_reason.items()))
