"""Enforce the per-image deadline on a socket that keeps answering, just slowly.

A socket read timeout bounds one read, not a request: a server that sends one header
line every half second never trips a 2 s timeout, yet can hold a thread for minutes
before `requests` returns. So each `Fetcher` runs one `Watchdog`: one timer thread,
whatever the number of requests in flight. A request runs inside `Watchdog.watch(s)`;
when its `s` seconds (real monotonic time) run out first, the watchdog shuts the
request's socket down (`shutdown(SHUT_RDWR)`, not `close`: the owning thread still holds
the file descriptor). Whatever the thread is blocked on (connect's TLS handshake, the
status line, a header, a body read) then returns at once with an error or an early end,
and the fetcher reports `deadline_exceeded`.

The socket is found through the connection classes installed in the session's pools
(`WatchedAdapter`): a connection claims the calling thread's current watch when it
connects and when it sends a request, and records its socket as soon as one exists. The
watchdog shuts a socket down only while its connection still belongs to the watch that
ran out, checked under the watchdog's lock; a connection put back into its pool is
untied from its request first, so one handed on to another request is never touched.
A connection that was shut down reports itself as not connected, so its pool closes it
instead of reusing it.

What no socket operation can cover: name resolution (`getaddrinfo` cannot be
interrupted), and the TCP connect itself, which has no socket to shut down until it
succeeds. The fetcher caps the connect timeout at what is left of the deadline instead;
a name with several addresses may try each.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

logger = logging.getLogger(__name__)

# close() waits this long for the timer thread; it wakes at once, so this is a bound.
_JOIN_S = 5.0
THREAD_NAME = "shardtools-fetch-watchdog"

# The watch of the request the current thread is sending. Connections are used by one
# thread at a time (a pool hands each to one request), so a thread-local is exact.
_current = threading.local()


class Watch:
    """One request's deadline. `fired` turns true when the watchdog cut it off."""

    __slots__ = ("deadline", "fired", "armed", "connection", "_dog")

    def __init__(self, dog: Watchdog, deadline: float):
        self._dog = dog
        self.deadline = deadline
        self.fired = False
        self.armed = True
        self.connection: _WatchedConnection | None = None

    def claim(self, connection: _WatchedConnection) -> None:
        """`connection` now carries this watch's request."""
        with self._dog._cond:
            connection._watch = self
            self.connection = connection
            if self.fired:  # ran out before the request even had its connection
                connection._abort()

    def adopt(self, connection: _WatchedConnection, sock: socket.socket) -> None:
        """`connection` has just opened `sock`."""
        with self._dog._cond:
            connection._raw_sock = sock
            if self.fired and connection._watch is self:
                connection._abort()


class Watchdog:
    """One timer thread that cuts off requests past their deadline (see module doc).

    The thread starts with the first watch and stops at `close`; a watch after `close`
    starts it again."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None  # the one that runs, if any

    @contextmanager
    def watch(self, seconds: float) -> Iterator[Watch]:
        """Run a request for at most `seconds` more (real time) in this block."""
        watch = Watch(self, time.monotonic() + max(seconds, 0.0))
        with self._cond:
            self._start_locked()
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._heap[0][2] is watch:
                self._cond.notify()
        previous = getattr(_current, "watch", None)
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = previous
            with self._cond:
                watch.armed = False
                connection, watch.connection = watch.connection, None
                if connection is not None and connection._watch is watch:
                    connection._watch = None
                # Drop finished watches from the top now; the rest go as time passes.
                while self._heap and not self._heap[0][2].armed:
                    heapq.heappop(self._heap)

    def close(self) -> None:
        """Stop the timer thread (every watch must have ended)."""
        with self._cond:
            thread, self._thread = self._thread, None  # tells it to stop
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_S)

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                now = time.monotonic()
                while self._heap and (not self._heap[0][2].armed
                                      or self._heap[0][0] <= now):
                    _, _, watch = heapq.heappop(self._heap)
                    if watch.armed:
                        self._fire_locked(watch)
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(wait)

    @staticmethod
    def _fire_locked(watch: Watch) -> None:
        watch.fired = True
        watch.armed = False
        connection = watch.connection
        if connection is not None and connection._watch is watch:
            logger.debug("deadline: cutting off the request on %s", connection.host)
            connection._abort()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        # The plain socket's shutdown, also for an SSLSocket: it acts on the file
        # descriptor only, and leaves the TLS object to the thread that uses it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # not connected yet, already closed, or detached by the TLS wrap
        pass


class _WatchedConnection:
    """Mixin for urllib3's connection classes: claims the thread's watch, and can be
    shut down by the watchdog. Set only under the watchdog's lock."""

    _watch: Watch | None = None
    _raw_sock: socket.socket | None = None
    _aborted = False

    def _claim(self) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None and watch.armed:
            watch.claim(self)

    def _release(self) -> None:
        """Back in its pool: the connection carries no request any more."""
        watch = self._watch
        if watch is None:
            return
        with watch._dog._cond:
            if self._watch is watch:
                self._watch = None
                if watch.connection is self:
                    watch.connection = None

    def _abort(self) -> None:
        self._aborted = True
        _shutdown(getattr(self, "sock", None))
        _shutdown(self._raw_sock)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        watch = self._watch
        if watch is not None:
            watch.adopt(self, sock)
        return sock

    def connect(self) -> None:
        self._claim()
        super().connect()

    def request(self, *args, **kwargs) -> None:
        self._claim()
        super().request(*args, **kwargs)

    @property
    def is_connected(self) -> bool:
        # A connection the watchdog shut down must not be reused: its pool closes it.
        return not self._aborted and super().is_connected

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw_sock = None
            self._aborted = False


class WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _ReleasingPool:
    """Mixin for urllib3's pools: a connection put back is untied from its request
    before another request can take it."""

    def _put_conn(self, conn) -> None:
        if isinstance(conn, _WatchedConnection):
            conn._release()
        super()._put_conn(conn)


class _WatchedHTTPPool(_ReleasingPool, HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class _WatchedHTTPSPool(_ReleasingPool, HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


_POOL_CLASSES = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, with pools whose connections the watchdog can cut off."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # HTTP(S) proxies use the plain pools; SOCKS ones bring their own classes and
        # keep them (their requests are still bounded by the read-timeout cap).
        if isinstance(manager, urllib3.ProxyManager):
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
