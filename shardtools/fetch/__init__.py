"""Rate-limit-aware image fetching: one state per host, and pending rather than blank.

See docs/fetching.md for the behaviour and the reason codes.
"""

from .clock import SYSTEM_CLOCK, Clock, ManualClock
from .fetcher import FetchResult, Fetcher
from .retry_after import parse_retry_after

__all__ = ["SYSTEM_CLOCK", "Clock", "FetchResult", "Fetcher", "ManualClock",
           "parse_retry_after"]
