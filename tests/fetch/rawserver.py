"""A raw socket server on 127.0.0.1, for faults no HTTP server library makes on purpose:
a status line or headers that trickle. Each connection plays the next script.

A script is a sequence of `(bytes, pause_s)` pieces: send the bytes, then wait. Between
pieces the server watches the socket, so it sees at once when the client closes (or
shuts down) the connection before the script is over: `Connection.cut_short`. After the
last piece it closes the connection. Every loop is bounded by `stop()`.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import deque
from dataclasses import dataclass, field

Script = tuple[tuple[bytes, float], ...]

# Bounds, not timings: how long stop() waits for a handler, and how often loops look
# at the stop flag.
_JOIN_S = 5.0
_POLL_S = 0.02
_MAX_HEAD = 64 * 1024


@dataclass
class Connection:
    """What one connection saw."""

    request: bytes = b""
    pieces_sent: int = 0
    pieces: int = 0
    cut_short: bool = False  # the client went away before the script was over
    done: threading.Event = field(default_factory=threading.Event)


def trickle(data: bytes, step: int, pause_s: float) -> Script:
    """`data` in pieces of `step` bytes, `pause_s` apart."""
    return tuple((data[i:i + step], pause_s) for i in range(0, len(data), step))


def response(status_line: bytes, headers: list[bytes], body: bytes) -> bytes:
    head = status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return head + body


class RawServer:
    def __init__(self, *scripts: Script):
        self._scripts = deque(scripts)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(_POLL_S)
        self.port = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._acceptor.join(_JOIN_S)
        for thread in list(self._threads):
            thread.join(_JOIN_S)
        self._listener.close()

    def url(self, path: str = "/a.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_done(self, index: int, bound_s: float = _JOIN_S) -> bool:
        """Wait (at most `bound_s`) until connection `index` has ended."""
        for _ in range(int(bound_s / _POLL_S)):
            with self._lock:
                if index < len(self.connections):
                    seen = self.connections[index]
                    break
            self._stop.wait(_POLL_S)
        else:
            return False
        return seen.done.wait(bound_s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                script = self._scripts.popleft() if self._scripts else ()
                seen = Connection(pieces=len(script))
                self.connections.append(seen)
            thread = threading.Thread(target=self._serve, args=(sock, seen, script),
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, seen: Connection, script: Script) -> None:
        with sock:
            try:
                if self._read_head(sock, seen):
                    for data, pause_s in script:
                        sock.sendall(data)
                        seen.pieces_sent += 1
                        if self._client_left(sock, pause_s):
                            break
            except OSError:
                pass
            finally:
                seen.cut_short = seen.pieces_sent < seen.pieces
                seen.done.set()

    def _read_head(self, sock: socket.socket, seen: Connection) -> bool:
        while b"\r\n\r\n" not in seen.request and len(seen.request) < _MAX_HEAD:
            if self._stop.is_set():
                return False
            readable, _, _ = select.select([sock], [], [], _POLL_S)
            if readable:
                data = sock.recv(4096)
                if not data:
                    return False
                seen.request += data
        return True

    def _client_left(self, sock: socket.socket, pause_s: float) -> bool:
        """Wait `pause_s` (cut short by stop()); True as soon as the client has gone."""
        for _ in range(max(1, round(pause_s / _POLL_S))):
            if self._stop.is_set():
                return True
            readable, _, _ = select.select([sock], [], [], _POLL_S)
            if readable:
                try:
                    if not sock.recv(4096):
                        return True
                except OSError:
                    return True
        return False
