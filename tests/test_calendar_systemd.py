"""
barto's calendar against C{systemd-analyze calendar}, the oracle.

Hypothesis writes expressions from systemd's grammar; each example sends a
batch of them to one C{systemd-analyze} process (C{TZ=UTC}, a base time,
several iterations) and checks that barto accepts what systemd accepts,
normalizes it the same way and finds the same elapses.  A second group
walks fixed expressions across the daylight-saving changes of several
zones over several years.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barto.calendar import CalendarError, elapses, parse

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)

ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
)
ITERATIONS = 6
_STAMP = "%a %Y-%m-%d %H:%M:%S UTC"
_REJECTED = r"Failed to parse calendar specification '(.*)':"

# systemd 252 lowers the limit of each further "~" list element by 3
# (chain_valid recurses with the lowered bound); barto accepts them.
_BROADER = re.compile(r"~[^ ]*,")


@dataclass(frozen=True)
class Verdict:
    """
    What systemd said about one expression.
    """

    normalized: str
    elapses: tuple[datetime, ...]


def systemd_calendar(
    expressions: list[str], base: datetime, iterations: int
) -> dict[str, Verdict | None]:
    """
    Ask systemd about many expressions at once; None for the ones it
    rejects, no entry for the ones it could not evaluate.
    """
    assert SYSTEMD_ANALYZE is not None
    command = [
        SYSTEMD_ANALYZE,
        "calendar",
        f"--iterations={iterations}",
        "--base-time=" + base.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "--",
        *expressions,
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={"TZ": "UTC", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"},
        check=False,
    )

    verdicts: dict[str, Verdict | None] = {}
    for line in result.stderr.splitlines():
        rejected = re.match(_REJECTED, line)
        if rejected:
            verdicts[rejected.group(1)] = None

    for block in result.stdout.split("\n\n"):
        fields = re.findall(r"^\s*([^:]+?): (.*)$", block, re.MULTILINE)
        if not fields:
            continue
        original = dict(fields).get("Original form")
        normalized = dict(fields)["Normalized form"]
        found = tuple(
            datetime.strptime(value, _STAMP).replace(tzinfo=timezone.utc)
            for label, value in fields
            if label == "Next elapse" or label.startswith("Iter.")
            if value != "never"
        )
        verdicts[original or normalized] = Verdict(normalized, found)
    return verdicts


def barto_calendar(expression: str, base: datetime, count: int) -> Verdict:
    """
    barto's answer in the same shape, elapses cut to whole seconds in UTC.
    """
    spec = parse(expression)
    found = tuple(
        moment.astimezone(timezone.utc).replace(microsecond=0)
        for moment in elapses(spec, base, count)
    )
    return Verdict(str(spec), found)


def check_batch(expressions: list[str], base: datetime) -> int:
    """
    Compare barto with systemd on a batch; returns how many expressions
    systemd accepted.
    """
    expressions = list(dict.fromkeys(expressions))
    truth = systemd_calendar(expressions, base, ITERATIONS)
    accepted = 0
    for expression in expressions:
        if expression not in truth:
            continue
        verdict = truth[expression]
        if verdict is None:
            if not _BROADER.search(expression):
                with pytest.raises(CalendarError):
                    parse(expression)
            continue

        accepted += 1
        try:
            ours = barto_calendar(expression, base, ITERATIONS)
        except CalendarError as error:
            assert str(error).startswith("impossible date"), expression
            assert verdict.elapses == (), expression
            continue
        assert ours.normalized == verdict.normalized, expression
        assert ours.elapses == verdict.elapses, (expression, base)
    return accepted


# Expressions from systemd's grammar.

_WEEKDAY_NAMES = (
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
)


@st.composite
def weekday_name(draw: st.DrawFn, low: int = 0) -> tuple[int, str]:
    """
    A weekday number at or after C{low} and one way to write it.
    """
    number = draw(st.integers(low, 6))
    name = draw(st.sampled_from(_WEEKDAY_NAMES[number]))
    case = draw(st.sampled_from((str, str.lower, str.upper)))
    return number, case(name)


@st.composite
def weekdays(draw: st.DrawFn) -> str:
    """
    A weekday list with names, ranges and perhaps a trailing comma.
    """
    items = []
    for _ in range(draw(st.integers(1, 3))):
        first, text = draw(weekday_name())
        if draw(st.booleans()):
            _, last = draw(weekday_name(first))
            text += draw(st.sampled_from(("..", "-"))) + last
        items.append(text)
    return ",".join(items) + draw(st.sampled_from(("", "", ",")))


def value(low: int, high: int) -> st.SearchStrategy[str]:
    """
    A number of a field, now and then with leading zeros or out of range.
    """
    return st.one_of(
        st.integers(low, high).map(str),
        st.integers(low, high).map(lambda n: f"{n:02d}"),
        st.integers(high + 1, high + 3).map(str),
    )


@st.composite
def component(draw: st.DrawFn, low: int, high: int) -> str:
    """
    C{N}, C{N..M}, C{N/R} or C{N..M/R}.
    """
    start = draw(value(low, high))
    kind = draw(st.sampled_from(("value", "range", "repeat", "both")))
    if kind in ("range", "both"):
        start += ".." + draw(value(low, high))
    if kind in ("repeat", "both"):
        start += "/" + str(draw(st.integers(1, max(2, (high - low) // 2))))
    return start


def chain(low: int, high: int) -> st.SearchStrategy[str]:
    """
    C{*} or a list of one to three components.
    """
    listed = st.lists(component(low, high), min_size=1, max_size=3)
    return st.one_of(st.just("*"), listed.map(",".join))


@st.composite
def seconds(draw: st.DrawFn) -> str:
    """
    A second field, sometimes with fractions.
    """
    if draw(st.integers(0, 3)):
        return draw(chain(0, 59))
    start = draw(st.integers(0, 58))
    fraction = draw(st.sampled_from(("", ".5", ".25", ".000001", ".1234567")))
    text = f"{start}{fraction}"
    if draw(st.booleans()):
        text += "/" + draw(st.sampled_from(("1", "2.5", "10", "0.75")))
    return text


@st.composite
def date(draw: st.DrawFn) -> str:
    """
    C{[Y-]M-D} or C{[Y-]M~D}.
    """
    year = draw(st.one_of(chain(2024, 2034), st.sampled_from(("25", "*"))))
    month = draw(chain(1, 12))
    if draw(st.integers(0, 3)) == 0:
        day = draw(chain(1, 28))
        separator = "~"
    else:
        day = draw(chain(1, 31))
        separator = "-"
    text = f"{month}{separator}{day}"
    if draw(st.booleans()):
        text = f"{year}-{text}"
    return text


@st.composite
def time_of_day(draw: st.DrawFn) -> str:
    """
    C{H:M} or C{H:M:S}.
    """
    text = draw(chain(0, 23)) + ":" + draw(chain(0, 59))
    if draw(st.booleans()):
        text += ":" + draw(seconds())
    return text


@st.composite
def expressions(draw: st.DrawFn, zones: bool = True) -> str:
    """
    A whole expression, perhaps with a time zone.
    """
    if draw(st.integers(0, 9)) == 0:
        text = draw(
            st.sampled_from(
                (
                    "minutely",
                    "hourly",
                    "daily",
                    "weekly",
                    "monthly",
                    "yearly",
                    "annually",
                    "quarterly",
                    "semiannually",
                    "Daily",
                )
            )
        )
    else:
        parts = [
            draw(st.one_of(st.none(), weekdays())),
            draw(st.one_of(st.none(), date())),
            draw(st.one_of(st.none(), time_of_day())),
        ]
        chosen = [part for part in parts if part is not None]
        text = " ".join(chosen) or draw(time_of_day())
    if not zones:
        return text
    zone = draw(st.sampled_from((None, None, "UTC", "utc", *ZONES)))
    return text if zone is None else f"{text} {zone}"


_anywhere = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2032, 12, 31)
)


def _before_month(year: int, month: int, minutes: int) -> datetime:
    """
    A moment shortly before a month begins.
    """
    return datetime(year, month, 1) - timedelta(minutes=minutes)


_month_ends = st.builds(
    _before_month,
    st.integers(2024, 2032),
    st.integers(1, 12),
    st.integers(1, 3 * 24 * 60),
)
bases = st.one_of(_anywhere, _month_ends).map(
    lambda moment: moment.replace(microsecond=0, tzinfo=timezone.utc)
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(expressions(), min_size=20, max_size=30), bases)
def test_generated_expressions(batch: list[str], base: datetime) -> None:
    """barto accepts, normalizes and evaluates expressions like systemd."""
    check_batch(batch, base)


DST_EXPRESSIONS = (
    "*:*:00",
    "*:0/15",
    "*:30",
    "*:15",
    "*:45",
    "*:50",
    "*-*-* 02:30:00",
    "*-*-* 01..03:*:00",
    "*-*-* 02:*:30",
    "*-*-* 00:00",
    "Sun *-*-* 01,02,03:00,30",
    "*-*-* *:*:10/20",
    "*-*~01 02:30",
    "*-*-* 02:45:00",
    "*-*-* 03:00:00",
    "*-*-* 23:30",
)


def _changes(zone: ZoneInfo, year: int) -> list[datetime]:
    """
    The instants in a year where a zone's offset changes, to the minute.
    """
    found = []
    moment = datetime(year, 1, 1, tzinfo=timezone.utc)
    offset = moment.astimezone(zone).utcoffset()
    while moment.year == year:
        step = moment + timedelta(hours=6)
        if step.astimezone(zone).utcoffset() != offset:
            low = moment
            while step - low > timedelta(minutes=1):
                middle = low + (step - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    step = middle
            found.append(step.replace(second=0, microsecond=0))
            offset = step.astimezone(zone).utcoffset()
        moment = step
    return found


@pytest.mark.parametrize("name", ZONES)
def test_daylight_saving_changes(name: str) -> None:
    """Around every DST change of 2025-2027 barto picks systemd's elapses."""
    zone = ZoneInfo(name)
    batch = [f"{expression} {name}" for expression in DST_EXPRESSIONS]
    checked = 0
    for year in (2025, 2026, 2027):
        for change in _changes(zone, year) or [datetime(year, 6, 1, 0, 0)]:
            for lead in (timedelta(hours=3), timedelta(minutes=50)):
                base = (change - lead).replace(tzinfo=timezone.utc)
                checked += check_batch(batch, base)
    assert checked >= len(DST_EXPRESSIONS) * 2


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(2024, 2030),
    st.integers(-4 * 3600, 4 * 3600),
    st.lists(expressions(zones=False), min_size=10, max_size=15),
)
def test_generated_expressions_near_changes(
    name: str, year: int, shift: int, batch: list[str]
) -> None:
    """Generated expressions agree with systemd near a DST change."""
    zone = ZoneInfo(name)
    changes = _changes(zone, year) or [datetime(year, 1, 1)]
    base = changes[shift % len(changes)] + timedelta(seconds=shift)
    batch = [f"{expression} {name}" for expression in batch]
    check_batch(batch, base.replace(tzinfo=timezone.utc, microsecond=0))
