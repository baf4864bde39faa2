"""One writer: two builds started on one directory, as real processes."""

from __future__ import annotations

import threading
import time

import pytest

from shardtools.cache import ImageCache
from shardtools.imagehost import ImageHost, Reply
from shardtools.verify import verify_dataset

from .helpers import (BUILD_TIMEOUT_S, photo_variants, run_build, samples_on_disk,
                      start_build, write_config, write_jsonl)

EXIT_LOCKED = 6


def _world(tmp_path, host: ImageHost, gate: threading.Event):
    """Records whose last image the host holds back until `gate` is set, so the first
    build is certainly inside its lock when the second starts."""
    photos = photo_variants(5, seed=21, max_side=64)
    cache = ImageCache(tmp_path / "cache")
    rows = []
    for i, data in enumerate(photos[:4]):
        url = host.url(f"/cached/{i}.jpg")
        cache.store(url, data)
        rows.append({"image_url": url, "taxon_id": i, "observation_id": str(i)})
    host.add("/held.jpg", photos[4])
    host.script("/held.jpg", Reply().held(gate))
    rows.append({"image_url": host.url("/held.jpg"), "taxon_id": 0, "observation_id": "h"})
    write_jsonl(tmp_path / "records.jsonl", rows)
    # A long socket timeout: the held request must outlast the second build.
    return write_config(tmp_path, tmp_path / "records.jsonl", tmp_path / "cache",
                        tmp_path / "dataset", fetch={"timeout_s": 60, "threads": 1})


def _wait_for_request(host: ImageHost, build) -> None:
    deadline = time.monotonic() + BUILD_TIMEOUT_S  # a bound against hanging, not a pace
    while not host.wait_for_requests(1, timeout_s=0.2):
        assert build.poll() is None, build.communicate()
        if time.monotonic() >= deadline:  # a bounded wait, not a speed check
            pytest.fail("the first build never reached the host")


def test_second_build_stops_with_the_lock_message_and_the_first_finishes(tmp_path):
    gate = threading.Event()
    with ImageHost() as host:
        config = _world(tmp_path, host, gate)
        first = start_build(config)
        try:
            _wait_for_request(host, first)
            second = run_build(config)
            assert second.returncode == EXIT_LOCKED
            assert f"is being built by pid {first.pid} on" in second.stderr
            assert "only one build may write a dataset at a time" in second.stderr
        finally:
            gate.set()
            out, err = first.communicate(timeout=BUILD_TIMEOUT_S)
    assert first.returncode == 0, err
    assert len(samples_on_disk(tmp_path / "dataset")) == 5
    assert (tmp_path / "dataset" / ".lock").read_text() == ""  # released on the way out


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(tmp_path):
    gate = threading.Event()
    with ImageHost() as host:
        config = _world(tmp_path, host, gate)
        first = start_build(config)
        _wait_for_request(host, first)
        first.kill()  # SIGKILL while it holds the lock
        first.communicate(timeout=BUILD_TIMEOUT_S)
        gate.set()
        assert f"pid {first.pid} on" in (tmp_path / "dataset" / ".lock").read_text()
        if (tmp_path / "dataset" / "manifest.json").exists():
            report = verify_dataset(tmp_path / "dataset")
            assert report.ok and "killed or crashed" in report.unfinished_build

        second = run_build(config)
    assert second.returncode == 0, second.stderr
    assert f"taking over the lock of pid {first.pid} on" in second.stderr
    assert len(samples_on_disk(tmp_path / "dataset")) == 5
    final = verify_dataset(tmp_path / "dataset")
    assert final.ok and final.unfinished_build is None


def test_two_builds_started_at_once_one_runs_one_is_refused(tmp_path):
    gate = threading.Event()
    with ImageHost() as host:
        config = _world(tmp_path, host, gate)
        builds = [start_build(config), start_build(config)]
        try:
            # The winner cannot end before the gate opens; so the first to end is the loser.
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while all(b.poll() is None for b in builds):
                if time.monotonic() >= deadline:  # a bounded wait, not a speed check
                    pytest.fail("neither build ended")
                host.wait_for_requests(1, timeout_s=0.05)
            loser = next(b for b in builds if b.poll() is not None)
            winner = next(b for b in builds if b is not loser)
            _, err = loser.communicate(timeout=BUILD_TIMEOUT_S)
            assert loser.returncode == EXIT_LOCKED, err
            assert f"is being built by pid {winner.pid} on" in err or \
                "is being built by another process" in err  # it had not written its name yet
        finally:
            gate.set()
            ends = [b.communicate(timeout=BUILD_TIMEOUT_S) for b in builds]
    assert winner.returncode == 0, ends[builds.index(winner)][1]
    assert len(samples_on_disk(tmp_path / "dataset")) == 5
