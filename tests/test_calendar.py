"""
Tests for L{barto.calendar}: parsing, normalized forms, errors, elapses,
the original barto's forms, C{R}, and inputs that must never crash.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import barto.calendar as calendar
from barto.calendar import (
    MAX_EXPRESSION_LENGTH,
    CalendarError,
    CalendarSpec,
    elapses,
    parse,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int, zone: timezone | ZoneInfo = UTC) -> datetime:
    """
    An aware datetime.
    """
    return datetime(*fields, tzinfo=zone)


@pytest.mark.parametrize(
    ("expression", "normalized"),
    [
        ("Sat,Thu,Mon..Wed,Sat..Sun", "Mon..Thu,Sat,Sun *-*-* 00:00:00"),
        ("Mon,Sun 12-*-* 2,1:23", "Mon,Sun 2012-*-* 01,02:23:00"),
        ("Wed *-1", "Wed *-*-01 00:00:00"),
        ("Wed, 17:48", "Wed *-*-* 17:48:00"),
        ("Wed..Sat,Tue 12-10-16 1:2:3", "Tue..Sat 2012-10-16 01:02:03"),
        ("monday *-12-* 17:00", "Mon *-12-* 17:00:00"),
        ("12,14,13,12:20,10,30", "*-*-* 12,13,14:10,20,30:00"),
        ("mon,fri *-1/2-1,3 *:30:45", "Mon,Fri *-01/2-01,03 *:30:45"),
        ("05:40:23.4200004/3.1700005", "*-*-* 05:40:23.420000/3.170001"),
        ("2003-02..04-05", "2003-02..04-05 00:00:00"),
        ("2003-03-05 05:40 UTC", "2003-03-05 05:40:00 UTC"),
        ("weekly Pacific/Auckland", "Mon *-*-* 00:00:00 Pacific/Auckland"),
        ("annually", "*-01-01 00:00:00"),
        ("quarterly", "*-01,04,07,10-01 00:00:00"),
        ("semiannually", "*-01,07-01 00:00:00"),
        ("minutely", "*-*-* *:*:00"),
        ("*:2/3", "*-*-* *:02/3:00"),
        ("*-*~1..7/2", "*-*~01..07/2 00:00:00"),
        ("*:*:0/1", "*-*-* *:*:*"),
        ("@1700000000", "2023-11-14 22:13:20 UTC"),
    ],
)
def test_normalized_form(expression: str, normalized: str) -> None:
    """The normalized form is systemd's, and it parses back equal."""
    spec = parse(expression)

    assert str(spec) == normalized
    assert parse(str(spec)) == spec
    assert hash(parse(str(spec))) == hash(spec)


@pytest.mark.parametrize(
    ("expression", "normalized"),
    [
        ("Mon *,*,01 00:00:00", "Mon *-*-01 00:00:00"),
        ("12:30:15", "*-*-* 12:30:15"),
        ("+2025,+01,+01 +0:+0:+0", "2025-01-01 00:00:00"),
        ("* *,*,* 12:30:15", "*-*-* 12:30:15"),
        ("Mon * 10:00:00", "Mon *-*-* 10:00:00"),
        ("*,1..12/3,1 0:0:0", "*-01..10/3-01 00:00:00"),
        ("*,*,* 005:0:0", "*-*-* 05:00:00"),
        ("\t*,*,*\t10:00:00 ", "*-*-* 10:00:00"),
        ("*,*,*\u00a010:00:00", "*-*-* 10:00:00"),
        ("8,12,18:00:00", "*-*-* 08,12,18:00:00"),
        ("Mon..Friday *,*,1..7 09:00:00", "Mon..Fri *-*-01..07 09:00:00"),
    ],
)
def test_original_forms(expression: str, normalized: str) -> None:
    """The original barto's forms keep their meaning."""
    spec = parse(expression)

    assert str(spec) == normalized
    assert parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "invalid calendar string: ''"),
        ("Mon *-*-* 10:00 x y", "invalid time zone: 'y'"),
        ("1 2 3 4:00", "invalid calendar string: '1 2 3 4:00'"),
        ("*-*-*-*", "invalid date string: '*-*-*-*'"),
        ("*,* 10:00", "invalid date string: '*,*'"),
        ("10:00:00:00", "invalid time string: '10:00:00:00'"),
        ("Tues 10:00", "invalid day of week: 'Tues'"),
        ("Sat..Mon", "invalid range: 'Sat..Mon'"),
        ("R,*,* 0:0:0", "invalid year: 'R'"),
        ("1969-01-01", "invalid year: '1969'"),
        ("*-13-01", "invalid month of year: '13'"),
        ("*-1/13-01", "invalid month of year: '1/13'"),
        ("*-*-32", "invalid day of month: '32'"),
        ("*-*~29", "invalid day of month: '29'"),
        ("24:00", "invalid hour of day: '24'"),
        ("0/24:00", "invalid hour of day: '0/24'"),
        ("*:0/60", "invalid minute of hour: '0/60'"),
        ("*:*:60", "invalid second of minute: '60'"),
        ("*:*:59.9999996", "invalid second of minute: '59.9999996'"),
        ("*:*/15", "invalid minute of hour: '*/15'"),
        ("1,x:00", "invalid hour of day: '1,x'"),
        ("5..3:00", "invalid hour of day: '5..3'"),
        ("1/0:00", "invalid hour of day: '1/0'"),
        ("12:00 Mars/Base", "invalid time zone: 'Mars/Base'"),
        ("*-02-30", "impossible date: '*-02-30'"),
        ("2025-04-31", "impossible date: '2025-04-31'"),
        ("Mon 2025-01-01", "impossible date: 'Mon 2025-01-01'"),
        ("\u0663:00", "invalid hour of day: '\u0663'"),
        ("9" * 20 + ":00", "invalid hour of day: '" + "9" * 20 + "'"),
        ("a\0b", "invalid calendar string: 'a\\x00b'"),
    ],
)
def test_errors(expression: str, message: str) -> None:
    """Every bad input raises CalendarError naming the field and text."""
    with pytest.raises(CalendarError) as caught:
        parse(expression)

    assert str(caught.value) == message


def test_too_long() -> None:
    """An expression past the length cap is refused with a clear error."""
    with pytest.raises(CalendarError, match="longer than 1024"):
        parse("0," * MAX_EXPRESSION_LENGTH + "0:00")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="0123456789*-~,.:/+R MonWedUTC\u0663\0", max_size=40),
        st.text(min_size=1000, max_size=1100),
    )
)
def test_any_text_parses_or_raises(text: str) -> None:
    """Arbitrary text either parses or raises CalendarError, nothing else."""
    try:
        spec = parse(text)
    except CalendarError:
        return

    assert parse(str(spec)) == spec
    spec.next_elapse(at(2025, 1, 1))


def test_huge_values() -> None:
    """Huge numbers and repeats are errors, not crashes or hangs."""
    nines = "9" * 50
    for expression in (nines + ":00", f"0/{nines}:00", f"@{nines}"):
        with pytest.raises(CalendarError):
            parse(expression)


def test_next_elapse_basics() -> None:
    """next_elapse is strictly after, aware, in the spec's zone."""
    spec = parse("*-*-* 10:00")

    assert spec.next_elapse(at(2025, 1, 1, 9, 59, 59)) == at(2025, 1, 1, 10)
    assert spec.next_elapse(at(2025, 1, 1, 10)) == at(2025, 1, 2, 10)
    tokyo = datetime(2025, 1, 1, 18, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert spec.next_elapse(tokyo) == at(2025, 1, 1, 10)


def test_naive_is_refused() -> None:
    """A naive datetime is a TypeError, never silently wrong."""
    spec = parse("daily")

    with pytest.raises(TypeError):
        spec.next_elapse(datetime(2025, 1, 1))
    with pytest.raises(TypeError):
        spec.matches(datetime(2025, 1, 1))


def test_past_year_never_elapses() -> None:
    """An expression whose years are over answers None."""
    spec = parse("2020-01-01 00:00:00")

    assert spec.next_elapse(at(2025, 1, 1)) is None
    assert elapses(spec, at(2019, 1, 1), 5) == [at(2020, 1, 1)]


def test_zone_of_expression_and_default() -> None:
    """A named zone wins over the default zone, which wins over UTC."""
    tokyo = ZoneInfo("Asia/Tokyo")
    named = parse("*-*-* 09:00 Europe/Berlin", default_zone=tokyo)
    default = parse("*-*-* 09:00", default_zone=BERLIN)
    plain = parse("*-*-* 09:00")

    assert named.zone == BERLIN
    assert default.zone == BERLIN
    assert plain.zone == UTC
    assert str(default) == "*-*-* 09:00:00"
    found = default.next_elapse(at(2025, 7, 1))
    assert found == at(2025, 7, 1, 9, zone=BERLIN)
    assert found is not None and found.tzinfo is BERLIN
    assert default != plain


def test_elapses_in_utc_and_fixed_offset() -> None:
    """A fixed-offset default zone shifts every elapse."""
    zone = timezone(timedelta(hours=5, minutes=30))
    spec = parse("Mon..Fri *-*-* 09:00", default_zone=zone)

    found = elapses(spec, at(2025, 1, 3, 12), 3)
    assert found == [
        at(2025, 1, 6, 9, zone=zone),
        at(2025, 1, 7, 9, zone=zone),
        at(2025, 1, 8, 9, zone=zone),
    ]


def test_spring_gap_is_skipped() -> None:
    """A local time that does not exist is skipped, as systemd does."""
    spec = parse("*-*-* 02:30:00 Europe/Berlin")

    found = spec.next_elapse(at(2025, 3, 29, 12))
    assert found == at(2025, 3, 31, 2, 30, zone=BERLIN)


def test_autumn_fold_fires_once() -> None:
    """A repeated local time fires at its first occurrence, then moves on."""
    spec = parse("*-*-* 02:30:00 Europe/Berlin")

    found = elapses(spec, at(2025, 10, 25, 12), 2)
    assert [moment.astimezone(UTC) for moment in found] == [
        at(2025, 10, 26, 0, 30),
        at(2025, 10, 27, 1, 30),
    ]


def test_overflowing_repeat_follows_systemd() -> None:
    """An hour repeat past 23 skips 00:00 on the 1st, like systemd."""
    spec = parse("*-*-* 0/5:00")

    found = elapses(spec, at(2025, 1, 31, 19), 2)
    assert found == [at(2025, 1, 31, 20), at(2025, 2, 1, 5)]
    assert spec.next_elapse(at(2025, 1, 30, 21)) == at(2025, 1, 31, 0)


def test_end_of_month() -> None:
    """~ counts days from the end of the month."""
    spec = parse("*-02~01 00:00")

    assert spec.next_elapse(at(2024, 1, 1)) == at(2024, 2, 29)
    assert spec.next_elapse(at(2024, 3, 1)) == at(2025, 2, 28)


def test_last_monday_of_may() -> None:
    """systemd's own example: Mon *-05~07/1 is the last Monday of May."""
    spec = parse("Mon *-05~07/1")

    assert elapses(spec, at(2025, 1, 1), 2) == [
        at(2025, 5, 26),
        at(2026, 5, 25),
    ]


def test_fractional_seconds() -> None:
    """Seconds keep microseconds, rounded to six places."""
    spec = parse("*:*:0.5/2.25")

    assert elapses(spec, at(2025, 1, 1), 3) == [
        at(2025, 1, 1, 0, 0, 0, 500000),
        at(2025, 1, 1, 0, 0, 2, 750000),
        at(2025, 1, 1, 0, 0, 5),
    ]


def test_matches_whole_second() -> None:
    """matches() tells whether a second holds an elapse."""
    spec = parse("Mon *-*-* 10:00:30")

    assert spec.matches(at(2025, 1, 6, 10, 0, 30))
    assert spec.matches(at(2025, 1, 6, 10, 0, 30, 999999))
    assert not spec.matches(at(2025, 1, 6, 10, 0, 31))
    assert not spec.matches(at(2025, 1, 7, 10, 0, 30))
    assert parse("*:*:0.5").matches(at(2025, 1, 1, 0, 0, 0, 1))


def test_random_is_stable_and_spread() -> None:
    """R picks the same values for a key every time, others for others."""
    first = parse("*,*,* 10:R:R", key="vader/backup")
    again = parse("*,*,* 10:R:R", key="vader/backup")
    others = {str(parse("*,*,* 10:R:R", key=f"w{n}/s")) for n in range(50)}

    assert first == again
    assert str(first) == str(again)
    assert len(others) > 40


def test_random_day_fires_every_month() -> None:
    """A random day of month is at most 28, so it fires every month."""
    days = {parse("*-*-R", key=f"worker{n}/job").day[0][0] for n in range(500)}

    assert max(days) <= 28
    assert min(days) >= 1
    assert len(days) == 28


def test_random_uses_hashlib_not_hash() -> None:
    """R does not depend on Python's salted hash()."""
    with mock.patch("builtins.hash", side_effect=AssertionError):
        value = calendar._random_value("k", calendar._MINUTE)

    assert value == calendar._random_value("k", calendar._MINUTE)


def test_sparse_expression_is_fast() -> None:
    """A sparse spec answers in a bounded number of month visits."""
    visits = []
    original = calendar._days_in_month

    def counting(year: int, month: int) -> int:
        visits.append((year, month))
        return original(year, month)

    for expression, after in (
        ("*-02-29 00:00:00", at(2101, 1, 1)),
        ("Mon *-*-13 00:00", at(2025, 1, 1)),
        ("Fri *-02-29 12:00", at(2025, 1, 1)),
    ):
        spec = parse(expression)
        visits.clear()
        with mock.patch.object(calendar, "_days_in_month", counting):
            found = spec.next_elapse(after)

        assert found is not None
        assert len(visits) < 200, expression


def test_specs_are_immutable_and_hashable() -> None:
    """Specs are frozen, hashable and compare by meaning."""
    spec = parse("Mon..Fri 09:00")

    assert {spec: 1}[parse("mon-fri *-*-* 9:0:0")] == 1
    assert isinstance(spec, CalendarSpec)
    with pytest.raises(AttributeError):
        spec.weekdays = 1  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "*:0/7",
            "*-*-* 0/5:00",
            "*-*-1/10 12:00",
            "Mon,Thu *-*~07/2 06:30",
            "*-02-29 00:00",
            "*:*:0.5/2.25",
            "*-*-* 02:30:00",
            "*:30",
            "Sun *-*-* 01..03:00/20",
        ]
    ),
    st.sampled_from(
        ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]
    ),
    st.datetimes(datetime(2024, 1, 1), datetime(2030, 1, 1)),
)
def test_fast_path_agrees_with_systemd_port(
    expression: str, zone: str, after: datetime
) -> None:
    """The field search equals the step-by-step port of systemd."""
    spec = parse(f"{expression} {zone}")
    rules = calendar._zone_rules(spec.zone)
    usec = calendar._to_usec(after.replace(tzinfo=UTC))

    ported = calendar._SystemdSearch(spec, rules).next_usec(usec)
    assert spec._next_usec(usec) == ported


def test_elapses_are_increasing() -> None:
    """elapses() returns strictly increasing moments, up to count."""
    spec = parse("*:0/15 Pacific/Chatham")

    found = elapses(spec, at(2025, 9, 27, 12), 12)
    assert len(found) == 12
    assert all(a < b for a, b in pairwise(found))
