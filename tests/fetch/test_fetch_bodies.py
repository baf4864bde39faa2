"""What a 200 body must be to count as an image, and how much of it is read."""

from __future__ import annotations

import gzip
import zlib

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


def test_a_203_is_an_image_like_a_200(host, jpeg, fetcher):
    """203 (a proxy passed the body on) carries the URL's content: sniffed like a 200,
    and kept when it is an image."""
    host.answer("/a.jpg", Reply(203, jpeg, "image/jpeg"))
    host.answer("/page", Reply(203, Reply.html().body, "text/html"))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert result.ok and result.data == jpeg and result.http_status == 203
    page = fetcher.fetch(host.url("/page"))
    assert (page.outcome, page.reason, page.http_status) == (
        "rejected", "not_an_image", 203)


@pytest.mark.parametrize("status", [204, 205])
def test_no_content_is_rejected_with_its_own_code(host, jpeg, fetcher, status):
    """204/205 say there is nothing at the URL: rejected("http_204"), one request."""
    host.answer("/a.jpg", Reply(status, b""))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason, result.http_status, result.data) == (
        "rejected", f"http_{status}", status, None)
    assert host.count("/a.jpg") == 1


def test_a_206_nobody_asked_for_is_pending_and_not_kept(host, jpeg, fetcher, one_host):
    """We send no Range, so 206 is the host's fault: its part of a body is dropped,
    the record is pending("partial_content"), and the next pass gets the whole image.
    The answer counts as an answer: no window, no retry."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply(206, jpeg[:100], "image/jpeg",
                                (("Content-Range", f"bytes 0-99/{len(jpeg)}"),)))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason, result.http_status, result.data) == (
        "pending", "partial_content", 206, None)
    assert host.count("/a.jpg") == 1 and fetcher.counters()["retries"] == 0
    assert not one_host(fetcher)["in_window"]
    later = fetcher.fetch(host.url("/a.jpg"))
    assert later.ok and later.data == jpeg


def test_a_202_is_pending_not_ready(host, jpeg, fetcher, one_host):
    """202 Accepted ("being rendered, come back later") is no verdict on the URL: the
    record waits as pending("not_ready") and a later pass gets the image."""
    host.add("/a.jpg", jpeg)
    host.script("/a.jpg", Reply(202, b"", "text/plain"))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason, result.http_status) == ("pending", "not_ready", 202)
    assert not one_host(fetcher)["in_window"]
    assert fetcher.fetch(host.url("/a.jpg")).data == jpeg


def _compressible_image(size: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes(size - 4)  # sniffs as JPEG, compresses well


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("coding, pack", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", _raw_deflate),
])
def test_a_compressed_body_counts_its_bytes_on_the_wire(host, fetcher, coding, pack):
    """The image comes back decoded, but `bytes` (and so bytes_per_hour) counts what
    came over the wire."""
    image = _compressible_image(50_000)
    wire = pack(image)
    host.answer("/a.jpg", Reply(200, wire, "image/jpeg",
                                (("Content-Encoding", coding),)))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert result.ok and result.data == image
    assert fetcher.counters()["bytes"] == len(wire)
    assert host.requests()[0].headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("send_length", [True, False])
def test_a_compression_bomb_is_refused_at_max_bytes(host, fetcher, send_length):
    """max_bytes applies to the decoded body: 10 MB of zeros in 10 kB of gzip is
    too_large, and no more than its wire bytes were counted."""
    wire = gzip.compress(_compressible_image(10_000_000))
    assert len(wire) < 100_000  # under max_bytes on the wire
    host.answer("/bomb.jpg", Reply(200, wire, "image/jpeg",
                                   (("Content-Encoding", "gzip"),),
                                   send_length=send_length))
    result = fetcher.fetch(host.url("/bomb.jpg"))
    assert (result.outcome, result.reason, result.data) == (
        "rejected", "too_large", None)
    assert fetcher.counters()["bytes"] <= len(wire)


def test_a_body_in_a_coding_we_did_not_ask_for_is_judged_as_it_came(host, jpeg,
                                                                    fetcher):
    """We accept gzip and deflate only; other bytes are sniffed as they are."""
    host.answer("/a.jpg", Reply(200, b"\x00br-compressed-bytes" * 4, "image/jpeg",
                                (("Content-Encoding", "br"),)))
    assert fetcher.fetch(host.url("/a.jpg")).reason == "not_an_image"


def test_a_corrupt_compressed_body_is_a_transient_fault(host, fetcher):
    """gzip that does not decompress: retried like a body cut short, then pending."""
    host.answer("/a.jpg", Reply(200, b"\x1f\x8b\x08\x00" + b"junk" * 20, "image/jpeg",
                                (("Content-Encoding", "gzip"),)))
    result = fetcher.fetch(host.url("/a.jpg"))
    assert (result.outcome, result.reason) == ("pending", "connection_error")
