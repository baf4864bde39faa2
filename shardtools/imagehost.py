"""A throttling HTTP image host on 127.0.0.1, for the demo, the tests and benchmarks.

    with ImageHost() as host:
        host.add("/a.jpg", jpeg_bytes)
        host.throttle(rate=5, burst=2, retry_after=1)   # 429 beyond 5 requests/s
        host.script("/b.jpg", Reply.unavailable(), Reply.unavailable())  # then 200
        host.answer("/loop", Reply.redirect("/loop"))    # every time
        ... fetch host.url("/a.jpg") ...
        host.total_requests, host.count("/a.jpg"), host.count_429, host.arrivals()

What a path answers, first match wins: the throttle (when it has no token left), then
the path's scripted replies (each used once, in order), then its standing reply
(`answer` or `add`), else 404. It binds 127.0.0.1 only, on a port the system picks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

RetryAfter = int | float | str | None

# A held reply waits at most this long for its gate: a forgotten gate must not hang a
# test run.
_MAX_HOLD_S = 30.0
# stop() waits this long for each handler thread; a cut connection ends one at once.
_MAX_JOIN_S = 5.0


@dataclass(frozen=True)
class Reply:
    """One answer. `body=None` sends the path's stored body (see `ImageHost.add`)."""

    status: int = 200
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # False: no Content-Length; the body ends when the connection closes.
    send_length: bool = True
    # With trickle_bytes > 0 the body goes out that many bytes per trickle_interval_s.
    trickle_bytes: int = 0
    trickle_interval_s: float = 0.1
    # Wait for this event (or the host's stop) before answering.
    gate: threading.Event | None = field(default=None, compare=False)

    @classmethod
    def too_many_requests(cls, retry_after: RetryAfter = None) -> Reply:
        """429, with a Retry-After header unless `retry_after` is None."""
        return cls(429, b"Too Many Requests", "text/plain", _retry_after(retry_after))

    @classmethod
    def unavailable(cls, retry_after: RetryAfter = None) -> Reply:
        """503, with a Retry-After header unless `retry_after` is None."""
        return cls(503, b"Service Unavailable", "text/plain", _retry_after(retry_after))

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, b"", "text/plain", (("Location", location),))

    @classmethod
    def html(cls, status: int = 200) -> Reply:
        """The page a host serves instead of an image (login wall, error page)."""
        page = b"<!DOCTYPE html>\n<html><body><h1>No picture here</h1></body></html>\n"
        return cls(status, page, "text/html; charset=utf-8")

    @classmethod
    def trickle(cls, body: bytes | None = None, bytes_per_tick: int = 1,
                interval_s: float = 0.1) -> Reply:
        """200 whose body comes `bytes_per_tick` bytes at a time, `interval_s` apart."""
        return cls(200, body, trickle_bytes=bytes_per_tick,
                   trickle_interval_s=interval_s)

    def held(self, gate: threading.Event) -> Reply:
        """This reply, sent once `gate` is set: keeps a request in flight for a test."""
        return replace(self, gate=gate)


@dataclass(frozen=True)
class SeenRequest:
    """One request as the host saw it."""

    path: str
    arrival: float  # on the host's clock
    headers: dict[str, str]


class ImageHost:
    """Serve images over HTTP on loopback, throttled on demand, counting what arrives.

    `clock` stamps arrivals and drives the throttle; pass a test's virtual clock to
    throttle in virtual time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Daemon handler threads are not joined by socketserver; stop() joins them.
        self._handlers: list[threading.Thread] = []

        self._standing: dict[str, Reply] = {}
        self._stored: dict[str, tuple[bytes, str]] = {}
        self._scripts: dict[str, deque[Reply]] = {}
        self._throttle: _Bucket | None = None

        self._seen: list[SeenRequest] = []
        self._counts: Counter[str] = Counter()
        self._count_429 = 0

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> ImageHost:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="imagehost", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, close the socket, join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            self._stopping.set()
            connections = list(self._connections)
        for connection in connections:
            _cut(connection)
        server.server_close()
        self._thread.join()
        self._thread = None
        with self._lock:
            handlers, self._handlers = self._handlers, []
        for handler in handlers:
            handler.join(timeout=_MAX_JOIN_S)

    def __enter__(self) -> ImageHost:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("ImageHost is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + _checked_path(path)

    # --- what it serves ---------------------------------------------------------------

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg") -> None:
        """Serve `body` with 200 at `path`, every time."""
        with self._lock:
            self._stored[_checked_path(path)] = (bytes(body), content_type)
            self._standing.pop(path, None)

    def answer(self, path: str, reply: Reply) -> None:
        """Answer every request for `path` with `reply` (after any scripted replies)."""
        with self._lock:
            self._standing[_checked_path(path)] = reply

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests for `path` with `replies`, one each, in order."""
        with self._lock:
            self._scripts.setdefault(_checked_path(path), deque()).extend(replies)

    def throttle(self, rate: float, burst: int = 1,
                 retry_after: RetryAfter = 1) -> None:
        """Allow `rate` requests/s over all paths (a token bucket holding `burst`) and
        answer 429 beyond, with Retry-After unless `retry_after` is None."""
        with self._lock:
            self._throttle = _Bucket(rate, burst, self._clock(), retry_after)

    def relent(self) -> None:
        """Stop throttling."""
        with self._lock:
            self._throttle = None

    # --- what it saw ------------------------------------------------------------------

    @property
    def total_requests(self) -> int:
        with self._lock:
            return len(self._seen)

    @property
    def count_429(self) -> int:
        """429 answers sent, by the throttle or by a script."""
        with self._lock:
            return self._count_429

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def arrivals(self) -> list[float]:
        """Arrival time of every request, on the host's clock, in arrival order."""
        with self._lock:
            return [seen.arrival for seen in self._seen]

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> bool:
        """Block until `count` requests have arrived, or `timeout_s` (real) passes."""
        deadline = time.monotonic() + timeout_s
        while self.total_requests < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    # --- serving, in handler threads --------------------------------------------------

    def _choose(self, path: str, headers: dict[str, str]) -> tuple[Reply, bytes, str]:
        with self._lock:
            now = self._clock()
            self._seen.append(SeenRequest(path, now, headers))
            self._counts[path] += 1
            reply = None
            if self._throttle is not None and not self._throttle.take(now):
                reply = Reply.too_many_requests(self._throttle.retry_after)
            elif self._scripts.get(path):
                reply = self._scripts[path].popleft()
            elif path in self._standing:
                reply = self._standing[path]
            elif path in self._stored:
                reply = Reply()
            else:
                reply = Reply(404, b"Not Found", "text/plain")
            if reply.status == 429:
                self._count_429 += 1
            stored_body, stored_type = self._stored.get(path, (b"", None))
        body = reply.body if reply.body is not None else stored_body
        content_type = reply.content_type or stored_type or "application/octet-stream"
        return reply, body, content_type

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {name: value for name, value in handler.headers.items()}
        reply, body, content_type = self._choose(handler.path, headers)
        if reply.gate is not None:
            deadline = time.monotonic() + _MAX_HOLD_S
            while not reply.gate.wait(0.01):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    handler.close_connection = True
                    return
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", content_type)
            for name, value in reply.headers:
                handler.send_header(name, value)
            if reply.send_length:
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            if reply.trickle_bytes > 0:
                self._trickle(handler, body, reply)
            else:
                handler.wfile.write(body)
        except OSError:  # the client went away; nothing to tell anyone
            handler.close_connection = True

    def _trickle(self, handler: BaseHTTPRequestHandler, body: bytes,
                 reply: Reply) -> None:
        for start in range(0, len(body), reply.trickle_bytes):
            handler.wfile.write(body[start:start + reply.trickle_bytes])
            handler.wfile.flush()
            if self._stopping.wait(reply.trickle_interval_s):
                handler.close_connection = True
                return

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            self._handlers = [t for t in self._handlers if t.is_alive()]
            self._handlers.append(threading.current_thread())
            stopping = self._stopping.is_set()
        if stopping:  # accepted just as stop() began: it would not see this one
            _cut(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops the SYNs of a 16-thread client's first burst, and
    # each dropped one costs that client a second before it tries again.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # The default prints a traceback to stderr; a client hanging up is routine here.
        logger.debug("imagehost: error serving %s", client_address, exc_info=True)


def _handler_for(host: ImageHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
        server_version = "imagehost/1"
        timeout = 10  # an idle keep-alive connection is dropped after this

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm
            # holds the body for the client's delayed ACK, some 40 ms a request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host._opened(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                host._closed(self.connection)

        def do_GET(self) -> None:
            host._serve(self)

        def log_message(self, format: str, *args) -> None:
            pass  # one stderr line per request would drown test and benchmark output

    return Handler


class _Bucket:
    """The host's own token bucket: `rate` tokens/s, holding at most `burst`."""

    def __init__(self, rate: float, burst: int, now: float, retry_after: RetryAfter):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.retry_after = retry_after
        self._tokens = float(self.burst)
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _retry_after(value: RetryAfter) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    # A str goes out verbatim (an HTTP-date, or garbage on purpose); a number as digits.
    return (("Retry-After", value if isinstance(value, str) else str(value)),)


def _checked_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    return path


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
