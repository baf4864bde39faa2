"""The built-in demo runs end to end: rate-limited first build, append, training."""

from __future__ import annotations

import json

from shardtools.demo.run import run_demo


def test_demo_runs_end_to_end(tmp_path):
    lines = []
    assert run_demo(tmp_path / "demo", train_steps=3, log=lines.append) == 0
    text = "\n".join(lines)
    assert "pending" in text and "val accuracy" in text
    manifest = json.loads((tmp_path / "demo" / "dataset" / "manifest.json").read_text())
    assert [b["build"] for b in manifest["builds"]] == [1, 2]
    assert manifest["builds"][0]["pending"] > 0 and manifest["builds"][1]["pending"] == 0
    assert manifest["builds"][1]["new_shards"]
    ledger = [json.loads(x) for x in (tmp_path / "demo" / "dataset" / "ledger.jsonl").read_text().splitlines()]
    reasons = {r.get("reason") for r in ledger if r["status"] == "rejected"}
    assert {"invalid_record", "blank", "not_an_image", "http_404"} <= reasons
