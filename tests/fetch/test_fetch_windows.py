"""Cache-only windows: their length, that they hold, the single probe, the way back."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest

from shardtools.imagehost import Reply


def _throttled_once(host, jpeg, retry_after, path="/a.jpg"):
    """`path` answers 429 (with `retry_after`) once, then the image."""
    host.add(path, jpeg)
    host.script(path, Reply.too_many_requests(retry_after))
    return host.url(path)


def test_retry_after_seconds_sets_the_window(host, jpeg, fetcher, one_host):
    """429 with Retry-After: 120 -> that record pending, the host cache-only 120 s."""
    url = _throttled_once(host, jpeg, 120)
    result = fetcher.fetch(url)
    assert (result.outcome, result.reason) == ("pending", "rate_limited")
    assert result.http_status == 429
    report = one_host(fetcher)
    assert report["in_window"] and report["window_remaining_s"] == pytest.approx(120)
    assert fetcher.next_probe_in() == pytest.approx(120)


def test_retry_after_http_date_is_read_in_utc_under_another_time_zone(
        host, jpeg, fetcher, one_host, clock, time_zone):
    """An HTTP-date Retry-After gives the same window whatever the process's TZ."""
    time_zone("XXX-05:45")  # local time 5 h 45 min ahead of UTC
    url = _throttled_once(host, jpeg, formatdate(clock.time() + 90, usegmt=True))
    fetcher.fetch(url)
    assert one_host(fetcher)["window_remaining_s"] == pytest.approx(90)

    clock.advance(89)
    assert fetcher.fetch(url).reason == "host_cache_only"
    clock.advance(1)
    assert fetcher.fetch(url).ok
    assert host.count("/a.jpg") == 2


def test_retry_after_in_the_past_lets_the_probe_go_at_once(
        host, jpeg, fetcher, one_host, clock):
    """A past HTTP-date means a zero window: the next request is the probe."""
    url = _throttled_once(host, jpeg, formatdate(clock.time() - 3600, usegmt=True))
    fetcher.fetch(url)
    assert one_host(fetcher)["window_remaining_s"] == 0.0
    assert fetcher.next_probe_in() == 0.0
    assert fetcher.fetch(url).ok
    assert host.count("/a.jpg") == 2


@pytest.mark.parametrize("garbage", ["soon", "1m0s", "-5", "NaN", "9" * 40])
def test_unusable_retry_after_falls_back_to_the_schedule(host, jpeg, fetcher, one_host,
                                                         garbage):
    """A Retry-After that cannot be read gives the first step of backoff_schedule_s."""
    fetcher.fetch(_throttled_once(host, jpeg, garbage))
    assert one_host(fetcher)["window_remaining_s"] == pytest.approx(60)


def test_huge_retry_after_is_capped_at_max_backoff(host, jpeg, fetcher, one_host):
    """No window is longer than max_backoff_s, whatever the host asks."""
    fetcher.fetch(_throttled_once(host, jpeg, 99_999_999))
    assert one_host(fetcher)["window_remaining_s"] == pytest.approx(600)


def test_429_without_retry_after_walks_the_schedule_then_resets(host, jpeg, fetcher,
                                                                one_host, clock):
    """Windows follow 60, 120, 300, 600, 600 (last step repeating); an answered probe
    resets the schedule, so the next 429 waits 60 s again."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", *[Reply.too_many_requests(None)] * 5)
    url = host.url("/a.jpg")

    windows = []
    for _ in range(5):
        assert fetcher.fetch(url).reason == "rate_limited"
        windows.append(one_host(fetcher)["window_remaining_s"])
        clock.advance(windows[-1])
    assert windows == [60, 120, 300, 600, 600]

    assert fetcher.fetch(url).ok  # the probe
    host.script("/a.jpg", Reply.too_many_requests(None))
    fetcher.fetch(url)
    assert one_host(fetcher)["window_remaining_s"] == pytest.approx(60)


def test_no_request_reaches_the_host_during_its_window(host, jpeg, fetcher, clock):
    """Until the window ends every record of that host is pending, and none is sent."""
    url = _throttled_once(host, jpeg, 300)
    for i in range(20):
        host.add(f"/other/{i}.jpg", jpeg)
    fetcher.fetch(url)
    clock.advance(299)

    results = [fetcher.fetch(host.url(f"/other/{i}.jpg")) for i in range(20)]
    assert {(r.outcome, r.reason) for r in results} == {("pending", "host_cache_only")}
    assert host.total_requests == 1
    assert fetcher.counters()["rate_limited_skips"] == 20


def test_after_the_window_one_probe_goes_while_every_other_thread_is_told_pending(
        host, jpeg, make_fetcher, clock):
    """When the window ends, exactly one request reaches the host; 15 threads asking
    meanwhile get pending at once instead of queueing behind it."""
    fetcher = make_fetcher(probe_poll_s=7.0)
    gate = threading.Event()
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(60), Reply().held(gate))
    for i in range(15):
        host.add(f"/b/{i}.jpg", jpeg)
    fetcher.fetch(host.url("/a.jpg"))
    clock.advance(60)

    with ThreadPoolExecutor(16) as pool:
        probe = pool.submit(fetcher.fetch, host.url("/a.jpg"))
        assert host.wait_for_requests(2)
        others = list(pool.map(fetcher.fetch,
                               [host.url(f"/b/{i}.jpg") for i in range(15)]))
        assert host.total_requests == 2
        assert fetcher.next_probe_in() == 7.0  # probe_poll_s: no answer to foresee
        gate.set()
        assert probe.result(timeout=10).ok

    assert {r.reason for r in others} == {"host_cache_only"}
    assert fetcher.next_probe_in() is None
    assert fetcher.fetch(host.url("/b/0.jpg")).ok  # the host is open again


def test_the_probes_429_opens_the_next_window(host, jpeg, fetcher, one_host, clock):
    """A probe that draws 429 sends the host straight back to cache-only."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(60), Reply.too_many_requests(30))
    fetcher.fetch(host.url("/a.jpg"))
    clock.advance(60)
    assert fetcher.fetch(host.url("/a.jpg")).reason == "rate_limited"
    report = one_host(fetcher)
    assert report["in_window"] and report["window_remaining_s"] == pytest.approx(30)
    assert report["windows"] == 2


def test_503_with_retry_after_is_a_throttle_too(host, jpeg, fetcher, one_host):
    """503 carrying Retry-After opens a window like 429, and is not retried."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.unavailable(45))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason) == ("pending", "rate_limited")
    assert result.http_status == 503
    assert one_host(fetcher)["window_remaining_s"] == pytest.approx(45)
    assert host.total_requests == 1


def test_answers_in_flight_when_the_window_opened_do_not_extend_it(host, jpeg, fetcher,
                                                                    one_host):
    """Only the first 429 of a burst opens a window; later ones for requests sent
    before it are counted, not treated as new windows."""
    gates = [threading.Event() for _ in range(3)]
    for i, gate in enumerate(gates):
        host.add(f"/{i}.jpg", jpeg)
        host.script(f"/{i}.jpg", Reply.too_many_requests(None).held(gate))
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for i in range(3):
            futures.append(pool.submit(fetcher.fetch, host.url(f"/{i}.jpg")))
            assert host.wait_for_requests(i + 1)
        for gate in gates:
            gate.set()
        results = [future.result(timeout=10) for future in futures]
    assert {r.reason for r in results} == {"rate_limited"}
    report = one_host(fetcher)
    assert report["windows"] == 1 and report["http_429"] == 3
    assert report["window_remaining_s"] == pytest.approx(60)
    assert fetcher.counters()["http_429"] == 3


def test_one_warning_when_a_window_opens_and_one_line_when_it_closes(
        host, jpeg, fetcher, clock, caplog):
    """Entering: one WARNING naming the host, the length, why, pending and the probe.
    Leaving: one INFO line saying downloads resume."""
    url = _throttled_once(host, jpeg, 120)
    with caplog.at_level(logging.INFO, logger="shardtools.fetch"):
        fetcher.fetch(url)
        clock.advance(120)
        fetcher.fetch(url)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name.startswith("shardtools.fetch") and r.levelno >= logging.INFO]
    assert len(lines) == 2
    (entering_level, entering), (leaving_level, leaving) = lines
    assert entering_level == logging.WARNING
    for part in (host.base_url, "120 s", "Retry-After '120'", "pending", "probe"):
        assert part in entering
    assert leaving_level == logging.INFO
    assert host.base_url in leaving and "resume" in leaving
