"""Read an HTTP `Retry-After` header (RFC 9110, section 10.2.3) into a delay in seconds.

The header is either delta-seconds ("120") or an HTTP-date in one of the three forms a
recipient must accept:

    Sun, 06 Nov 1994 08:49:37 GMT     IMF-fixdate (the one servers should send)
    Sunday, 06-Nov-94 08:49:37 GMT    obsolete RFC 850 form, two-digit year
    Sun Nov  6 08:49:37 1994          obsolete asctime form

Dates are always read as UTC; the process's time zone plays no part.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

# Past this a value is noise rather than advice (2**31 s is some 68 years); the caller
# then falls back to its own schedule. Smaller values are returned as they are and the
# caller caps them.
MAX_DELTA_S = 2.0**31

# RFC 9110 allows only digits. A decimal fraction ("1.5") is accepted as a harmless
# lenience; signs, exponents, "inf" and "nan" are not.
_DELTA = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?", re.ASCII)

_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "|".join(_MONTHS)
_TIME = r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"

_ZONE = "(?:GMT|UTC)"
_DAY = r"(?P<d>[0-9]{2})"
_YEAR = r"(?P<y>[0-9]{4})"
_IMF_FIXDATE = re.compile(
    rf"(?:{_DAYS}), {_DAY} (?P<mon>{_MONTH}) {_YEAR} {_TIME} {_ZONE}",
    re.ASCII | re.IGNORECASE,
)
_RFC850 = re.compile(
    rf"(?:{_LONG_DAYS}), {_DAY}-(?P<mon>{_MONTH})-(?P<yy>[0-9]{{2}}) {_TIME} {_ZONE}",
    re.ASCII | re.IGNORECASE,
)
_ASCTIME = re.compile(
    rf"(?:{_DAYS}) (?P<mon>{_MONTH}) (?P<d>[ 0-9][0-9]) {_TIME} {_YEAR}",
    re.ASCII | re.IGNORECASE,
)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from `now_wall` (epoch seconds), or None when `value` is absent
    or unusable ("1m0s", "soon", "-5", "NaN", 40 digits). A past date gives 0.0.

    Never raises: a header is outside input, and a bad one means "use the schedule".
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        if text[0] in "0123456789":
            return _delta_seconds(text)
        when = _http_date(text, now_wall)
    except (ValueError, OverflowError):
        return None
    if when is None or not math.isfinite(now_wall):
        return None
    return max(0.0, when - now_wall)


def _delta_seconds(text: str) -> float | None:
    if not _DELTA.fullmatch(text):
        return None
    seconds = float(text)
    return seconds if seconds <= MAX_DELTA_S else None


def _http_date(text: str, now_wall: float) -> float | None:
    """The date's epoch seconds, or None if `text` is in none of the three forms."""
    for pattern in (_IMF_FIXDATE, _ASCTIME):
        match = pattern.fullmatch(text)
        if match:
            return _epoch(int(match["y"]), match)
    match = _RFC850.fullmatch(text)
    if match:
        return _epoch(_full_year(int(match["yy"]), now_wall), match)
    return None


def _full_year(two_digits: int, now_wall: float) -> int:
    # RFC 9110: a two-digit year that would lie more than 50 years ahead is the most
    # recent past year with those digits.
    this_year = datetime.fromtimestamp(now_wall, timezone.utc).year
    year = this_year - this_year % 100 + two_digits
    return year - 100 if year > this_year + 50 else year


def _epoch(year: int, match: re.Match) -> float:
    month = _MONTHS.index(match["mon"].capitalize()) + 1
    # A leap second (":60") is read as the second before it. datetime() refuses
    # impossible days, such as 31 Feb, with ValueError.
    second = min(int(match["s"]), 59)
    moment = datetime(year, month, int(match["d"]), int(match["h"]), int(match["m"]),
                      second, tzinfo=timezone.utc)
    return moment.timestamp()
