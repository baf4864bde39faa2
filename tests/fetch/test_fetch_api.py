"""The Fetcher's surface: User-Agent, counters, reports, lifetime."""

from __future__ import annotations

import threading

from shardtools.fetch import Fetcher
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
