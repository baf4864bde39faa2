"""Transient faults are retried, then left pending; permanent ones are rejected."""

from __future__ import annotations

import socket
import threading

import pytest

from shardtools.imagehost import Reply


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_with_backoff(host, jpeg, fetcher, clock, status):
    """Two failures then an image: ok, three requests, two retries, backed off on the
    clock (equal jitter: at least half of 1 s, then of 2 s)."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply(status, b"oops"), Reply(status, b"oops"))
    start = clock.monotonic()
    result = fetcher.fetch(host.url("/a.jpg"))
    assert result.ok and result.data == jpeg
    assert host.count("/a.jpg") == 3
    assert fetcher.counters()["retries"] == 2
    assert clock.monotonic() - start >= 0.5 + 1.0


def test_server_errors_past_max_retries_leave_the_record_pending(host, fetcher):
    """A host that keeps failing is not the record's fault: pending, with the reason."""
    host.answer("/a.jpg", Reply(503, b"down"))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason) == ("pending", "server_error")
    assert result.http_status == 503
    assert host.count("/a.jpg") == 1 + 2  # max_retries = 2


def test_a_silent_server_times_out_and_the_record_is_pending(host, make_fetcher):
    """No answer within timeout_s, on every try: pending("timeout")."""
    fetcher = make_fetcher(timeout_s=0.2, max_retries=1)
    gate = threading.Event()  # never set: the host holds every request
    host.answer("/a.jpg", Reply().held(gate))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason) == ("pending", "timeout")
    assert host.count("/a.jpg") == 2


def test_a_refused_connection_is_retried_then_pending(fetcher):
    """Nothing listening: pending("connection_error") after the retries."""
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")
    assert (result.outcome, result.reason) == ("pending", "connection_error")
    assert fetcher.counters()["retries"] == 2


def test_a_trickling_body_is_cut_off_at_the_image_deadline(host, jpeg, make_fetcher):
    """1 byte per 100 ms against a 0.5 s deadline: stopped, pending, no bytes kept, and
    not retried (the image's budget is spent)."""
    fetcher = make_fetcher(image_deadline_s=0.5)
    host.answer("/slow.jpg", Reply.trickle(jpeg[:200], bytes_per_tick=1,
                                           interval_s=0.1))
    result = fetcher.fetch(host.url("/slow.jpg"))
    assert (result.outcome, result.reason) == ("pending", "deadline_exceeded")
    assert result.data is None
    assert host.count("/slow.jpg") == 1


@pytest.mark.parametrize("status", [403, 404, 410])
def test_client_errors_are_rejected_without_retry(host, fetcher, status):
    """404, 410 and other 4xx are the record's own: rejected("http_<code>"), one try."""
    host.answer("/a.jpg", Reply(status, b"no"))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason, result.http_status) == (
        "rejected", f"http_{status}", status)
    assert host.count("/a.jpg") == 1
