"""What a 200 body must be to count as an image, and how much of it is read."""

from __future__ import annotations

import pytest

from shardtools.imagehost import Reply


def test_an_image_comes_back_with_its_bytes(host, jpeg, fetcher):
    """A 200 whose bytes start like an image: ok, the exact bytes, counted."""
    host.add("/a.jpg", jpeg)
    result = fetcher.fetch(host.url("/a.jpg"))
    assert result.ok and result.data == jpeg and result.http_status == 200
    assert result.final_url == host.url("/a.jpg")
    counters = fetcher.counters()
    assert counters["downloaded"] == 1 and counters["bytes"] == len(jpeg)


@pytest.mark.parametrize("reply", [
    Reply.html(),                                            # an error page with 200
    Reply(200, b'{"error": "not found"}', "application/json"),
    Reply(200, b"", "image/jpeg"),                           # empty, whatever its type
    Reply(200, b"GIF8", "image/gif"),                        # too short to be one
])
def test_a_200_that_is_no_image_is_rejected(host, fetcher, reply):
    """sniff_format decides, not Content-Type: rejected("not_an_image"), invalid."""
    host.answer("/a.jpg", reply)
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason) == ("rejected", "not_an_image")
    assert result.data is None
    assert fetcher.counters()["invalid"] == 1


@pytest.mark.parametrize("send_length", [True, False])
def test_an_oversized_body_is_refused(host, fetcher, send_length):
    """Over max_bytes: rejected("too_large"), from Content-Length when the host sends
    one, else by stopping the read once past the limit."""
    body = b"\xff\xd8\xff\xe0" + bytes(300_000)
    host.answer("/big.jpg", Reply(200, body, "image/jpeg", send_length=send_length))
    result = fetcher.fetch(host.url("/big.jpg"))
    assert (result.outcome, result.reason) == ("rejected", "too_large")
    assert result.data is None
    assert fetcher.counters()["bytes"] <= 100_000 + 64 * 1024


def test_a_body_without_length_is_read_to_the_close(host, jpeg, fetcher):
    """No Content-Length: the body ends where the host closes the connection."""
    host.answer("/a.jpg", Reply(200, jpeg, "image/jpeg", send_length=False))
    assert fetcher.fetch(host.url("/a.jpg")).data == jpeg
