"""The proactive ceiling: one token bucket per host, shared by every thread."""

from __future__ import annotations

import gzip
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shardtools.fetch import ManualClock
from shardtools.fetch.host import HostState
from shardtools.imagehost import ImageHost, Reply
from shardtools.settings import FetchSettings


def test_sixteen_threads_stay_under_the_hosts_ceiling(host, jpeg, make_fetcher, clock):
    """However many threads fetch, the host sees at most burst + rate * virtual_s requests
    (virtual_s in virtual time); each thread sleeps on the one shared bucket."""
    fetcher = make_fetcher(requests_per_second=5.0, burst=2)
    urls = []
    for i in range(128):
        host.add(f"/{i}.jpg", jpeg)
        urls.append(host.url(f"/{i}.jpg"))
    start = clock.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(fetcher.fetch, urls))
    virtual_s = clock.monotonic() - start

    assert all(r.ok for r in results)
    assert host.total_requests == 128
    assert host.total_requests <= 2 + 5.0 * virtual_s + 1e-6


def test_grants_from_many_threads_never_exceed_the_bucket():
    """The bucket's grant times, taken by 16 threads at once, fit burst + rate * span in
    every stretch of time."""
    clock = ManualClock()
    rate, burst = 4.0, 3
    settings = FetchSettings(requests_per_second=rate, burst=burst)
    state = HostState("http://h:80", settings, clock)
    grants, lock = [], threading.Lock()

    def take(count):
        for _ in range(count):
            ticket = state.admit()
            assert state.confirm(ticket)
            state.answered(ticket)
            with lock:
                grants.append(ticket.not_before)

    threads = [threading.Thread(target=take, args=(20,)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    grants.sort()
    assert len(grants) == 320
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            assert j - i + 1 <= burst + rate * (grants[j] - grants[i]) + 1e-6


def test_after_a_quick_429_the_pace_halves_then_climbs_to_three_quarters(
        host, jpeg, make_fetcher, one_host, clock):
    """A window halves the pace; answers raise it by rps / ramp_successes each up to 75%
    of the pace that drew a 429 which came at once, then by a small fraction each."""
    fetcher = make_fetcher(requests_per_second=10.0, ramp_successes=10, burst=1)
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(60))
    fetcher.fetch(host.url("/a.jpg"))
    assert one_host(fetcher)["current_rate"] == pytest.approx(5.0)
    clock.advance(60)

    rates = []
    for _ in range(5):
        assert fetcher.fetch(host.url("/a.jpg")).ok
        rates.append(one_host(fetcher)["current_rate"])
    # The probe reopens at 5; then +1 per answer up to 7.5; then a creep above.
    assert rates[:4] == pytest.approx([5.0, 6.0, 7.0, 7.5])
    assert 7.5 < rates[4] < 7.51


def test_after_a_429_at_a_pace_that_had_held_the_climb_stops_at_ninety_percent(
        host, jpeg, make_fetcher, one_host, clock):
    """A 429 after 5 * ramp_successes answers at one pace means the limit is just under
    it: the fast climb goes back to 90% of that pace."""
    fetcher = make_fetcher(requests_per_second=10.0, ramp_successes=2, burst=1)
    host.add("/a.jpg", jpeg)
    for _ in range(10):
        assert fetcher.fetch(host.url("/a.jpg")).ok
    host.script("/a.jpg", Reply.too_many_requests(60))
    fetcher.fetch(host.url("/a.jpg"))
    clock.advance(60)

    rates = []
    for _ in range(3):
        assert fetcher.fetch(host.url("/a.jpg")).ok
        rates.append(one_host(fetcher)["current_rate"])
    assert rates[:2] == pytest.approx([5.0, 9.0])  # steps of 10 / 2, capped at 9
    assert 9.0 < rates[2] < 9.01


def test_the_first_429_at_full_pace_with_bursts_on_blames_the_burst(
        host, jpeg, make_fetcher, one_host, clock):
    """Bursts go off and the climb goes back to the full pace: with the host's own
    burst no bigger than ours, our burst and not our pace drew the 429."""
    fetcher = make_fetcher(requests_per_second=10.0, ramp_successes=10, burst=2)
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(60))
    fetcher.fetch(host.url("/a.jpg"))
    clock.advance(60)

    rates = []
    for _ in range(8):
        assert fetcher.fetch(host.url("/a.jpg")).ok
        rates.append(one_host(fetcher)["current_rate"])
    assert rates == pytest.approx([5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 10.0, 10.0])


def test_a_host_that_throttled_once_gets_no_more_bursts(host, jpeg, make_fetcher,
                                                        clock):
    """After a window, requests are spaced by the pace from the probe on: a host that
    allows no burst is not hit by probe + burst back to back."""
    fetcher = make_fetcher(requests_per_second=4.0, burst=5)
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(60))
    fetcher.fetch(host.url("/a.jpg"))
    clock.advance(600)  # long idle: a burst of 5 would be allowed, were bursts still on
    start = clock.monotonic()
    for _ in range(3):
        assert fetcher.fetch(host.url("/a.jpg")).ok
    assert clock.monotonic() - start >= 2 / 2.0  # 3 requests at the halved 2/s


def test_bytes_per_hour_paces_requests_by_the_bytes_they_bring(host, make_fetcher,
                                                               clock):
    """With bytes_per_hour set, a host gets no more than its hourly bytes' worth (plus
    one minute's allowance and the image in flight) over any run."""
    fetcher = make_fetcher(requests_per_second=1000.0, burst=10,
                           bytes_per_hour=3_600_000)  # 1000 bytes/s
    image = b"\xff\xd8\xff\xe0" + bytes(9_996)  # 10 kB that sniff as JPEG
    for i in range(30):
        host.add(f"/{i}.jpg", image)
    start = clock.monotonic()
    for i in range(30):
        assert fetcher.fetch(host.url(f"/{i}.jpg")).ok
    virtual_s = clock.monotonic() - start
    assert fetcher.counters()["bytes"] == 300_000
    assert 300_000 <= 1000 * virtual_s + 60 * 1000 + 10_000


def test_bytes_per_hour_counts_bytes_on_the_wire_not_decoded(host, make_fetcher,
                                                            clock):
    """Compressed bodies pace by what they cost the host: 30 images of 10 kB that
    travel as a few dozen bytes each stay within the one-minute allowance, so the byte
    ceiling never holds a request back (decoded, they would need minutes)."""
    fetcher = make_fetcher(requests_per_second=1000.0, burst=10,
                           bytes_per_hour=3_600_000)  # 1000 bytes/s
    image = b"\xff\xd8\xff\xe0" + bytes(9_996)
    wire = gzip.compress(image)
    for i in range(30):
        host.answer(f"/{i}.jpg", Reply(200, wire, "image/jpeg",
                                       (("Content-Encoding", "gzip"),)))
    start = clock.monotonic()
    for i in range(30):
        assert fetcher.fetch(host.url(f"/{i}.jpg")).data == image
    virtual_s = clock.monotonic() - start
    assert fetcher.counters()["bytes"] == 30 * len(wire)
    # The request pace alone: at most 30 slots of 1 ms. The decoded 300 kB, less the
    # 60 kB allowance, would have taken 240 s at 1000 bytes/s.
    assert virtual_s <= 30 / 1000.0 + 1e-9


def test_a_throttled_host_leaves_another_host_alone(host, jpeg, fetcher, clock):
    """State is per scheme://host:port: a window on one port does not touch another."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply.too_many_requests(300))
    with ImageHost(clock=clock.monotonic) as other:
        other.add("/b.jpg", jpeg)
        fetcher.fetch(host.url("/a.jpg"))
        results = [fetcher.fetch(other.url("/b.jpg")) for _ in range(5)]
        assert all(r.ok for r in results) and other.total_requests == 5
        assert fetcher.fetch(host.url("/a.jpg")).reason == "host_cache_only"

        report = fetcher.host_report()
        assert report[host.base_url]["in_window"]
        assert not report[other.base_url]["in_window"]
        assert report[other.base_url]["current_rate"] == pytest.approx(5.0)
