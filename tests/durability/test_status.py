"""`shardtools status`: pending and rejected by reason, thin classes, build history."""

from __future__ import annotations

import json
import subprocess

from shardtools.build import run_build
from shardtools.cache import ImageCache
from shardtools.fetch import ManualClock
from shardtools.imagehost import Reply
from shardtools.status import dataset_status, format_status

from .helpers import BUILD_TIMEOUT_S, build_env, builders, cli, photo_variants, write_jsonl


def test_status_reports_reasons_thin_classes_and_history(tmp_path, image_host):
    photos = photo_variants(14, seed=51, max_side=64)
    cache = ImageCache(tmp_path / "cache")
    rows = []
    for i, data in enumerate(photos[:12]):
        url = image_host.url(f"/c/{i}.jpg")
        cache.store(url, data)
        rows.append({"image_url": url, "taxon_id": "common" if i < 10 else "rare",
                     "observation_id": str(i)})
    image_host.add("/busy.jpg", photos[12])
    image_host.script("/busy.jpg", Reply(500, b"busy", "text/plain"))
    image_host.answer("/page.jpg", Reply.html())
    for name in ("busy", "page", "gone"):  # pending once, not an image, 404
        rows.append({"image_url": image_host.url(f"/{name}.jpg"), "taxon_id": "rare",
                     "observation_id": name})
    write_jsonl(tmp_path / "records.jsonl", rows)
    settings = builders.build_settings(tmp_path, splits={"train": 1.0},
                                       fetch={"max_retries": 0, "threads": 1})
    run_build(settings, clock=ManualClock())
    run_build(settings, clock=ManualClock())  # busy.jpg answers now

    dataset = tmp_path / "dataset"
    status = dataset_status(dataset, few=5)
    assert status["pending"] == 0
    assert status["rejected_by_reason"] == {"not_an_image": 1, "http_404": 1}
    assert status["few_samples"] == {"train": [{"id": 1, "label": "rare", "samples": 3}]}
    assert dataset_status(dataset, few=20)["few_samples"]["train"][-1]["label"] == "common"
    assert [(b["build"], b["status"], b["pending"]) for b in status["history"]] == \
        [(1, "complete", 1), (2, "complete", 0)]
    text = format_status(status)
    assert "train: 1 classes with fewer than 5 samples: rare (3)" in text
    assert "rejected 2 records: " in text and "http_404 1" in text and "not_an_image 1" in text
    assert "build 1 " in text and "build 2 " in text

    done = subprocess.run(cli("status", dataset, "--json", "--few", "4"), capture_output=True,
                          text=True, env=build_env(), timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["few_samples"] == \
        {"train": [{"id": 1, "label": "rare", "samples": 3}]}


def test_status_shows_pending_by_reason_and_an_unfinished_build(tmp_path, image_host):
    image_host.add("/a.jpg", photo_variants(1, seed=52, max_side=64)[0])
    image_host.script("/a.jpg", Reply(500, b"busy", "text/plain"))
    write_jsonl(tmp_path / "records.jsonl",
                [{"image_url": image_host.url("/a.jpg"), "taxon_id": 1, "observation_id": "a"}])
    run_build(builders.build_settings(tmp_path, fetch={"max_retries": 0}), clock=ManualClock())
    dataset = tmp_path / "dataset"
    (dataset / ".lock").write_text("pid 999999999 on some-other-host since 2026-01-01 00:00:00\n")
    status = dataset_status(dataset)
    assert status["pending_by_reason"] == {"server_error": 1}
    assert status["unfinished_build"]["lock"].startswith("pid 999999999 on some-other-host")
    text = format_status(status)
    assert "pending  1 records: server_error 1" in text
    assert "unfinished build: pid 999999999" in text
