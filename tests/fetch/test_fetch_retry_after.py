"""parse_retry_after: RFC 9110 delta-seconds and HTTP-dates, in UTC, never raising."""

from __future__ import annotations

import calendar

import pytest

from shardtools.fetch import parse_retry_after

# 2023-11-14 22:13:20 UTC, a Tuesday.
NOW = 1_700_000_000.0


def _utc(*fields) -> float:
    return float(calendar.timegm(fields))


@pytest.mark.parametrize("value, expected", [
    ("120", 120.0),
    ("0", 0.0),
    ("  30 ", 30.0),           # surrounding whitespace is not part of the value
    ("86400", 86400.0),        # large but sane: returned as is, the caller caps it
    ("1.5", 1.5),              # not RFC, accepted as a harmless lenience
])
def test_delta_seconds_are_read_as_given(value, expected):
    """Delta-seconds come back as seconds, uncapped."""
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", [
    None, "", "   ",
    "soon", "1m0s", "-5", "+5", "NaN", "nan", "inf", "1e400", "1e3", "0x10",
    "9" * 40,                  # absurd: more digits than any real advice
    str(2**32),                # past 2**31 s
    "١٢٠",                     # non-ASCII digits
    "120 seconds",
    "Tue, 14 Nov 2023 22:15:00",        # no zone
    "Tue, 14 Nov 2023 22:15:00 +0100",  # numeric zone: not an HTTP-date
    "Tue, 31 Feb 2023 22:15:00 GMT",    # no such day
    "Tue, 14 Nov 2023 25:15:00 GMT",    # no such hour
])
def test_unusable_values_give_none(value):
    """Absent, malformed or absurd values give None, so the caller uses its schedule."""
    assert parse_retry_after(value, NOW) is None


def test_non_string_input_gives_none_rather_than_raising():
    """Whatever a header library hands over, the parser does not raise."""
    assert parse_retry_after(b"120", NOW) is None  # type: ignore[arg-type]
    assert parse_retry_after(120, NOW) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    "Tue, 14 Nov 2023 22:15:00 GMT",       # IMF-fixdate
    "Tuesday, 14-Nov-23 22:15:00 GMT",     # RFC 850
    "Tue Nov 14 22:15:00 2023",            # asctime
])
def test_the_three_http_date_forms_give_the_same_delay(value):
    """All three date forms a recipient must accept are understood, as UTC."""
    assert parse_retry_after(value, NOW) == pytest.approx(100.0)


def test_asctime_pads_a_one_digit_day_with_a_space():
    """asctime writes day 6 as ' 6'."""
    now = _utc(1994, 11, 6, 8, 49, 0)
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now) == pytest.approx(37.0)


def test_a_date_in_the_past_gives_zero():
    """A date already gone means "now", not a negative wait."""
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW) == 0.0


def test_rfc850_two_digit_years_never_lie_more_than_50_years_ahead():
    """RFC 9110: a two-digit year over 50 years ahead is in the previous century."""
    # From 2023, "94" is 1994 (2094 would be 71 years ahead): a past date.
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", NOW) == 0.0
    # "24" is 2024, a future date.
    later = parse_retry_after("Thursday, 14-Nov-24 22:13:20 GMT", NOW)
    assert later == pytest.approx(_utc(2024, 11, 14, 22, 13, 20) - NOW)


def test_dates_are_utc_whatever_the_process_time_zone(time_zone):
    """The process's TZ plays no part: +05:45 and -03:30 read the same date alike."""
    value = "Tue, 14 Nov 2023 22:15:00 GMT"
    readings = []
    for zone in ("XXX-05:45", "YYY+03:30", "UTC0"):
        time_zone(zone)
        readings.append(parse_retry_after(value, NOW))
    assert readings == [pytest.approx(100.0)] * 3
