"""Download one image's bytes politely: the only code in shardtools that opens sockets.

Every outcome is a `FetchResult`, never an exception:

- ok: the body, which starts like an image (`sniff_format`); not yet decoded.
- pending: not this record's fault, try it in a later pass: the host is cache-only
  (`host_cache_only`), it just said 429 (`rate_limited`), or a transient fault outlived
  its retries (`timeout`, `connection_error`, `server_error`, `deadline_exceeded`), or
  the host sent a part of the body nobody asked for (`partial_content`, a 206).
- rejected: the URL will not give an image (`http_404`, `http_204`, `not_an_image`,
  `invalid_url`, ...).

The fetcher never writes files: the build decodes the bytes, then writes its cache
atomically. Pacing, retry backoff and cache-only windows run on the injected `Clock`.
The per-image deadline does not: it guards against a real socket that trickles, so it is
measured on the process's own monotonic clock, whatever clock is injected.

The deadline covers the whole exchange, not just the body: every request runs under
the Fetcher's one `Watchdog` timer thread (see `watchdog.py`), which shuts the socket
down when the image's budget runs out, whether the thread is in the TLS handshake, the
status line, the headers or the body. Connect and read timeouts are also capped at what
is left of the budget. A connection that was shut down is closed, never reused.

Bytes: the `bytes` counter and `bytes_per_hour` pacing count body bytes as they came
over the wire (still compressed, when the host used Content-Encoding). `max_bytes`
applies to the body once decompressed, which the fetcher does itself (gzip, deflate),
never producing more than `max_bytes` + 1 bytes, so a compression bomb is refused at
the limit.
"""

from __future__ import annotations

import http.cookiejar
import logging
import math
import random
import threading
import time
import unicodedata
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, NamedTuple
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from urllib3.util.retry import Retry

from ..errors import ConfigError
from ..imaging.sniff import sniff_format
from ..settings import MAX_FETCH_THREADS, FetchSettings
from .clock import SYSTEM_CLOCK, Clock
from .host import HostState, Ticket
from .watchdog import WatchedAdapter, Watchdog

logger = logging.getLogger(__name__)

PENDING_REASONS = frozenset({
    "host_cache_only", "rate_limited", "timeout", "connection_error", "server_error",
    "deadline_exceeded", "partial_content", "not_ready",
})
REJECTED_REASONS = frozenset({
    "invalid_url", "unsupported_scheme", "redirect_loop", "too_many_redirects",
    "too_large", "not_an_image",
})  # and "http_<code>" for each status that says the URL is wrong

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# 2xx answers that carry the URL's content: 203 is a 200 passed on by a proxy that may
# have transformed it; sniff_format judges its bytes like a 200's.
_BODY_STATUSES = frozenset({200, 203})
# "No content": the URL will not give an image, whatever we ask.
_NO_CONTENT = frozenset({204, 205})
# A part of the body we never asked for (we send no Range): the host is at fault, and
# the bytes are not kept.
_PARTIAL = 206
_ACCEPTED = 202
# The most download threads a Fetcher accepts: each may hold a pooled connection.
MAX_THREADS = MAX_FETCH_THREADS
# Answers worth another try; 503 only without Retry-After (with it, it is a throttle).
# Other 5xx are retried too, except these two, which say the request is at fault.
_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})
_PERMANENT_5XX = frozenset({501, 505})
# Results that say nothing about the host's limits: no answer came.
_NO_ANSWER = frozenset({"timeout", "connection_error", "deadline_exceeded"})
_RETRIED = frozenset({"timeout", "connection_error", "server_error"})
_CHUNK_BYTES = 64 * 1024
# Enough to tell an image from an HTML page (see sniff_format).
_SNIFF_BYTES = 32
# Bodies of answers we do not keep are drained up to this, so that the connection can
# be reused; a longer one is not worth it, and the connection is dropped instead.
_DRAIN_BYTES = 64 * 1024
# What a request or reading its body can raise: requests', urllib3's and the socket's
# own, and a compressed body that does not decompress.
_READ_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError,
                zlib.error)
# We decompress bodies ourselves (see _Decoder), so we ask for no other coding.
_ACCEPT_ENCODING = "gzip, deflate"


@dataclass(frozen=True)
class FetchResult:
    """What became of one URL. `reason` is a stable snake_case code when not ok."""

    outcome: str  # "ok" | "pending" | "rejected"
    data: bytes | None = None
    reason: str | None = None
    http_status: int | None = None
    final_url: str | None = None  # after redirects

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Fetcher:
    """Fetch image URLs from many threads, with one shared state per host.

    `fetch` is thread-safe and returns a FetchResult for any network or HTTP trouble.
    Use it as a context manager, or call `close`.
    """

    def __init__(self, settings: FetchSettings, clock: Clock = SYSTEM_CLOCK):
        _check(settings)
        self._settings = settings
        self._clock = clock
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._hosts: dict[str, HostState] = {}
        self._counters = dict.fromkeys(
            ("downloaded", "failed", "invalid", "rate_limited_skips", "http_429",
             "retries", "bytes"), 0)
        self._watchdog = Watchdog()
        self._session = _make_session(settings)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection, and stop the deadline watchdog's thread."""
        self._session.close()
        self._watchdog.close()

    def fetch(self, url: str) -> FetchResult:
        """Fetch `url`'s bytes, following redirects, within its hosts' limits."""
        result = self._fetch(url)
        if result.ok:
            self._count("downloaded")
        elif result.reason == "host_cache_only":
            self._count("rate_limited_skips")
        elif result.reason == "not_an_image":
            self._count("invalid")
        else:
            self._count("failed")
        logger.debug("%s: %s %s", url, result.outcome, result.reason or "")
        return result

    def counters(self) -> dict[str, int]:
        """downloaded + failed + invalid + rate_limited_skips = calls to `fetch`;
        http_429 counts 429 answers, retries the extra tries, bytes every body byte."""
        with self._lock:
            return dict(self._counters)

    def host_report(self) -> dict[str, dict]:
        """Per host (`scheme://name:port`): requests, http_429, in_window,
        window_remaining_s, current_rate (requests/s), probing, windows."""
        return {host.key: host.report() for host in self._known_hosts()}

    def next_probe_in(self) -> float | None:
        """Seconds until the earliest cache-only host may be tried again (0.0: now);
        None when no host is cache-only."""
        waits = [host.seconds_until_probe() for host in self._known_hosts()]
        waits = [wait for wait in waits if wait is not None]
        return min(waits) if waits else None

    # --- one URL ----------------------------------------------------------------------

    def _fetch(self, url: str) -> FetchResult:
        problem = _url_problem(url)
        if problem:
            return FetchResult("rejected", reason=problem)
        budget = _Budget(self._settings.image_deadline_s, self._watchdog)
        for attempt in range(1, self._settings.max_retries + 1):
            result = self._follow(url, budget)
            if result.reason not in _RETRIED or budget.spent():
                return result
            self._count("retries")
            delay = self._backoff(attempt)
            logger.debug("%s: %s, retry %d of %d in %.2f s", url, result.reason,
                         attempt, self._settings.max_retries, delay)
            self._clock.sleep(delay)
        return self._follow(url, budget)

    def _follow(self, url: str, budget: _Budget) -> FetchResult:
        """One try: request `url`, then wherever it redirects."""
        seen = {url}
        current = url
        for _ in range(self._settings.max_redirects + 1):
            answer = self._exchange(current, budget)
            if isinstance(answer, FetchResult):
                return answer
            target = urljoin(current, answer.location)
            problem = _url_problem(target)
            if problem is None and target in seen:
                problem = "redirect_loop"
            if problem:
                return _rejected(problem, target, answer.status)
            seen.add(target)
            current = target
        return _rejected("too_many_redirects", current)

    def _exchange(self, url: str, budget: _Budget) -> FetchResult | _Redirect:
        """One request to `url`, within its host's limits."""
        host = self._host(url)
        ticket = self._wait_for_leave(host)
        if ticket is None:
            return _pending("host_cache_only", url)
        settle = host.failed  # unless the answer says otherwise
        try:
            if budget.spent():
                return _pending("deadline_exceeded", url)
            answer, settle = self._request(url, host, budget)
            return answer
        finally:
            settle(ticket)

    def _wait_for_leave(self, host: HostState) -> Ticket | None:
        # A ticket goes stale when the host opens a window while its holder sleeps. A
        # few rounds are plenty: each needs a new window in between.
        for _ in range(4):
            ticket = host.admit()
            if ticket is None:
                return None
            self._sleep_until(ticket.not_before)
            if host.confirm(ticket):
                return ticket
        return None

    def _request(self, url: str, host: HostState,
                 budget: _Budget) -> tuple[FetchResult | _Redirect, _Settle]:
        """Send the request and read its answer, all under the image's deadline. Also
        returns how to settle the ticket: what the answer means for the host's
        limits."""
        timeout = min(self._settings.timeout_s, budget.remaining())
        with budget.on_wire():
            try:
                response = self._session.get(url, stream=True, allow_redirects=False,
                                             timeout=(timeout, timeout))
            except _READ_ERRORS as exc:
                reason = _error_reason(exc, budget)
                logger.debug("%s: %s (%s)", url, reason, exc)
                outcome = "rejected" if reason == "invalid_url" else "pending"
                return FetchResult(outcome, reason=reason, final_url=url), host.failed
            with response:
                if budget.spent():
                    # The watchdog cut the headers short; http.client may have taken
                    # the early end for the end of the headers. Nothing here is true.
                    return _pending("deadline_exceeded", url), host.failed
                return self._answer(response, url, host, budget)

    def _answer(self, response: requests.Response, url: str, host: HostState,
                budget: _Budget) -> tuple[FetchResult | _Redirect, _Settle]:
        status = response.status_code
        if status in _BODY_STATUSES:
            result = self._read_image(response, url, host, budget)
            settle = host.failed if result.reason in _NO_ANSWER else host.answered
            return result, settle
        self._drain(response, host)
        retry_after = response.headers.get("Retry-After")
        location = response.headers.get("Location")
        if status == 429 or (status == 503 and retry_after is not None):
            if status == 429:
                self._count("http_429")
            return (_pending("rate_limited", url, status),
                    lambda ticket: host.throttled(ticket, status, retry_after))
        if status in _REDIRECTS and location:
            return _Redirect(status, location), host.answered
        if status == _PARTIAL:
            return _pending("partial_content", url, status), host.answered
        if status == _ACCEPTED:
            # "Accepted, not ready": hosts that render thumbnails on demand say this. The
            # image may well exist later, so the record waits rather than being lost.
            return _pending("not_ready", url, status), host.answered
        if status in _NO_CONTENT:
            return _rejected(f"http_{status}", url, status), host.answered
        if status in _TRANSIENT_STATUSES or (
                status >= 500 and status not in _PERMANENT_5XX):
            return _pending("server_error", url, status), host.failed
        # Other 2xx, 3xx without Location, 4xx, 501, 505: the URL is at fault.
        return _rejected(f"http_{status}", url, status), host.answered

    def _read_image(self, response: requests.Response, url: str, host: HostState,
                    budget: _Budget) -> FetchResult:
        """Stream a 200 (or 203) body, stopping at max_bytes, at the deadline, or as
        soon as its first bytes show it is no image."""
        status = response.status_code

        def result(outcome: str, reason: str | None, data: bytes | None = None):
            return FetchResult(outcome, data=data, reason=reason, http_status=status,
                               final_url=url)

        limit, timeout = self._settings.max_bytes, self._settings.timeout_s
        # The size on the wire; the decoded body is (almost always) larger still.
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return result("rejected", "too_large")

        decoder = _Decoder(response.headers.get("Content-Encoding", ""))
        body = bytearray()
        wire = 0  # body bytes as they came, before decoding: what pacing counts
        try:
            while True:
                remaining = budget.remaining()
                if budget.spent():
                    return result("pending", "deadline_exceeded")
                _cap_read_timeout(response, min(remaining, timeout))
                # read1 returns what one socket read brought, so a server that
                # trickles cannot hold us in one call until a whole chunk arrives.
                chunk = response.raw.read1(_CHUNK_BYTES, decode_content=False)
                if budget.spent():  # cut off by the watchdog: an early end is no end
                    return result("pending", "deadline_exceeded")
                wire += len(chunk)
                self._count("bytes", len(chunk))
                sniffed_before = len(body) >= _SNIFF_BYTES
                # Never more than one byte past the limit, however well it compresses.
                room = limit + 1 - len(body)
                body += decoder.feed(chunk, room) if chunk else decoder.finish(room)
                if len(body) > limit:
                    return result("rejected", "too_large")
                if not chunk:
                    break
                if not sniffed_before and len(body) >= _SNIFF_BYTES:
                    if sniff_format(bytes(body[:_SNIFF_BYTES])) is None:
                        return result("rejected", "not_an_image")
        except _READ_ERRORS as exc:
            reason = _error_reason(exc, budget)
            logger.debug("%s: %s while reading the body (%s)", url, reason, exc)
            return result("pending", reason)
        finally:
            host.charge_bytes(wire)

        data = bytes(body)
        if sniff_format(data) is None:
            return result("rejected", "not_an_image")
        return result("ok", None, data)

    def _drain(self, response: requests.Response, host: HostState) -> None:
        # A short error body read to its end leaves the connection reusable; leaving a
        # long one unread makes `with response` close the connection instead.
        declared = response.headers.get("Content-Length", "")
        if not (declared.isdigit() and int(declared) <= _DRAIN_BYTES):
            return
        try:
            size = len(response.raw.read(_DRAIN_BYTES, decode_content=False))
        except (urllib3.exceptions.HTTPError, OSError):
            return
        self._count("bytes", size)
        host.charge_bytes(size)

    # --- helpers ----------------------------------------------------------------------

    def _host(self, url: str) -> HostState:
        key = host_key(url)
        with self._lock:
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = HostState(key, self._settings, self._clock)
            return host

    def _known_hosts(self) -> list[HostState]:
        with self._lock:
            return list(self._hosts.values())

    def _sleep_until(self, moment: float) -> None:
        for _ in range(3):  # time.sleep may wake a hair early; a virtual clock does not
            delay = moment - self._clock.monotonic()
            if delay <= 0:
                return
            self._clock.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": half fixed, half random, so threads that
        # failed together do not come back together.
        full = min(self._settings.retry_base_s * 2 ** (attempt - 1),
                   self._settings.max_backoff_s)
        return full / 2 + self._rng.uniform(0, full / 2)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount


def host_key(url: str) -> str:
    """`scheme://name:port` of `url`, the scheme's default port filled in: the unit
    that shares one rate limit and one cache-only window. Names are taken as written,
    so 127.0.0.1 and localhost are two hosts."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    name = (parts.hostname or "").lower()
    if ":" in name:  # IPv6 literal
        name = f"[{name}]"
    return f"{scheme}://{name}:{port}"


class _Redirect(NamedTuple):
    status: int
    location: str


def _pending(reason: str, url: str, status: int | None = None) -> FetchResult:
    return FetchResult("pending", reason=reason, http_status=status, final_url=url)


def _rejected(reason: str, url: str, status: int | None = None) -> FetchResult:
    return FetchResult("rejected", reason=reason, http_status=status, final_url=url)


_Settle = Callable[[Ticket], None]


class _Budget:
    """Seconds the network may spend on one image, counted on the real monotonic clock
    while a request or its body is on the wire (`with budget.on_wire():`), across
    redirects and retries. Waits for the rate limit and retry backoff do not count:
    they are ours. While on the wire, the Fetcher's watchdog holds the request to what
    is left, and `spent()` turns true as soon as it cuts the request off."""

    def __init__(self, seconds: float, watchdog: Watchdog):
        self._left = seconds
        self._since: float | None = None
        self._watchdog = watchdog
        self._cut = False
        self._watch = None

    def remaining(self) -> float:
        if self._since is None:
            return self._left
        return self._left - (time.monotonic() - self._since)

    def spent(self) -> bool:
        if self._watch is not None and self._watch.fired:
            self._cut = True
        return self._cut or self.remaining() <= 0

    @contextmanager
    def on_wire(self):
        self._since = time.monotonic()
        try:
            with self._watchdog.watch(self._left) as watch:
                self._watch = watch
                try:
                    yield
                finally:
                    self._cut = self._cut or watch.fired
                    self._watch = None
        finally:
            self._left = self.remaining()
            self._since = None


class _Decoder:
    """Undo a body's Content-Encoding (gzip, x-gzip or deflate), never giving more than
    `room` bytes per call, so a small compressed body cannot swell in memory past the
    limit. Identity, or a coding we did not ask for (we send Accept-Encoding: gzip,
    deflate), passes the bytes as they came: sniff_format then judges them."""

    def __init__(self, header: str):
        codings = [c.strip().lower() for c in header.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        self._kind = None
        if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
            self._kind = "deflate" if codings[0] == "deflate" else "gzip"
        self._obj = self._new(zlib.MAX_WBITS | 16 if self._kind == "gzip"
                              else zlib.MAX_WBITS)
        # deflate: the zlib format, or, from some servers, raw deflate; told apart by
        # the first bytes, kept until the first output shows which.
        self._first: bytearray | None = bytearray() if self._kind == "deflate" else None
        self._members_done = 0  # gzip: members decoded in full
        self._swallow = False   # gzip: trailing garbage after a member is ignored

    @staticmethod
    def _new(wbits: int):
        return zlib.decompressobj(wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        if self._kind is None:
            return data
        if self._first is not None:
            self._first += data
        try:
            return self._decode(data, room)
        except zlib.error:
            if self._first is None:
                raise
            # Not zlib-wrapped (nothing came out yet): try raw deflate on all of it.
            seen, self._first = bytes(self._first), None
            self._obj = self._new(-zlib.MAX_WBITS)
            return self._decode(seen, room)

    def finish(self, room: int) -> bytes:
        if self._kind is None or self._swallow:
            return b""
        return self._obj.flush()[:room]

    def _decode(self, data: bytes, room: int) -> bytes:
        out = bytearray()
        pending = data
        while pending and not self._swallow and len(out) < room:
            try:
                out += self._obj.decompress(pending, room - len(out))
            except zlib.error:
                if not self._members_done:
                    raise
                self._swallow = True  # garbage after a complete gzip member: ignored
                break
            if out and self._first is not None:
                self._first = None  # the format is settled
            if self._obj.eof:
                pending = self._obj.unused_data
                self._members_done += 1
                if self._kind != "gzip":  # deflate has one stream; the rest is ignored
                    self._swallow = True
                elif pending:  # another gzip member follows
                    self._obj = self._new(zlib.MAX_WBITS | 16)
            else:
                pending = self._obj.unconsumed_tail  # only when room ran out
        return bytes(out)


def _check(settings: FetchSettings) -> None:
    """Refuse settings the Fetcher cannot work with (the config layer checks them too;
    this guards direct users). Keys are named as in the config: build.fetch.*"""
    def need(ok: bool, key: str, problem: str) -> None:
        if not ok:
            value = getattr(settings, key)
            raise ConfigError(f"build.fetch.{key}", f"{problem}, got {value!r}")

    def whole(key: str, low: int, high: float = math.inf) -> None:
        value = getattr(settings, key)
        need(isinstance(value, int) and not isinstance(value, bool)
             and low <= value <= high,
             key, f"must be a whole number from {low}"
             + (f" to {high}" if high != math.inf else " up"))

    def number(key: str, positive: bool = True) -> None:
        value = getattr(settings, key)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (value > 0 if positive else value >= 0))
        need(ok, key, "must be a finite number " + ("> 0" if positive else ">= 0"))

    whole("threads", 1, MAX_THREADS)
    number("requests_per_second")
    whole("burst", 1)
    whole("bytes_per_hour", 0)
    number("timeout_s")
    number("image_deadline_s")
    need(len(settings.backoff_schedule_s) > 0, "backoff_schedule_s",
         "needs at least one step")
    need(all(isinstance(step, (int, float)) and math.isfinite(step) and step > 0
             for step in settings.backoff_schedule_s),
         "backoff_schedule_s", "every step must be a finite number > 0")
    number("max_backoff_s")
    whole("max_retries", 0)
    number("retry_base_s", positive=False)
    whole("max_redirects", 0)
    whole("max_bytes", 1)
    need(isinstance(settings.rate_decrease, (int, float))
         and 0 < settings.rate_decrease < 1,
         "rate_decrease", "must be between 0 and 1")
    whole("ramp_successes", 1)
    number("probe_poll_s")


def _make_session(settings: FetchSettings) -> requests.Session:
    session = requests.Session()
    # No urllib3 retries of any kind: retries, redirects and their limits are ours.
    # (read=False also keeps a read timeout a ReadTimeout, not a ConnectionError.)
    retries = Retry(total=0, read=False, redirect=False)
    # Pools whose connections the deadline watchdog can shut down (watchdog.py).
    adapter = WatchedAdapter(pool_connections=16, pool_maxsize=settings.threads,
                             max_retries=retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    agent = settings.user_agent
    if settings.contact:
        agent = f"{agent} (+{settings.contact})"
    session.headers["User-Agent"] = agent
    session.headers["Accept-Encoding"] = _ACCEPT_ENCODING
    # Threads share the session; images need no cookies, so its jar stays empty.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


def _url_problem(url: str) -> str | None:
    """The rejection reason for a URL we will not request, or None."""
    if not isinstance(url, str):
        return "invalid_url"
    # urlsplit would quietly drop tabs and newlines, and strip leading controls and
    # spaces: the URL requested would not be the one the record gave. A URL comes
    # without surrounding whitespace (the build strips it) and without any control
    # character; a space is tolerated only in the path, query and fragment, where it
    # is sent percent-encoded.
    if url != url.strip() or any(_is_control(ch) for ch in url):
        return "invalid_url"
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a bad port
    except (ValueError, TypeError, AttributeError):
        return "invalid_url"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return "unsupported_scheme" if parts.scheme else "invalid_url"
    if not parts.hostname or any(ch.isspace() for ch in parts.netloc):
        return "invalid_url"
    try:
        # As the connection will: an empty or over-long label cannot be sent.
        parts.hostname.encode("idna")
    except UnicodeError:
        return "invalid_url"
    return None


def _is_control(ch: str) -> bool:
    # C0, DEL and C1 controls, and the line breaks that are not controls (U+2028/9).
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def _error_reason(exc: Exception, budget: _Budget) -> str:
    if budget.spent():
        return "deadline_exceeded"
    bad_url = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
               requests.exceptions.MissingSchema)
    if isinstance(exc, bad_url + (urllib3.exceptions.LocationValueError,)):
        return "invalid_url"
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts):
        return "timeout"
    return "connection_error"


def _cap_read_timeout(response: requests.Response, seconds: float) -> None:
    # Each socket read may take no longer than what is left of the deadline, so a
    # silent server cannot overrun it by a whole timeout_s. urllib3 sets the timeout
    # afresh for the next request on this connection.
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:  # Defensive: urllib3 no longer shows the socket
        return
    try:
        sock.settimeout(max(seconds, 0.001))
    except OSError:
        pass
