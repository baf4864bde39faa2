"""The Fetcher's surface: User-Agent, counters, reports, lifetime."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from shardtools.errors import ConfigError
from shardtools.fetch import Fetcher
from shardtools.fetch.fetcher import MAX_THREADS, PENDING_REASONS, REJECTED_REASONS
from shardtools.imagehost import Reply
from shardtools.settings import FetchSettings


def test_the_user_agent_carries_the_contact(host, jpeg, make_fetcher):
    """A host's operator can see who to write to: "agent (+contact)"."""
    host.add("/a.jpg", jpeg)
    make_fetcher(contact="ops@example.org").fetch(host.url("/a.jpg"))
    make_fetcher().fetch(host.url("/a.jpg"))
    agents = [seen.headers.get("User-Agent") for seen in host.requests()]
    assert agents == ["shardtools/0.1 (+ops@example.org)", "shardtools/0.1"]


def test_counters_add_up_to_the_calls(host, jpeg, fetcher):
    """downloaded + failed + invalid + rate_limited_skips = number of fetch calls."""
    host.add("/ok.jpg", jpeg)
    host.answer("/page", Reply.html())
    host.answer("/gone", Reply(410))
    host.add("/busy.jpg", jpeg)
    host.script("/busy.jpg", Reply.too_many_requests(60))
    urls = ["/ok.jpg", "/page", "/gone", "/busy.jpg", "/ok.jpg", "/ok.jpg"]
    for path in urls:
        fetcher.fetch(host.url(path))
    fetcher.fetch("ftp://127.0.0.1/x.jpg")

    counters = fetcher.counters()
    assert counters == {"downloaded": 1, "failed": 3, "invalid": 1,
                        "rate_limited_skips": 2, "http_429": 1, "retries": 0,
                        "bytes": counters["bytes"]}
    assert sum(counters[k] for k in ("downloaded", "failed", "invalid",
                                     "rate_limited_skips")) == len(urls) + 1


def test_host_report_lists_each_host_with_its_state(host, jpeg, fetcher):
    """Per host: requests, http_429, in_window, window_remaining_s, current_rate."""
    host.add("/a.jpg", jpeg)
    fetcher.fetch(host.url("/a.jpg"))
    report = fetcher.host_report()
    assert set(report) == {host.base_url}
    assert report[host.base_url] == {
        "requests": 1, "http_429": 0, "in_window": False, "window_remaining_s": 0.0,
        "current_rate": 5.0, "probing": False, "windows": 0}
    assert fetcher.next_probe_in() is None


def test_the_context_manager_closes_every_connection(host, jpeg, clock):
    """After `with Fetcher(...)`, no pooled socket is left open (filterwarnings=error
    would flag a leak), and threads share one session meanwhile."""
    host.add("/a.jpg", jpeg)
    settings = FetchSettings(requests_per_second=1000, burst=100)
    with Fetcher(settings, clock=clock) as fetcher:
        threads = [threading.Thread(target=fetcher.fetch, args=(host.url("/a.jpg"),))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert host.count("/a.jpg") == 8
    assert fetcher._session.adapters["http://"].poolmanager.pools.keys() == set()


@pytest.mark.parametrize("threads", [100_000_000_000, 1025, 0, -1, 16.5, True])
def test_absurd_thread_counts_are_refused(threads):
    """The Fetcher sizes its pool by `threads`: past MAX_THREADS (or under 1) it
    refuses, naming the key as the config does, before allocating anything."""
    with pytest.raises(ConfigError) as caught:
        Fetcher(FetchSettings(threads=threads))
    assert caught.value.key == "build.fetch.threads"


def test_the_largest_thread_count_is_accepted(clock):
    with Fetcher(FetchSettings(threads=MAX_THREADS), clock=clock):
        pass


@pytest.mark.parametrize("key, value", [
    ("requests_per_second", 0), ("requests_per_second", float("nan")),
    ("burst", 0), ("timeout_s", 0), ("image_deadline_s", float("inf")),
    ("backoff_schedule_s", ()), ("backoff_schedule_s", (60.0, -1.0)),
    ("rate_decrease", 1.5), ("max_bytes", 0), ("max_retries", -1),
    ("max_redirects", -1), ("ramp_successes", 0), ("probe_poll_s", 0),
    ("bytes_per_hour", -1), ("max_backoff_s", 0), ("retry_base_s", -1.0),
])
def test_every_setting_refused_is_named_under_build_fetch(key, value):
    """The keys match the config file's: build.fetch.<name>."""
    with pytest.raises(ConfigError) as caught:
        Fetcher(FetchSettings(**{key: value}))
    assert caught.value.key == f"build.fetch.{key}"


def test_every_reason_code_is_in_the_docs_table():
    """docs/fetching.md's reason table lists every code the fetcher can give."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "fetching.md"
    rows = [line for line in docs.read_text(encoding="utf-8").splitlines()
            if line.startswith(("| pending |", "| rejected |"))]
    documented = {(row.split("|")[1].strip(), code)
                  for row in rows for code in re.findall(r"`([a-z0-9_<>]+)`",
                                                        row.split("|")[2])}
    expected = ({("pending", code) for code in PENDING_REASONS}
                | {("rejected", code) for code in REJECTED_REASONS}
                | {("rejected", "http_204"), ("rejected", "http_205"),
                   ("rejected", "http_<code>")})
    assert expected <= documented
