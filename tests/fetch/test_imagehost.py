"""The loopback image host itself: throttle, scripts, counters, a clean stop."""

from __future__ import annotations

import threading

import requests

from shardtools.imagehost import ImageHost, Reply


def test_the_throttle_answers_429_beyond_its_bucket(clock):
    """burst requests pass at once, the next gets 429 with Retry-After; time refills."""
    with ImageHost(clock=clock.monotonic) as host, requests.Session() as session:
        session.trust_env = False  # loopback only, whatever the proxy variables say
        host.add("/a.jpg", b"\xff\xd8\xff")
        host.throttle(rate=2, burst=3, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
        statuses = [session.get(host.url("/a.jpg")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        last = session.get(host.url("/a.jpg"))
        assert last.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
        clock.advance(0.5)  # one token at 2 per second
        assert session.get(host.url("/a.jpg")).status_code == 200
        host.relent()
        assert all(session.get(host.url("/a.jpg")).ok for _ in range(5))
        assert host.count_429 == 2 and host.total_requests == 11
        assert len(host.arrivals()) == 11


def test_scripts_are_used_once_each_then_the_standing_answer(clock):
    """Scripted replies go first, in order; then the path's stored body."""
    with ImageHost(clock=clock.monotonic) as host, requests.Session() as session:
        session.trust_env = False
        host.add("/a.jpg", b"\xff\xd8\xffimage")
        host.script("/a.jpg", Reply(503), Reply.too_many_requests(7))
        answers = [session.get(host.url("/a.jpg")) for _ in range(3)]
        assert [a.status_code for a in answers] == [503, 429, 200]
        assert answers[1].headers["Retry-After"] == "7"
        assert answers[2].content == b"\xff\xd8\xffimage"
        assert session.get(host.url("/nothing")).status_code == 404


def test_stop_ends_held_and_trickling_replies_and_joins_its_threads():
    """stop() returns with no thread of the host left, even mid-reply."""
    before = set(threading.enumerate())
    host = ImageHost().start()
    host.answer("/held", Reply().held(threading.Event()))
    host.answer("/slow", Reply.trickle(b"x" * 1000, 1, 0.05))
    session = requests.Session()
    session.trust_env = False
    try:
        workers = [threading.Thread(target=_get_quietly, args=(session, host.url(p)))
                   for p in ("/held", "/slow")]
        for worker in workers:
            worker.start()
        assert host.wait_for_requests(2)
        host.stop()
        for worker in workers:
            worker.join(timeout=10)
    finally:
        session.close()
    assert set(threading.enumerate()) <= before


def _get_quietly(session: requests.Session, url: str) -> None:
    try:
        session.get(url, timeout=5).close()
    except requests.RequestException:
        pass  # the host hung up on us: that is what stop() does
