"""Build progress a user can watch: a live bar on a terminal, periodic log lines elsewhere.

The build calls `start(total)`, then `update(status, source)` once per sample resolved,
`requeue(n)` when a drain round tries n pending samples again, `hosts(in_window)` when it
knows, then `close()`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

logger = logging.getLogger(__name__)


class Progress:
    """Counts only; subclasses show them."""

    def __init__(self):
        self.counts = Counter()
        self.total = 0
        self.in_window = 0
        self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total += total

    def update(self, status: str, source: str | None) -> None:
        self.counts[status] += 1
        if status == "written":
            self.counts["from_cache" if source == "cache" else "downloaded"] += 1
        self._shown()

    def requeue(self, count: int) -> None:
        """`count` pending samples go round again (drain): they will be counted anew."""
        self.counts["pending"] -= count
        self._requeued(count)

    def hosts(self, in_window: int) -> None:
        self.in_window = in_window

    def _requeued(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        c = self.counts
        return (f"written {c['written']:,} (cache {c['from_cache']:,}, downloaded "
                f"{c['downloaded']:,}), pending {c['pending']:,}, rejected {c['rejected']:,}, "
                f"duplicates {c['duplicate']:,}, hosts cache-only {self.in_window}")

    def _shown(self) -> None:
        pass


class LogProgress(Progress):
    """One INFO line every `every_s` seconds: for logs, CI and pipes."""

    def __init__(self, every_s: float = 10.0):
        super().__init__()
        self.every_s = every_s
        self._last = time.monotonic()

    def _shown(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        done = sum(self.counts[s] for s in ("written", "pending", "rejected", "duplicate"))
        rate = done / max(now - self.started, 1e-9)
        logger.info("progress: %s/%s samples resolved, %.0f/s: %s", f"{done:,}",
                    f"{self.total:,}", rate, self.describe())


class BarProgress(Progress):
    """A tqdm bar on stderr with the live counts as its postfix."""

    def __init__(self):
        super().__init__()
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="img", file=sys.stderr, dynamic_ncols=True,
                         smoothing=0.05, mininterval=0.5)

    def start(self, total: int) -> None:
        super().start(total)
        self._bar.total = self.total
        self._bar.refresh()

    def update(self, status: str, source: str | None) -> None:
        super().update(status, source)
        self._bar.update(1)
        c = self.counts
        self._bar.set_postfix_str(
            f"ok {c['written']:,} cache {c['from_cache']:,} net {c['downloaded']:,} "
            f"pending {c['pending']:,} rejected {c['rejected']:,} "
            f"cache-only hosts {self.in_window}", refresh=False)

    def _requeued(self, count: int) -> None:
        self._bar.update(-count)

    def close(self) -> None:
        self._bar.close()


def progress_for_terminal(quiet: bool) -> Progress:
    """The bar when stderr is a terminal and the user did not ask for quiet, else log lines."""
    if not quiet and sys.stderr.isatty():
        return BarProgress()
    return LogProgress()
