"""Builders for fetcher tests: a virtual clock, a loopback host on it, fetchers."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

from shardtools.fetch import Fetcher, ManualClock
from shardtools.imagehost import ImageHost
from shardtools.settings import FetchSettings

# Settings every fetcher test starts from: the product's schedule, few retries, short
# real-time limits so a test that does wait on a socket waits briefly.
BASE_SETTINGS = {
    "threads": 16,
    "requests_per_second": 5.0,
    "burst": 2,
    "timeout_s": 2.0,
    "image_deadline_s": 5.0,
    "backoff_schedule_s": (60.0, 120.0, 300.0, 600.0),
    "max_backoff_s": 600.0,
    "max_retries": 2,
    "retry_base_s": 1.0,
    "max_redirects": 5,
    "max_bytes": 100_000,
}


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Requests honour *_proxy variables; tests must only ever talk to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def host(clock):
    """A loopback image host whose throttle and arrival times run on the test clock."""
    with ImageHost(clock=clock.monotonic) as image_host:
        yield image_host


@pytest.fixture
def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (40, 120, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def make_fetcher(clock):
    """make_fetcher(**overrides) -> a Fetcher on the test's clock, closed afterwards."""
    made = []

    def make(**overrides) -> Fetcher:
        fetcher = Fetcher(FetchSettings(**{**BASE_SETTINGS, **overrides}), clock=clock)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


@pytest.fixture
def fetcher(make_fetcher) -> Fetcher:
    return make_fetcher()


@pytest.fixture
def time_zone():
    """time_zone(tz) puts the process in `tz` for the test; the old zone comes back."""
    before = os.environ.get("TZ")

    def switch(tz: str) -> None:
        os.environ["TZ"] = tz
        time.tzset()

    yield switch
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture
def one_host():
    """one_host(fetcher) -> the report of the one host a test talked to."""

    def report(fetcher: Fetcher) -> dict:
        (only,) = fetcher.host_report().values()
        return only

    return report
