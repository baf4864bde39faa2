"""Descriptions of the dataset for other readers than our loader.

`<split>.wids.json` beside the manifest is a shard index in the format of the `wids`
package (indexed, random-access reading of WebDataset shards):

    wids.ShardListDataset("dataset/train.wids.json")

Shard URLs in it are relative to the index file, so the dataset directory can be moved or
served as a whole. It is rewritten at the end of every build that changes the dataset.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import write_json_atomic

WIDS_SUFFIX = ".wids.json"


def write_wids_indexes(dataset_dir: Path, manifest: dict) -> list[Path]:
    written = []
    for split, entry in manifest["splits"].items():
        if not entry["shards"]:
            continue
        path = dataset_dir / f"{split}{WIDS_SUFFIX}"
        write_json_atomic(path, {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": split,
            "shardlist": [{"url": shard["name"], "nsamples": shard["num_samples"],
                           "filesize": shard["num_bytes"]} for shard in entry["shards"]],
        })
        written.append(path)
    return written
