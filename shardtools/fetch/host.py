"""What the fetcher knows about one host, shared by every download thread.

A host is `scheme://name:port` as written in the URL, so `127.0.0.1` and `localhost`
are two hosts even when they are the same server. Its state moves like this:

             429, or 503 with Retry-After           window over
    open ------------------------------> window ---------------> probing
     ^                                     ^                        |
     |                                     +--- the probe: 429 -----+
     +------------- the probe: any other answer --------------------+

- open: requests go out, paced by a token bucket (requests_per_second, burst; and
  bytes_per_hour when set) held here, so the ceiling is the host's, not a thread's.
- window: cache-only. No request goes to the host; callers are told to leave their
  record pending. The length is the host's Retry-After when usable, else the next step
  of backoff_schedule_s (the last one repeating), never more than max_backoff_s.
- probing: the first caller after the window sends one request, the probe; everyone
  else is refused, as in the window, until it has its answer. An answer reopens the host
  at the lowered pace and resets the schedule; a 429 opens the next window.

Each window multiplies the pace by rate_decrease, and a host that has throttled us once
gets no bursts any more. Answers then raise the pace again: by requests_per_second /
ramp_successes each, up to a settle point, then by 0.01% each. The settle point is

- requests_per_second after the first 429 at full pace with bursts on: the burst, now
  off, is blamed first;
- else 90% of the pace that drew the 429, when that pace had held for
  5 * ramp_successes answers: the limit is just under it;
- else 75% of it: the 429 came quickly, the limit is well under it.

So the pace settles near a limit the host never announced, in a few windows.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..settings import FetchSettings
from .clock import Clock
from .retry_after import parse_retry_after

logger = logging.getLogger(__name__)

# The fast climb stops this far under the pace that drew the last 429 when that pace
# had held for a while (the limit is close under it)...
_SETTLE_FRACTION = 0.9
# ...or this far when the 429 came before it had (the limit is further down).
_QUICK_SETTLE_FRACTION = 0.75
# "A while" is this many times ramp_successes answers: a host's own burst can hide an
# overshoot for some dozens of answers.
_HOLD_FACTOR = 5
# Past the settle point the pace creeps up by this fraction per answer: some 1000
# answers to gain 10%, so a host whose limit lies just above it sees a 429 rarely.
_CREEP_FRACTION = 0.0001
# The pace never drops under this fraction of requests_per_second.
_FLOOR_FRACTION = 0.01
# The byte ceiling lets this many seconds' worth of bytes through at once.
_BYTES_TOLERANCE_S = 60.0

_OPEN, _WINDOW, _PROBING = "open", "window", "probing"


@dataclass(frozen=True)
class Ticket:
    """Leave to send one request: not before `not_before` (monotonic seconds)."""

    not_before: float
    epoch: int
    is_probe: bool


class HostState:
    """Lock-protected state of one host. Every admitted ticket must be settled exactly
    once, by `answered`, `throttled` or `failed`."""

    def __init__(self, key: str, settings: FetchSettings, clock: Clock):
        self.key = key
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()

        self._ceiling = float(settings.requests_per_second)
        self._rate = self._ceiling
        self._burst = max(1, settings.burst)
        self._settle = self._ceiling  # where the fast climb stops
        self._answers_at_pace = 0  # answers since the fast climb stopped
        self._step = self._ceiling / max(1, settings.ramp_successes)
        self._floor = self._ceiling * _FLOOR_FRACTION
        self._tat = clock.monotonic()  # theoretical arrival time of the next request
        self._byte_tat = self._tat
        self._seconds_per_byte = (
            3600.0 / settings.bytes_per_hour if settings.bytes_per_hour > 0 else 0.0
        )

        self._state = _OPEN
        self._epoch = 0  # one more at each window; tickets of older epochs are stale
        self._window_started = 0.0
        self._window_end = 0.0
        self._schedule_position = 0

        self._requests = 0
        self._http_429 = 0
        self._windows = 0

    # --- asked by the fetcher, around each request -----------------------------------

    def admit(self) -> Ticket | None:
        """A ticket to send one request, or None while the host is cache-only."""
        with self._lock:
            now = self._clock.monotonic()
            if self._state == _PROBING:
                return None
            if self._state == _WINDOW:
                if now < self._window_end:
                    return None
                self._state = _PROBING
                logger.debug("host %s: window over, sending the probe", self.key)
                return Ticket(self._reserve(now), self._epoch, is_probe=True)
            return Ticket(self._reserve(now), self._epoch, is_probe=False)

    def confirm(self, ticket: Ticket) -> bool:
        """Call right before sending. False: the host went cache-only since `admit`, so
        the request must not go (admit again)."""
        with self._lock:
            valid = ticket.epoch == self._epoch and self._state == (
                _PROBING if ticket.is_probe else _OPEN
            )
            if valid:
                self._requests += 1
            return valid

    def answered(self, ticket: Ticket) -> None:
        """The host answered with anything but a throttle: reopen after a probe, else
        raise the pace a step."""
        with self._lock:
            if ticket.epoch != self._epoch:
                return
            if ticket.is_probe and self._state == _PROBING:
                self._state = _OPEN
                self._schedule_position = 0
                waited = self._clock.monotonic() - self._window_started
                logger.info(
                    "host %s: probe answered after %.0f s cache-only; downloads resume "
                    "at %.3g requests/s, climbing back towards %.3g",
                    self.key, waited, self._rate, self._ceiling,
                )
            elif self._state == _OPEN:
                self._climb()

    def throttled(self, ticket: Ticket, status: int, retry_after: str | None) -> None:
        """The host answered 429, or 503 with Retry-After: open a window unless another
        request's throttle already did (then this one is old news)."""
        with self._lock:
            if status == 429:
                self._http_429 += 1
            expected = _PROBING if ticket.is_probe else _OPEN
            if ticket.epoch != self._epoch or self._state != expected:
                return
            self._open_window(status, retry_after)

    def failed(self, ticket: Ticket) -> None:
        """The request brought no answer (timeout, reset). No news about the limit; a
        failed probe hands the probe on to the next caller."""
        with self._lock:
            if not ticket.is_probe or ticket.epoch != self._epoch:
                return
            if self._state == _PROBING:
                self._state = _WINDOW
                self._window_end = self._clock.monotonic()

    def charge_bytes(self, count: int) -> None:
        """Count body bytes against bytes_per_hour."""
        if not self._seconds_per_byte or count <= 0:
            return
        with self._lock:
            now = self._clock.monotonic()
            self._byte_tat = max(self._byte_tat, now) + count * self._seconds_per_byte

    # --- read by reports and the build's drain loop -----------------------------------

    def seconds_until_probe(self) -> float | None:
        """None when open; else how long until a request may go (probe_poll_s while the
        probe is out, since its answer cannot be foreseen)."""
        with self._lock:
            if self._state == _OPEN:
                return None
            if self._state == _PROBING:
                return self._settings.probe_poll_s
            return max(0.0, self._window_end - self._clock.monotonic())

    def report(self) -> dict:
        with self._lock:
            remaining = 0.0
            if self._state == _WINDOW:
                remaining = max(0.0, self._window_end - self._clock.monotonic())
            return {
                "requests": self._requests,
                "http_429": self._http_429,
                "in_window": self._state != _OPEN,
                "window_remaining_s": remaining,
                "current_rate": self._rate,
                "probing": self._state == _PROBING,
                "windows": self._windows,
            }

    # --- under the lock ---------------------------------------------------------------

    def _reserve(self, now: float) -> float:
        # Virtual scheduling (GCRA): each grant pushes the theoretical arrival time one
        # interval on; a request may go `burst - 1` intervals ahead of it. Reserving a
        # time instead of polling for a token keeps threads from racing each other.
        interval = 1.0 / self._rate
        tolerance = (self._burst - 1) * interval
        tat = max(self._tat, now)
        grant = max(now, tat - tolerance)
        if self._seconds_per_byte:
            grant = max(grant, self._byte_tat - _BYTES_TOLERANCE_S)
        self._tat = max(tat, grant) + interval
        return grant

    def _climb(self) -> None:
        if self._rate < self._settle:
            self._rate = min(self._rate + self._step, self._settle)
            return
        self._answers_at_pace += 1
        if self._rate < self._ceiling:
            self._rate = min(self._rate * (1.0 + _CREEP_FRACTION), self._ceiling)

    def _open_window(self, status: int, retry_after: str | None) -> None:
        settings = self._settings
        now = self._clock.monotonic()
        delay = parse_retry_after(retry_after, self._clock.time())
        schedule = settings.backoff_schedule_s
        if delay is not None:
            why = f"HTTP {status} with Retry-After {retry_after.strip()!r}"
        else:
            step = min(self._schedule_position, len(schedule) - 1)
            delay = schedule[step]
            if retry_after is None:
                why = f"HTTP {status} without Retry-After"
            else:
                why = f"HTTP {status} with unusable Retry-After {retry_after.strip()!r}"
            why += f"; backoff schedule step {step + 1} of {len(schedule)}"
        if delay > settings.max_backoff_s:
            delay = settings.max_backoff_s
            why += ", capped at max_backoff_s"
        self._schedule_position += 1

        if self._state == _OPEN:  # our pace drew it; a probe's 429 says nothing of pace
            self._window_started = now
            if self._burst > 1 and self._rate >= self._ceiling:
                # The first 429 at full pace: the burst, which goes off now, is the
                # likelier culprit. Should the pace be too high, the next 429 says so.
                self._settle = self._ceiling
            else:
                held = self._answers_at_pace >= _HOLD_FACTOR * settings.ramp_successes
                fraction = _SETTLE_FRACTION if held else _QUICK_SETTLE_FRACTION
                self._settle = self._rate * fraction
            self._answers_at_pace = 0
        self._rate = max(self._floor, self._rate * settings.rate_decrease)
        self._burst = 1
        self._state = _WINDOW
        self._epoch += 1
        self._windows += 1
        self._window_end = now + delay
        self._tat = now  # tickets reserved before the window are stale now

        probe_at = time.strftime("%H:%M:%S", time.gmtime(self._clock.time() + delay))
        logger.warning(
            "host %s: cache-only for %.0f s (%s); its records wait as pending; "
            "one probe request at %s UTC, then %.3g requests/s",
            self.key, delay, why, probe_at, self._rate,
        )
