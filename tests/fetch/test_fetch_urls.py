"""Redirects, schemes and URLs: where the fetcher agrees to go."""

from __future__ import annotations

import pytest

from shardtools.imagehost import Reply


def test_a_redirect_chain_is_followed_and_the_final_url_kept(host, jpeg, fetcher):
    """Absolute and relative Locations are followed; final_url is where the image is."""
    host.answer("/a", Reply.redirect(host.url("/b"), 301))
    host.answer("/b", Reply.redirect("/c.jpg", 307))
    host.add("/c.jpg", jpeg)
    result = fetcher.fetch(host.url("/a"))
    assert result.ok and result.data == jpeg
    assert result.final_url == host.url("/c.jpg")
    assert host.counts() == {"/a": 1, "/b": 1, "/c.jpg": 1}


def test_a_redirect_loop_is_rejected_within_the_bound(host, fetcher):
    """a -> b -> a: rejected("redirect_loop") on the first repeat, not after retries."""
    host.answer("/a", Reply.redirect("/b"))
    host.answer("/b", Reply.redirect("/a"))
    result = fetcher.fetch(host.url("/a"))
    assert (result.outcome, result.reason) == ("rejected", "redirect_loop")
    assert host.total_requests == 2


def test_a_redirect_chain_longer_than_max_redirects_is_rejected(host, make_fetcher):
    """Fresh URLs forever: rejected("too_many_redirects") after max_redirects hops."""
    fetcher = make_fetcher(max_redirects=3)
    for i in range(10):
        host.answer(f"/r{i}", Reply.redirect(f"/r{i + 1}"))
    result = fetcher.fetch(host.url("/r0"))
    assert (result.outcome, result.reason) == ("rejected", "too_many_redirects")
    assert host.total_requests == 4


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "file:///etc/hostname"])
def test_only_http_and_https_are_fetched(fetcher, url):
    """Other schemes are refused before anything is opened."""
    result = fetcher.fetch(url)
    assert (result.outcome, result.reason) == ("rejected", "unsupported_scheme")


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/a.jpg", "file:///etc/hostname"])
def test_a_redirect_to_another_scheme_is_refused(host, fetcher, location):
    """The scheme rule holds after redirects too."""
    host.answer("/a", Reply.redirect(location))
    result = fetcher.fetch(host.url("/a"))
    assert (result.outcome, result.reason, result.final_url) == (
        "rejected", "unsupported_scheme", location)
    assert host.total_requests == 1


@pytest.mark.parametrize("url", ["", "not a url", "http://", "http://127.0.0.1:99999/a",
                                 "http:///a.jpg"])
def test_malformed_urls_are_rejected(fetcher, url):
    """No host, a bad port, no scheme: rejected("invalid_url")."""
    result = fetcher.fetch(url)
    assert (result.outcome, result.reason) == ("rejected", "invalid_url")


@pytest.mark.parametrize("template", [
    "http://127.0.0 .1:{port}/a.jpg",          # a space in the host
    "http://127.0.0.1 :{port}/a.jpg",          # ... or before the port
    "http://127.0.0.1\t:{port}/a.jpg",         # a tab there (urlsplit would drop it)
    "http://127.0.0.1:{port}/a\n.jpg",         # a newline in the path (likewise)
    "http://127.0.0.1:{port}/a\r\n.jpg",
    "http://127.0.0.1:{port}/a\x00.jpg",       # NUL
    "http://127.0.0.1:{port}/a\x7f.jpg",       # DEL
    "http://127.0.0.1:{port}/a\x85.jpg",       # a C1 control (NEL)
    "http://127.0.0.1:{port}/a\u2028.jpg",     # a line separator
    "http://127.0.0.1:{port}/a.jpg\x1b",
    " http://127.0.0.1:{port}/a.jpg",          # surrounding whitespace: the build
    "http://127.0.0.1:{port}/a.jpg\n",         # strips it; the fetcher does not guess
    "http://127..0.1:{port}/a.jpg",            # an empty label: cannot be resolved
])
def test_control_characters_and_spaces_in_the_host_are_invalid(host, jpeg, fetcher,
                                                               template):
    """rejected("invalid_url"), never an exception, and nothing sent: not even the
    URL urlsplit would make of it by dropping the offending characters."""
    host.add("/a.jpg", jpeg)
    port = host.base_url.rsplit(":", 1)[1]
    result = fetcher.fetch(template.format(port=port))
    assert (result.outcome, result.reason) == ("rejected", "invalid_url")
    assert host.total_requests == 0


def test_a_space_in_the_path_is_sent_percent_encoded(host, jpeg, fetcher):
    """Spaces are tolerated where a browser tolerates them: the path."""
    host.add("/a%20b.jpg", jpeg)
    result = fetcher.fetch(host.url("/a b.jpg"))
    assert result.ok and result.data == jpeg
