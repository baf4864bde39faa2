"""image_deadline_s bounds the whole exchange: connect, status line, headers, body.

The servers here trickle far longer than the deadline, each piece well within
timeout_s, so no socket timeout can end the fetch: only the deadline can. The tests
assert outcomes (deadline_exceeded, and that the server saw the connection go before
it had sent everything), never elapsed seconds.
"""

from __future__ import annotations

import errno
import select
import socket
import threading

import pytest

from shardtools.fetch.watchdog import THREAD_NAME, WatchedHTTPConnection, Watchdog
from shardtools.imagehost import Reply

from .rawserver import RawServer, response, trickle

# Against BASE_SETTINGS' timeout_s = 2.0: each piece comes well within it.
_PAUSE_S = 0.1
_DEADLINE_S = 0.5


def _slow_headers(jpeg: bytes) -> tuple:
    """A status line at once, then 90 header lines one by one: 9 s in all."""
    lines = [b"HTTP/1.1 200 OK\r\n"] + [b"X-Pad-%d: x\r\n" % i for i in range(90)]
    lines.append(b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg)
    return tuple((line, _PAUSE_S) for line in lines)


def _slow_status_line(jpeg: bytes) -> tuple:
    """The status line one byte at a time (and the rest after it): 2 s and more."""
    head = response(b"HTTP/1.1 200 OK" + b" " * 4, [b"Content-Length: %d" % len(jpeg)],
                    jpeg)
    return trickle(head[:20], 1, _PAUSE_S) + ((head[20:], 0.0),)


def _quick(jpeg: bytes) -> tuple:
    return ((response(b"HTTP/1.1 200 OK", [b"Content-Type: image/jpeg",
                                           b"Content-Length: %d" % len(jpeg),
                                           b"Connection: close"], jpeg), 0.0),)


@pytest.mark.parametrize("script", [_slow_headers, _slow_status_line])
def test_a_trickling_head_is_cut_off_at_the_image_deadline(make_fetcher, jpeg, script):
    """Every byte of the head comes within timeout_s, so only the deadline can stop
    it: pending("deadline_exceeded"), no retry, and the connection was closed before
    the server had sent its whole answer."""
    fetcher = make_fetcher(image_deadline_s=_DEADLINE_S)
    with RawServer(script(jpeg)) as server:
        result = fetcher.fetch(server.url())
        assert server.wait_done(0)
        (seen,) = server.connections
    assert (result.outcome, result.reason, result.data) == (
        "pending", "deadline_exceeded", None)
    assert seen.cut_short, "the fetcher sat through the whole trickle"
    assert fetcher.counters()["retries"] == 0


@pytest.fixture
def black_hole():
    """A loopback port whose accept queue is full: a connect there hangs (the kernel
    drops the SYN), until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    filler, probe = socket.socket(), socket.socket()
    try:
        filler.connect(address)  # takes the queue's one place
        probe.setblocking(False)
        if probe.connect_ex(address) not in (errno.EINPROGRESS, errno.EAGAIN):
            pytest.skip("this kernel refuses or accepts at once")
        _, writable, _ = select.select([], [probe], [], 0.2)
        if writable:
            pytest.skip("this kernel queues past the backlog")
        yield f"http://127.0.0.1:{address[1]}/a.jpg"
    finally:
        probe.close()
        filler.close()
        listener.close()


def test_a_connect_that_hangs_is_bounded_by_the_deadline(make_fetcher, black_hole):
    """Each connect is capped at what is left of the image's budget: the fetch ends
    deadline_exceeded, not timeout after max_retries tries of timeout_s each."""
    fetcher = make_fetcher(image_deadline_s=_DEADLINE_S)
    result = fetcher.fetch(black_hole)
    assert (result.outcome, result.reason) == ("pending", "deadline_exceeded")
    assert fetcher.counters()["retries"] == 0


def test_a_cut_off_connection_is_not_reused(make_fetcher, jpeg):
    """After the watchdog shut a connection down, the next fetch to that host gets a
    fresh connection and its image, at the first try."""
    fetcher = make_fetcher(image_deadline_s=_DEADLINE_S)
    with RawServer(_slow_headers(jpeg), _quick(jpeg)) as server:
        first = fetcher.fetch(server.url())
        second = fetcher.fetch(server.url())
        assert server.wait_done(1)
        assert len(server.connections) == 2
        assert server.connections[0].cut_short
    assert first.reason == "deadline_exceeded"
    assert second.ok and second.data == jpeg
    assert fetcher.counters()["retries"] == 0


def test_a_pooled_connection_outlives_a_cut_off_body_on_another(host, jpeg,
                                                                make_fetcher):
    """A body cut off at the deadline drops its connection; the pool stays healthy
    and the next image comes at the first try."""
    fetcher = make_fetcher(image_deadline_s=_DEADLINE_S)
    host.add("/a.jpg", jpeg)
    host.answer("/slow.jpg", Reply.trickle(jpeg * 10, bytes_per_tick=1,
                                           interval_s=_PAUSE_S))
    assert fetcher.fetch(host.url("/a.jpg")).ok
    assert fetcher.fetch(host.url("/slow.jpg")).reason == "deadline_exceeded"
    results = [fetcher.fetch(host.url("/a.jpg")) for _ in range(3)]
    assert all(r.ok and r.data == jpeg for r in results)
    assert fetcher.counters()["retries"] == 0


def test_one_watchdog_thread_serves_every_request(host, jpeg, make_fetcher):
    """Eight requests in flight at once share one timer thread, which stops at close."""
    fetcher = make_fetcher(requests_per_second=1000.0, burst=100)
    gate = threading.Event()
    host.add("/a.jpg", jpeg)
    host.answer("/a.jpg", Reply().held(gate))
    before = set(threading.enumerate())  # other fetchers' watchdogs do not count
    threads = [threading.Thread(target=fetcher.fetch, args=(host.url("/a.jpg"),))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        assert host.wait_for_requests(8)
        watchdogs = [t for t in threading.enumerate()
                     if t.name == THREAD_NAME and t not in before]
    finally:
        gate.set()
        for thread in threads:
            thread.join(timeout=10)
    assert len(watchdogs) == 1
    fetcher.close()
    assert not any(t.is_alive() for t in watchdogs)


def test_a_watch_that_runs_out_leaves_a_handed_on_connection_alone():
    """Only the request a connection carries now can have it shut down: not one whose
    connection went back to the pool, nor one whose connection another request has
    claimed since. A watch that ran out before its request claimed a connection shuts
    that connection down as soon as it does, and a shut-down connection reports itself
    not connected, so its pool drops it."""
    def fire(watch):
        with dog._cond:
            dog._fire_locked(watch)

    dog = Watchdog()
    try:
        connection = WatchedHTTPConnection("127.0.0.1", 9)  # never connected
        with dog.watch(60.0) as old:
            old.claim(connection)
            connection._release()  # back in the pool
            fire(old)
            assert old.fired and not connection._aborted
        with dog.watch(60.0) as old:
            old.claim(connection)
            with dog.watch(60.0) as new:  # the pool handed the connection on
                new.claim(connection)
                fire(old)
                assert not connection._aborted
                fire(new)
                assert connection._aborted and not connection.is_connected
        connection.close()
        assert not connection._aborted

        late = WatchedHTTPConnection("127.0.0.1", 9)
        with dog.watch(0.0) as watch:
            for _ in range(500):  # bounded: the timer thread fires it at once
                if watch.fired:
                    break
                threading.Event().wait(0.01)
            assert watch.fired
            watch.claim(late)
            assert late._aborted
    finally:
        dog.close()
