"""Where the fetcher takes its time from: the real clocks, or a virtual one in tests."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """The three readings the fetcher needs. Windows and pacing use `monotonic`; `time`
    only turns an HTTP-date into a delay and dates log lines."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""

    def time(self) -> float:
        """Wall-clock time in seconds since the epoch (UTC, whatever the local zone)."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds` (>= 0)."""


class SystemClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A thread-safe virtual clock: `sleep` moves time forward and returns at once.

    Both readings move together, so a test walks a 600 s schedule in microseconds.
    Sleepers do not wait for one another: each moves the one shared time forward by its
    own request. With several threads sleeping at once, time can therefore run ahead of
    what any one of them asked. Bounds of the form "at most N requests in T seconds"
    stay meaningful on this clock; "this request came no later than t" does not.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0):
        self._lock = threading.Lock()
        self._monotonic = float(start)
        self._wall_offset = float(wall_start) - float(start)

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        with self._lock:
            return self._monotonic + self._wall_offset

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, as a test's "meanwhile, a minute passes"."""
        if not seconds >= 0:  # also refuses NaN, as time.sleep does
            raise ValueError(f"cannot move time by {seconds!r} seconds")
        with self._lock:
            self._monotonic += seconds
