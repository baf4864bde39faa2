"""Fetch strategies side by side against one throttling loopback host.

    python benchmarks/fetch.py [--rate 20] [--records 400] [--threads 16] [--scale 60]

A loopback ImageHost allows R requests/s (a token bucket) and answers 429 with
Retry-After beyond. Each strategy gets a fresh host and the same records, in one run:

  ours, rps = R        this Fetcher, configured with the host's published rate
  ours, rps = 3R       this Fetcher, configured too high: it must learn R from 429s
  predecessor          the stop-gap in shared/seed, rebuilt here only: a 429 state
                       per worker, Retry-After ignored, windows of
                       min(60 * 2**(n-1), 600) s, and a record skipped or failed
                       becomes a blank, i.e. is lost
  naive                no limit at all; a 429 is retried at once, up to --naive-tries

Ours leaves a record it cannot fetch now pending and tries it again later, as a build's
drain loop does. Times are shrunk by --scale: with the default 60, a Retry-After of 1 s
stands for 60 s and every schedule is divided alike. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import requests
from PIL import Image

from shardtools.fetch import Fetcher
from shardtools.imagehost import ImageHost
from shardtools.settings import FetchSettings

SCHEDULE_S = (60.0, 120.0, 300.0, 600.0)  # the product's default schedule
PREDECESSOR_MAX_S = 600.0
HOST_RETRY_AFTER_S = 60.0  # what the host asks for, before scaling


@dataclass
class Run:
    name: str
    records: int
    rate: float
    downloaded: int = 0
    lost: int = 0
    wall_s: float = 0.0
    requests: int = 0
    http_429: int = 0
    windows: int | None = None  # cache-only windows ours opened; others keep no count
    success_times: list[float] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.records - self.downloaded - self.lost

    def goodput(self) -> float:
        return self.downloaded / self.wall_s / self.rate if self.wall_s else 0.0

    def settled_goodput(self) -> float:
        """Goodput over the second half of the run, once any learning is done."""
        half = self.wall_s / 2
        late = sum(1 for t in self.success_times if t >= half)
        return late / half / self.rate if half else 0.0

    def per_thousand_429(self) -> float:
        return 1000.0 * self.http_429 / self.requests if self.requests else 0.0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        os.environ.pop(name, None)  # every request here is for 127.0.0.1
    image = _jpeg()
    retry_after = HOST_RETRY_AFTER_S / args.scale
    print(f"fetch benchmark: loopback host allowing R = {args.rate:g} requests/s "
          f"(burst {args.host_burst}), 429 + Retry-After beyond")
    print(f"time scale 1/{args.scale:g}: Retry-After {retry_after:g} s stands for "
          f"{HOST_RETRY_AFTER_S:g} s; schedules of {SCHEDULE_S[0]:g} to "
          f"{SCHEDULE_S[-1]:g} s are shrunk alike")
    print(f"{args.records} records, {args.threads} threads; {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.machine()}")
    print()

    runs = []
    plans = [
        ("ours, rps = R", lambda *run: _ours(*run, args, args.rate)),
        ("ours, rps = 3R (R unknown)", lambda *run: _ours(*run, args, 3 * args.rate)),
        ("predecessor", lambda *run: _predecessor(*run, args)),
        (f"naive ({args.naive_tries} tries)", lambda *run: _naive(*run, args)),
    ]
    for name, plan in plans:
        with ImageHost() as host:
            urls = []
            for i in range(args.records):
                host.add(f"/photos/{i}.jpg", image)
                urls.append(host.url(f"/photos/{i}.jpg"))
            host.throttle(args.rate, burst=args.host_burst,
                          retry_after=_header(retry_after))
            run = Run(name, args.records, args.rate)
            started = time.monotonic()
            plan(urls, run, started)
            run.wall_s = time.monotonic() - started
            run.requests, run.http_429 = host.total_requests, host.count_429
        runs.append(run)
        print(f"  done: {name} ({run.wall_s:.1f} s)", file=sys.stderr)

    _print_table(runs)
    print()
    print("targets for ours: goodput >= 0.9 R, <= 20 429s per 1000 requests, 0 lost")
    return 0


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0,
                        help="requests/s the host allows (default 20)")
    parser.add_argument("--host-burst", type=int, default=5,
                        help="the host's token bucket size (default 5)")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--scale", type=float, default=60.0,
                        help="real seconds per benchmark second (default 60)")
    parser.add_argument("--naive-tries", type=int, default=3)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log the fetcher's windows and probes to stderr")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="give each strategy at most this long (default 60)")
    return parser.parse_args(argv)


# --- ours -----------------------------------------------------------------------------

def _ours(urls: list[str], run: Run, started: float, args, rps: float) -> None:
    settings = FetchSettings(
        threads=args.threads, requests_per_second=rps, burst=2, timeout_s=5.0,
        image_deadline_s=10.0,
        backoff_schedule_s=tuple(s / args.scale for s in SCHEDULE_S),
        max_backoff_s=SCHEDULE_S[-1] / args.scale, retry_base_s=1.0 / args.scale,
        probe_poll_s=1.0 / args.scale, user_agent="shardtools-benchmark/0.1")
    todo = deque(urls)
    lock = threading.Lock()
    left = [len(urls)]
    end = started + args.max_seconds

    with Fetcher(settings) as fetcher:
        def worker() -> None:
            while True:
                with lock:
                    if left[0] == 0 or time.monotonic() > end:
                        return
                    url = todo.popleft() if todo else None
                if url is None:  # the rest is in other threads' hands
                    time.sleep(0.005)
                    continue
                result = fetcher.fetch(url)
                if result.outcome == "pending":
                    # What a build's drain loop does: keep it, wait for the host.
                    with lock:
                        todo.append(url)
                    pause = fetcher.next_probe_in()
                    if pause is None:  # a transient fault, no window: back off a bit
                        pause = settings.retry_base_s
                    time.sleep(min(pause, 1.0))
                    continue
                with lock:
                    left[0] -= 1
                    if result.ok:
                        run.downloaded += 1
                        run.success_times.append(time.monotonic() - started)
                    else:
                        run.lost += 1

        _in_threads(worker, args.threads)
        run.windows = sum(host["windows"] for host in fetcher.host_report().values())


# --- the predecessor, rebuilt from its notes ------------------------------------------

class _PredecessorWorker:
    """One DataLoader worker of the stop-gap: its own 429 state, Retry-After unread."""

    def __init__(self, scale: float):
        self.scale = scale
        self.session = requests.Session()
        self.session.trust_env = False
        self.rate_limited = False
        self.rate_limit_until = 0.0
        self.consecutive_429s = 0

    def download(self, url: str) -> bytes | None:
        now = time.monotonic()
        if self.rate_limited:
            if now < self.rate_limit_until:
                return None  # skipped: the training loop used a blank
            self.rate_limited = False
        try:
            response = self.session.get(url, timeout=5)
        except requests.RequestException:
            return None
        if response.status_code == 200:
            self.consecutive_429s = 0
            return response.content
        if response.status_code == 429:
            self.consecutive_429s += 1
            backoff = min(60 * 2 ** (self.consecutive_429s - 1), PREDECESSOR_MAX_S)
            self.rate_limit_until = now + backoff / self.scale
            self.rate_limited = True
        return None


def _predecessor(urls: list[str], run: Run, started: float, args) -> None:
    todo = deque(urls)
    lock = threading.Lock()

    def worker() -> None:
        state = _PredecessorWorker(args.scale)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    url = todo.popleft()
                data = state.download(url)
                with lock:
                    if data is None:
                        run.lost += 1
                    else:
                        run.downloaded += 1
                        run.success_times.append(time.monotonic() - started)
        finally:
            state.session.close()

    _in_threads(worker, args.threads)


# --- naive ----------------------------------------------------------------------------

def _naive(urls: list[str], run: Run, started: float, args) -> None:
    todo = deque(urls)
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as session:
            session.trust_env = False
            while True:
                with lock:
                    if not todo:
                        return
                    url = todo.popleft()
                ok = False
                for _ in range(args.naive_tries):
                    try:
                        response = session.get(url, timeout=5)
                    except requests.RequestException:
                        continue
                    if response.status_code == 200:
                        ok = True
                        break
                with lock:
                    if ok:
                        run.downloaded += 1
                        run.success_times.append(time.monotonic() - started)
                    else:
                        run.lost += 1

    _in_threads(worker, args.threads)


# --- shared ---------------------------------------------------------------------------

def _in_threads(worker, count: int) -> None:
    threads = [threading.Thread(target=worker, name=f"bench-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _print_table(runs: list[Run]) -> None:
    header = (f"{'strategy':<28} {'goodput/R':>9} {'settled':>8} {'429s/1000':>9} "
              f"{'requests':>8} {'windows':>7} {'wall s':>7} {'ok':>5} {'lost':>5} "
              f"{'pending':>7}")
    print(header)
    print("-" * len(header))
    for run in runs:
        windows = "-" if run.windows is None else str(run.windows)
        print(f"{run.name:<28} {run.goodput():>9.2f} {run.settled_goodput():>8.2f} "
              f"{run.per_thousand_429():>9.1f} {run.requests:>8} {windows:>7} "
              f"{run.wall_s:>7.1f} {run.downloaded:>5} {run.lost:>5} {run.pending:>7}")
    print("goodput/R: images per second over the run, as a fraction of R; settled: the "
          "same over its second half.")
    print("lost: given up on (the predecessor trained on a blank instead); pending: "
          "kept for a later pass.")
    print("A strategy that gives up finishes early: read its goodput next to ok.")


def _header(seconds: float) -> int | str:
    # Whole seconds as RFC 9110 wants; a fraction only when the scale leaves one.
    return int(seconds) if float(seconds).is_integer() else f"{seconds:.3f}"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
