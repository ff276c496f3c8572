"""
Calendar expressions for C{on_calendar}: parse, normalize, next elapse.

The grammar is systemd's C{OnCalendar} (C{man systemd.time}) plus the
original barto's forms: the comma date C{Y,M,D}, C{+} signs on numbers, a
lone C{*} for the weekday or the date, and C{R}, a value barto picks once
per schedule from a stable hash so that schedules spread over the clock.

L{parse} turns a string into an immutable L{CalendarSpec}; its
L{CalendarSpec.next_elapse} finds the first elapse after a moment, field
by field (year, month, day, hour, minute, second), never by stepping
through seconds.  Local times that a time zone skips or repeats are
handled exactly as systemd does (systemd 252 with glibc's C{mktime}): the
answer agrees with C{systemd-analyze calendar} for every expression that
systemd accepts.  See C{docs/calendar.md}.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "CalendarError",
    "CalendarSpec",
    "elapses",
    "parse",
]

MAX_EXPRESSION_LENGTH = 1024
"""The longest expression L{parse} reads, in characters."""

MIN_YEAR = 1970
MAX_YEAR = 2199
USEC = 1_000_000
DAY_USEC = 86_400 * USEC
MINUTE_USEC = 60 * USEC

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_USEC = timedelta(microseconds=1)
_ALL_WEEKDAYS = 0b1111111
_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WEEKDAY_WORDS = (
    ("monday", 0),
    ("mon", 0),
    ("tuesday", 1),
    ("tue", 1),
    ("wednesday", 2),
    ("wed", 2),
    ("thursday", 3),
    ("thu", 3),
    ("friday", 4),
    ("fri", 4),
    ("saturday", 5),
    ("sat", 5),
    ("sunday", 6),
    ("sun", 6),
)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_NUMBER = re.compile(r"\+?[0-9]+", re.ASCII)
_ZONE_WORD = r"[A-Za-z0-9_+\-]+"
_ZONE_PATTERN = rf"[A-Za-z](?:{_ZONE_WORD})?(?:/{_ZONE_WORD})*"
_ZONE_NAME = re.compile(_ZONE_PATTERN, re.ASCII)

Component = tuple[int, int, int]
"""One element of a chain: (start, stop, repeat); stop -1 when open."""

Chain = tuple[Component, ...]
"""A field's values; the empty chain is C{*}."""


class CalendarError(ValueError):
    """
    An expression that is not a valid calendar; the message names the
    field and the text that failed.
    """


@dataclass(frozen=True)
class _Field:
    """
    What one numeric field accepts and how its errors read.
    """

    name: str
    error: str
    low: int
    high: int
    random_high: int
    width: int
    usec: bool = False


_YEAR = _Field("year", "invalid year", MIN_YEAR, MAX_YEAR, 0, 4)
_MONTH = _Field("month", "invalid month of year", 1, 12, 12, 2)
_DAY = _Field("day", "invalid day of month", 1, 31, 28, 2)
_HOUR = _Field("hour", "invalid hour of day", 0, 23, 23, 2)
_MINUTE = _Field("minute", "invalid minute of hour", 0, 59, 59, 2)
_SECOND = _Field(
    "second", "invalid second of minute", 0, MINUTE_USEC - 1, 59, 2, usec=True
)

_SHORTCUTS: dict[str, tuple[int, Chain, Chain, Chain]] = {
    # name: (weekdays, month, day, hour); minute and second are 0.
    "minutely": (_ALL_WEEKDAYS, (), (), ()),
    "hourly": (_ALL_WEEKDAYS, (), (), ()),
    "daily": (_ALL_WEEKDAYS, (), (), ((0, -1, 0),)),
    "weekly": (1, (), (), ((0, -1, 0),)),
    "monthly": (_ALL_WEEKDAYS, (), ((1, -1, 0),), ((0, -1, 0),)),
    "yearly": (_ALL_WEEKDAYS, ((1, -1, 0),), ((1, -1, 0),), ((0, -1, 0),)),
    "quarterly": (
        _ALL_WEEKDAYS,
        ((1, -1, 0), (4, -1, 0), (7, -1, 0), (10, -1, 0)),
        ((1, -1, 0),),
        ((0, -1, 0),),
    ),
    "semiannually": (
        _ALL_WEEKDAYS,
        ((1, -1, 0), (7, -1, 0)),
        ((1, -1, 0),),
        ((0, -1, 0),),
    ),
}
_SHORTCUTS["annually"] = _SHORTCUTS["anually"] = _SHORTCUTS["yearly"]
for _alias in ("biannually", "bi-annually", "semi-annually"):
    _SHORTCUTS[_alias] = _SHORTCUTS["semiannually"]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and _is_leap(year):
        return 29
    return _MONTH_DAYS[month - 1]


def _weekday(year: int, month: int, day: int) -> int:
    """
    The weekday of a date, 0 for Monday.
    """
    return (_days_from_epoch(year, month, day) + 3) % 7


def _days_from_epoch(year: int, month: int, day: int) -> int:
    """
    Days from 1970-01-01 to a date; C{month} is 1-12 and C{day} may lie
    outside the month.
    """
    return date(year, month, 1).toordinal() - _EPOCH_ORDINAL + day - 1


def _civil(days: int) -> tuple[int, int, int]:
    """
    The (year, month, day) of a count of days from 1970-01-01.
    """
    moment = date.fromordinal(days + _EPOCH_ORDINAL)
    return moment.year, moment.month, moment.day


# Parsing


def _number(text: str, spec: _Field, whole: str) -> int:
    """
    One value of a field, in the field's unit (microseconds for seconds).
    """
    match = _NUMBER.match(text)
    if match is None:
        raise CalendarError(f"{spec.error}: {whole!r}")

    digits = match.group().lstrip("+")
    rest = text[match.end() :]
    if len(digits.lstrip("0")) > 10:
        raise CalendarError(f"{spec.error}: {whole!r}")

    value = int(digits)
    if not spec.usec:
        if rest:
            raise CalendarError(f"{spec.error}: {whole!r}")
        return value

    value *= USEC
    if rest:
        fraction = re.fullmatch(r"\.([0-9]+)", rest, re.ASCII)
        if fraction is None:
            raise CalendarError(f"{spec.error}: {whole!r}")
        figures = fraction.group(1)
        value += int(figures[:6].ljust(6, "0"))
        if len(figures) > 6 and figures[6] >= "5":
            value += 1
    return value


def _component(item: str, spec: _Field, whole: str) -> Component:
    """
    One element of a list: C{N}, C{N..M}, C{N/R} or C{N..M/R}.
    """
    head, slash, repeat_text = item.partition("/")
    first, dots, last = head.partition("..")
    start = _number(first, spec, whole)
    stop = -1
    repeat = 0
    if dots:
        stop = _number(last, spec, whole)
        repeat = USEC if spec.usec else 1

    if slash:
        repeat = _number(repeat_text, spec, whole)
        if repeat == 0:
            raise CalendarError(f"{spec.error}: {whole!r}")
    elif spec.usec and stop >= 0 and start + repeat > stop:
        raise CalendarError(f"{spec.error}: {whole!r}")

    return start, stop, repeat


def _random_value(key: str, spec: _Field) -> int:
    """
    The value C{R} stands for in one field of the schedule C{key}.
    """
    digest = hashlib.sha256(f"barto\0{key}\0{spec.name}".encode()).digest()
    low = 1 if spec.name in ("month", "day") else 0
    span = spec.random_high - low + 1
    return low + int.from_bytes(digest[:8], "big") % span


def _chain(text: str, spec: _Field, key: str, lists: bool = True) -> Chain:
    """
    Parse one field: C{*}, C{R}, or a comma list of components.
    """
    if text == "*":
        return ((0, -1, USEC),) if spec.usec else ()

    if text == "R" and spec.random_high:
        value = _random_value(key, spec)
        return ((value * USEC if spec.usec else value, -1, 0),)

    items = text.split(",") if lists else [text]
    return tuple(_component(item, spec, text) for item in items)


def _normalize_chain(chain: Chain, spec: _Field, end_of_month: bool) -> Chain:
    """
    Sort and de-duplicate a chain and drop repeats that never fire, as
    systemd does, then check every component against the field's range.
    """
    result = set()
    for start, stop, repeat in chain:
        if spec is _YEAR:
            start, stop = _full_year(start), _full_year(stop)
        if stop > start and repeat > 0:
            stop -= (stop - start) % repeat
        fires_once = stop > start and repeat > 0 and start + repeat > stop
        if fires_once or start == stop:
            repeat, stop = 0, -1
        result.add((start, stop, repeat))

    low, high = spec.low, spec.high - (3 if end_of_month else 0)
    for start, stop, repeat in result:
        if not low <= start <= high or repeat > high - low:
            raise CalendarError("")
        if stop >= 0:
            if not low <= stop <= high or start + repeat > stop:
                raise CalendarError("")
        elif end_of_month and start - repeat < low:
            raise CalendarError("")
        elif not end_of_month and start + repeat > high:
            raise CalendarError("")
    return _interned(tuple(sorted(result)))


def _full_year(year: int) -> int:
    if 0 <= year < 70:
        return year + 2000
    if 70 <= year < 100:
        return year + 1900
    return year


def _weekdays(text: str) -> int:
    """
    Parse a weekday list such as C{Mon..Fri,Sun} into a bit set (bit 0 is
    Monday), following systemd: names in either length, any case, ranges
    with C{..} or C{-}, and one trailing comma.
    """
    if text == "*":
        return _ALL_WEEKDAYS

    bits = 0
    for item in text.removesuffix(",").split(","):
        ends = re.split(r"\.\.|-", item)
        if len(ends) > 2:
            raise CalendarError(f"invalid day of week: {item!r}")
        numbers = [_weekday_number(end) for end in ends]
        if numbers[0] > numbers[-1]:
            raise CalendarError(f"invalid range: {item!r}")
        for number in range(numbers[0], numbers[-1] + 1):
            bits |= 1 << number
    return bits


def _weekday_number(name: str) -> int:
    lowered = name.lower()
    for word, number in _WEEKDAY_WORDS:
        if lowered == word:
            return number
    raise CalendarError(f"invalid day of week: {name!r}")


def _split_zone(tokens: list[str]) -> tuple[list[str], str | None]:
    """
    Take a trailing time zone off the tokens, as systemd does: C{UTC} in
    any case, or a name from the time zone database.
    """
    if len(tokens) < 2:
        return tokens, None

    # FIXME: no host-zone abbreviations, e.g. systemd's CET on a CET host
    last = tokens[-1]
    if last.upper() == "UTC":
        return tokens[:-1], "UTC"

    if _ZONE_NAME.fullmatch(last) is None or _is_weekday_list(last):
        return tokens, None

    if _load_zone(last) is not None:
        return tokens[:-1], last
    if "/" in last or last.isalpha():
        raise CalendarError(f"invalid time zone: {last!r}")
    return tokens, None


def _is_weekday_list(text: str) -> bool:
    try:
        _weekdays(text)
    except CalendarError:
        return False
    return True


def _load_zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@dataclass
class _Parts:
    """
    The fields of an expression while it is being parsed.
    """

    weekdays: int = _ALL_WEEKDAYS
    year: Chain = ()
    month: Chain = ()
    day: Chain = ()
    hour: Chain = ((0, -1, 0),)
    minute: Chain = ((0, -1, 0),)
    second: Chain = ((0, -1, 0),)
    end_of_month: bool = False
    date_text: str = ""
    weekday_text: str = ""
    texts: dict[str, str] = field(default_factory=dict)

    def set(self, spec: _Field, raw: str, key: str, many: bool = True) -> None:
        """
        Parse the text of one field into its chain; C{many} allows a
        comma list.
        """
        self.texts[spec.name] = raw
        setattr(self, spec.name, _chain(raw, spec, key, many))


def _date(text: str, parts: _Parts, key: str) -> None:
    """
    Parse a date token: C{[Y-]M-D}, C{[Y-]M~D}, the comma date C{Y,M,D}
    of the original barto, or a lone C{*}.
    """
    parts.date_text = text
    if text == "*":
        return

    if "-" not in text and "~" not in text and text.count(",") == 2:
        year, month, day = text.split(",")
        parts.set(_YEAR, year, key, many=False)
        parts.set(_MONTH, month, key, many=False)
        parts.set(_DAY, day, key, many=False)
        return

    pieces = re.split(r"([-~])", text)
    if len(pieces) not in (3, 5) or "~" in pieces[:-2]:
        raise CalendarError(f"invalid date string: {text!r}")

    if len(pieces) == 5:
        parts.set(_YEAR, pieces[0], key)
        pieces = pieces[2:]
    parts.set(_MONTH, pieces[0], key)
    parts.end_of_month = pieces[1] == "~"
    if parts.end_of_month and pieces[2] == "R":
        raise CalendarError(f"invalid day of month: {pieces[2]!r}")
    parts.set(_DAY, pieces[2], key)


def _time(text: str, parts: _Parts, key: str) -> None:
    """
    Parse a time token: C{H:M} or C{H:M:S}.
    """
    pieces = text.split(":")
    if len(pieces) not in (2, 3):
        raise CalendarError(f"invalid time string: {text!r}")

    parts.set(_HOUR, pieces[0], key)
    parts.set(_MINUTE, pieces[1], key)
    if len(pieces) == 3:
        parts.set(_SECOND, pieces[2], key)


def _timestamp(text: str, parts: _Parts) -> None:
    """
    Parse C{@SECONDS}, one moment in UTC.
    """
    digits = text[1:]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        raise CalendarError(f"invalid calendar string: {text!r}")

    try:
        moment = _EPOCH + timedelta(seconds=int(digits))
    except OverflowError:
        raise CalendarError(f"invalid year: {text!r}") from None
    parts.year = ((moment.year, -1, 0),)
    parts.month = ((moment.month, -1, 0),)
    parts.day = ((moment.day, -1, 0),)
    parts.hour = ((moment.hour, -1, 0),)
    parts.minute = ((moment.minute, -1, 0),)
    parts.second = ((moment.second * USEC, -1, 0),)


def _starts_weekday(token: str) -> bool:
    return token[:1].isascii() and token[:1].isalpha() and token[0] != "R"


def _tokens_into(tokens: list[str], parts: _Parts, key: str) -> None:
    """
    Parse the weekday, date and time tokens, each of them optional.
    """
    if len(tokens) == 3 and tokens[0] == "*":
        tokens = tokens[1:]
    elif tokens and _starts_weekday(tokens[0]) and ":" not in tokens[0]:
        parts.weekdays = _weekdays(tokens[0])
        if parts.weekdays != _ALL_WEEKDAYS:
            parts.weekday_text = tokens[0]
        tokens = tokens[1:]

    if len(tokens) == 2:
        _date(tokens[0], parts, key)
        _time(tokens[1], parts, key)
    elif len(tokens) == 1 and ":" in tokens[0]:
        _time(tokens[0], parts, key)
    elif len(tokens) == 1:
        _date(tokens[0], parts, key)
    elif tokens:
        raise CalendarError("")


def parse(
    expression: str, *, key: str = "", default_zone: tzinfo | None = None
) -> CalendarSpec:
    """
    Parse a calendar expression.

    @param expression: systemd's C{OnCalendar} syntax or one of the
        original barto's forms, e.g. C{"Mon..Fri *-*-* 09:00"},
        C{"*,*,* 10:R:R"}, C{"weekly Europe/Berlin"}.
    @param key: what C{R} fields are chosen from, e.g.
        C{"worker/schedule"}; the same key always gives the same values.
    @param default_zone: the zone of an expression that names none;
        UTC when not given.
    @return: the parsed, normalized specification.
    @raise CalendarError: the expression is not a valid calendar.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expected a str, got {type(expression).__name__}")

    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalendarError(
            "invalid calendar string: longer than "
            + f"{MAX_EXPRESSION_LENGTH} characters"
        )

    whole = f"invalid calendar string: {expression!r}"
    tokens = expression.split()
    if not tokens or "\0" in expression:
        raise CalendarError(whole)

    tokens, zone_name = _split_zone(tokens)
    parts = _Parts()
    shortcut = _SHORTCUTS.get(tokens[0].lower()) if len(tokens) == 1 else None
    try:
        if shortcut is not None:
            parts.weekdays, parts.month, parts.day, parts.hour = shortcut
            if tokens[0].lower() == "minutely":
                parts.minute = ()
            if tokens[0].lower() == "hourly":
                parts.hour = ()
        elif len(tokens) == 1 and tokens[0].startswith("@"):
            _timestamp(tokens[0], parts)
            zone_name = "UTC"
        else:
            _tokens_into(tokens, parts, key)
    except CalendarError as error:
        raise CalendarError(str(error) or whole) from None

    if zone_name == "UTC":
        zone: tzinfo = timezone.utc
    elif zone_name is not None:
        zone = ZoneInfo(zone_name)
    else:
        zone = default_zone if default_zone is not None else timezone.utc
    return _build(parts, zone_name, zone, expression)


def _build(
    parts: _Parts, zone_name: str | None, zone: tzinfo, expression: str
) -> CalendarSpec:
    """
    Normalize and check the parsed fields and make the specification.
    """
    if not parts.day:
        parts.end_of_month = False

    fields = (
        (_YEAR, parts.year),
        (_MONTH, parts.month),
        (_DAY, parts.day),
        (_HOUR, parts.hour),
        (_MINUTE, parts.minute),
        (_SECOND, parts.second),
    )
    chains = []
    for field_spec, chain in fields:
        eom = parts.end_of_month and field_spec is _DAY
        try:
            chains.append(_normalize_chain(chain, field_spec, eom))
        except CalendarError:
            text = parts.texts.get(field_spec.name, expression.strip())
            raise CalendarError(f"{field_spec.error}: {text!r}") from None

    year, month, day, hour, minute, second = chains
    spec = CalendarSpec(
        parts.weekdays,
        year,
        month,
        day,
        hour,
        minute,
        second,
        end_of_month=parts.end_of_month,
        zone_name=zone_name,
        zone=zone,
    )
    if not spec._possible():
        text = " ".join(filter(None, (parts.weekday_text, parts.date_text)))
        raise CalendarError(f"impossible date: {text or expression.strip()!r}")
    return spec


# Evaluation


@dataclass(frozen=True, slots=True)
class CalendarSpec:
    """
    A parsed calendar expression: which local times are elapses, and in
    which time zone.  Immutable, hashable and comparable; C{str()} gives
    the normalized form, which parses back to an equal specification.

    @ivar weekdays: a bit set of weekdays, bit 0 for Monday.
    @ivar zone_name: the zone the expression names, or None.
    @ivar zone: the zone the expression is evaluated in.
    """

    weekdays: int
    year: Chain
    month: Chain
    day: Chain
    hour: Chain
    minute: Chain
    second: Chain
    end_of_month: bool = False
    zone_name: str | None = None
    zone: tzinfo = timezone.utc
    _tables: _Tables = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", _Tables(self))

    def __str__(self) -> str:
        """
        The normalized form, in the style of C{systemd-analyze calendar}.
        """
        text = ""
        if self.weekdays != _ALL_WEEKDAYS:
            text = _format_weekdays(self.weekdays) + " "
        text += _format_chain(self.year, 4, False) + "-"
        text += _format_chain(self.month, 2, False)
        text += "~" if self.end_of_month else "-"
        text += _format_chain(self.day, 2, False) + " "
        text += _format_chain(self.hour, 2, False) + ":"
        text += _format_chain(self.minute, 2, False) + ":"
        text += _format_chain(self.second, 2, True)
        if self.zone_name is not None:
            text += " " + self.zone_name
        return text

    def next_elapse(self, after: datetime) -> datetime | None:
        """
        The first elapse strictly after a moment.

        @param after: an aware datetime.
        @return: the elapse as an aware datetime in the spec's zone, or
            None when the expression never elapses again.
        @raise TypeError: C{after} is naive.
        """
        found = self._next_usec(_to_usec(after))
        return None if found is None else self._datetime(found)

    def matches(self, moment: datetime) -> bool:
        """
        Whether the whole second of a moment holds an elapse.

        @param moment: an aware datetime; its fraction of a second is
            ignored.
        """
        second = _to_usec(moment) // USEC * USEC
        found = self._next_usec(second - 1)
        return found is not None and found < second + USEC

    def _datetime(self, usec: int) -> datetime:
        moment = _EPOCH + timedelta(microseconds=usec)
        if self.zone is timezone.utc:
            return moment
        return moment.astimezone(self.zone)

    def _next_usec(self, after: int) -> int | None:
        """
        The first elapse after C{after}, both in microseconds since the
        epoch.
        """
        after = max(after, _EARLIEST)
        if after >= _LATEST:
            return None

        rules = _zone_rules(self.zone)
        start = after + 1
        offset = rules.offset(start // USEC)[0] * USEC
        found = self._tables.search_local(start + offset)
        if found is None:
            return None

        if rules.fixed or not rules.changes_between(
            start // USEC - 2 * 86_400, (found - offset) // USEC + 2 * 86_400
        ):
            return found - offset
        return _SystemdSearch(self, rules).next_usec(after)

    def _possible(self) -> bool:
        """
        Whether some day from 1970 to 2199 satisfies the year, month,
        day and weekday fields together.
        """
        return self._tables.search_local(0) is not None


def _format_weekdays(bits: int) -> str:
    runs: list[str] = []
    day = 0
    while day < 7:
        if not bits >> day & 1:
            day += 1
            continue
        end = day
        while end + 1 < 7 and bits >> (end + 1) & 1:
            end += 1
        if end - day >= 2:
            runs.append(f"{_WEEKDAY_NAMES[day]}..{_WEEKDAY_NAMES[end]}")
        else:
            runs.extend(_WEEKDAY_NAMES[day : end + 1])
        day = end + 1
    return ",".join(runs)


def _format_chain(chain: Chain, width: int, usec: bool) -> str:
    unit = USEC if usec else 1
    if not chain or (usec and (0, -1, USEC) in chain):
        return "*"

    def number(value: int) -> str:
        whole, fraction = divmod(value, unit)
        text = f"{whole:0{width}d}"
        return text + (f".{fraction:06d}" if fraction else "")

    items = []
    for start, stop, repeat in chain:
        text = number(start)
        if stop > 0:
            text += ".." + number(stop)
        if repeat > 0 and not (stop > 0 and repeat == unit):
            whole, fraction = divmod(repeat, unit)
            text += f"/{whole}" + (f".{fraction:06d}" if fraction else "")
        items.append(text)
    return ",".join(items)


_EARLIEST = _days_from_epoch(1969, 12, 28) * DAY_USEC
_LATEST = _days_from_epoch(MAX_YEAR + 1, 1, 2) * DAY_USEC


def _to_usec(moment: datetime) -> int:
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TypeError(f"naive datetime {moment.isoformat()}: add a tzinfo")
    return (moment - _EPOCH) // _ONE_USEC


_INTERN_LIMIT = 65_536
"""The most distinct values each of the caches below keeps."""

_T = TypeVar("_T")
_INTERNED: dict[object, object] = {}
_EXPANDED: dict[tuple[Chain, int, int, int], tuple[int, ...]] = {}
_MONTH_TABLES: dict[
    tuple[Chain, bool], tuple[tuple[tuple[int, ...], ...], tuple[int | None, ...]]
] = {}


def _interned(value: _T) -> _T:
    """
    One shared object for equal immutable values (chains, candidate
    tuples), so that many schedules with the same fields cost the
    memory of one; the cache stops growing at L{_INTERN_LIMIT}.
    """
    found = _INTERNED.get(value)
    if found is not None:
        return found  # type: ignore[return-value]
    if len(_INTERNED) < _INTERN_LIMIT:
        _INTERNED[value] = value
    return value


def _expand(chain: Chain, low: int, high: int, step: int) -> tuple[int, ...]:
    """
    Every value of a chain in [low, high], sorted; C{step} is the
    repeat of the open chain C{*}.  Equal arguments share one tuple.
    """
    key = (chain, low, high, step)
    found = _EXPANDED.get(key)
    if found is None:
        found = _interned(_expand_values(chain, low, high, step))
        if len(_EXPANDED) < _INTERN_LIMIT:
            _EXPANDED[key] = found
    return found


def _expand_values(chain: Chain, low: int, high: int, step: int) -> tuple[int, ...]:
    if not chain:
        return tuple(range(low, high + 1, step))
    values: set[int] = set()
    for start, stop, repeat in chain:
        end = high if stop < 0 else min(stop, high)
        values.update(range(start, end + 1, repeat) if repeat else (start,))
    return tuple(sorted(v for v in values if low <= v <= high))


def _chain_next(chain: Chain, value: int, limit: int | None) -> int | None:
    """
    The least value of a chain at or above C{value} and below C{limit}
    (no bound when None), worked out from the components, as systemd's
    C{find_matching_component} does.
    """
    best = None
    for start, stop, repeat in chain:
        if start >= value:
            candidate = start
        elif repeat > 0:
            candidate = start + repeat * (-((start - value) // repeat))
            if stop >= 0 and candidate > stop:
                continue
        else:
            continue
        if best is None or candidate < best:
            best = candidate
    if best is None or (limit is not None and best >= limit):
        return None
    return best


def _month_chain(day: Chain, end_of_month: bool, length: int) -> Chain:
    """
    The day chain in a month of C{length} days, with days counted from
    the end of the month turned into days of the month.
    """
    if not end_of_month:
        return day
    mirrored = []
    for start, stop, repeat in day:
        if stop >= 0:
            first, last = length + 1 - stop, length + 1 - start
            mirrored.append((first, last, repeat))
        else:
            mirrored.append((length + 1 - start, -1, repeat))
    return tuple(mirrored)


def _month_tables(
    day: Chain, end_of_month: bool
) -> tuple[tuple[tuple[int, ...], ...], tuple[int | None, ...]]:
    """
    For months of 28 to 31 days, the candidate days and the first day
    past the month's end that a repeat produces; shared by equal day
    fields.
    """
    key = (day, end_of_month)
    found = _MONTH_TABLES.get(key)
    if found is None:
        chains = [_month_chain(day, end_of_month, n) for n in (28, 29, 30, 31)]
        found = _interned(
            (
                tuple(
                    _expand(chain, 1, n, 1)
                    for chain, n in zip(chains, (28, 29, 30, 31), strict=True)
                ),
                tuple(
                    _chain_next(chain, n + 1, None)
                    for chain, n in zip(chains, (28, 29, 30, 31), strict=True)
                ),
            )
        )
        if len(_MONTH_TABLES) < _INTERN_LIMIT:
            _MONTH_TABLES[key] = found
    return found


class _Tables:
    """
    The sorted candidate values of each field, for the field-by-field
    search in local time, and the first value past each field's end
    that a repeat produces (systemd carries such a value into the next
    unit in its own way).
    """

    __slots__ = (
        "_days",
        "_days_past",
        "hour_past",
        "hours",
        "minute_past",
        "minutes",
        "months",
        "second_past",
        "seconds",
        "spec",
        "weekdays",
        "years",
    )

    def __init__(self, spec: CalendarSpec) -> None:
        self.spec = spec
        self.years = _expand(spec.year, MIN_YEAR, MAX_YEAR, 1)
        self.months = _expand(spec.month, 1, 12, 1)
        self.hours = _expand(spec.hour, 0, 23, 1)
        self.minutes = _expand(spec.minute, 0, 59, 1)
        self.hour_past = _chain_next(spec.hour, 24, None)
        self.minute_past = _chain_next(spec.minute, 60, None)
        self.second_past = _chain_next(spec.second, MINUTE_USEC, None)
        self.weekdays = spec.weekdays
        # Indexed by the month's length minus 28.
        self._days, self._days_past = _month_tables(spec.day, spec.end_of_month)
        self.seconds: tuple[int, ...] | None = None
        if _chain_size(spec.second, MINUTE_USEC) <= 4096:
            self.seconds = _expand(spec.second, 0, MINUTE_USEC - 1, USEC)

    def first_day(self, year: int, month: int, day: int) -> int | None:
        """
        The first day of a month at or after C{day} that the day and
        weekday fields allow; past the month's end (a repeat carried
        over) or None when there is none.
        """
        length = _days_in_month(year, month)
        days = self._days[length - 28]
        index = bisect_left(days, day)
        if self.weekdays == _ALL_WEEKDAYS:
            if index < len(days):
                return days[index]
        else:
            first = _weekday(year, month, 1)
            for candidate in days[index:]:
                if self.weekdays >> ((first + candidate - 1) % 7) & 1:
                    return candidate
        return self._days_past[length - 28]

    def next_second(self, value: int) -> int | None:
        if self.seconds is None:
            found = _chain_next(self.spec.second, value, MINUTE_USEC)
        else:
            index = bisect_left(self.seconds, value)
            found = self.seconds[index] if index < len(self.seconds) else None
        return self.second_past if found is None else found

    def search_local(self, local: int) -> int | None:
        """
        The first elapse at or after C{local} (microseconds since the
        epoch, in wall-clock time), ignoring what a time zone skips or
        repeats.

        This follows systemd's C{find_next} step for step, including
        one quirk: when a repeat runs past the end of a field (hour
        C{0/5} gives 25), systemd normalizes the date and then resets
        only the unit below the highest one that changed, so on the
        first day of a month C{00/5:00} starts at 05:00, not 00:00.
        """
        days, rest = divmod(local, DAY_USEC)
        year, month, day = _civil(days)
        hour, rest = divmod(rest, 3600 * USEC)
        minute, second = divmod(rest, MINUTE_USEC)
        years, months = self.years, self.months
        hours, minutes = self.hours, self.minutes

        while True:
            index = bisect_left(years, year)
            if index == len(years):
                return None
            if years[index] != year:
                year, month, day = years[index], 1, 1
                hour, minute, second = 0, 0, 0

            index = bisect_left(months, month)
            if index == len(months):
                year, month, day = year + 1, 1, 1
                hour, minute, second = 0, 0, 0
                continue
            if months[index] != month:
                month, day, hour, minute, second = months[index], 1, 0, 0, 0

            found = self.first_day(year, month, day)
            length = _days_in_month(year, month)
            if found is None or found > length:
                hour, minute, second = 0, 0, 0
                if month < 12:
                    month, day = month + 1, 1
                elif found is None:
                    year, month, day = year + 1, 1, 1
                else:
                    year, month, day = year + 1, 1, found - 31
                continue
            if found != day:
                day, hour, minute, second = found, 0, 0, 0

            index = bisect_left(hours, hour)
            if index == len(hours):
                past = 0 if self.hour_past is None else self.hour_past - 24
                minute, second = 0, 0
                if day < length:
                    day, hour = day + 1, 0
                else:
                    year, month, day = _next_day(year, month, day)
                    hour = past
                continue
            if hours[index] != hour:
                hour, minute, second = hours[index], 0, 0

            index = bisect_left(minutes, minute)
            if index == len(minutes):
                past = 0 if self.minute_past is None else self.minute_past - 60
                second = 0
                if hour < 23:
                    hour, minute = hour + 1, 0
                else:
                    hour, minute = 0, past
                    year, month, day = _next_day(year, month, day)
                continue
            if minutes[index] != minute:
                minute, second = minutes[index], 0

            found = self.next_second(second)
            if found is None or found >= MINUTE_USEC:
                fraction = 0 if found is None else found % USEC
                past = 0 if found is None else found - MINUTE_USEC - fraction
                if minute < 59:
                    minute, second = minute + 1, fraction
                else:
                    minute, second = 0, past + fraction
                    hour += 1
                    if hour == 24:
                        hour = 0
                        year, month, day = _next_day(year, month, day)
                continue

            return (
                _days_from_epoch(year, month, day) * DAY_USEC
                + (hour * 60 + minute) * MINUTE_USEC
                + found
            )


def _next_day(year: int, month: int, day: int) -> tuple[int, int, int]:
    """
    The date after a date.
    """
    if day < _days_in_month(year, month):
        return year, month, day + 1
    if month < 12:
        return year, month + 1, 1
    return year + 1, 1, 1


def _chain_size(chain: Chain, limit: int) -> int:
    """
    About how many values a chain has below C{limit}.
    """
    size = 0
    for start, stop, repeat in chain:
        end = limit if stop < 0 else min(stop + 1, limit)
        size += max(0, (end - start) // repeat + 1) if repeat else 1
    return size


# Time zones


class _ZoneRules:
    """
    The UTC offsets of one zone: lookups by instant and the instants where
    the offset or the daylight-saving flag changes, found per year by
    probing the zone and kept.  The last stretch found without a change
    answers the next lookups directly.
    """

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.fixed = isinstance(zone, timezone)
        self._changes: dict[int, list[int]] = {}
        self._steady = (0, 0, self._probe(0))

    def _probe(self, second: int) -> tuple[int, int]:
        # FIXME: dst() is 0 for negative DST (Europe/Dublin); glibc: isdst
        moment = datetime.fromtimestamp(second, self.zone)
        offset = moment.utcoffset()
        dst = moment.dst()
        return (
            0 if offset is None else offset // timedelta(seconds=1),
            1 if dst else 0,
        )

    def offset(self, second: int) -> tuple[int, int]:
        """
        The UTC offset in seconds and the daylight-saving flag at an
        instant.
        """
        low, high, state = self._steady
        if self.fixed or low <= second < high:
            return state
        return self._probe(second)

    def _year_changes(self, year: int) -> list[int]:
        changes = self._changes.get(year)
        if changes is not None:
            return changes

        changes = []
        second = _days_from_epoch(year, 1, 1) * 86_400
        end = _days_from_epoch(year + 1, 1, 1) * 86_400
        state = self._probe(second)
        while second < end:
            # FIXME: two changes under 12 hours apart go unseen (none yet)
            probe = min(second + 43_200, end)
            following = self._probe(probe)
            if following != state:
                low, high = second, probe
                while high - low > 1:
                    middle = (low + high) // 2
                    if self._probe(middle) == state:
                        low = middle
                    else:
                        high = middle
                changes.append(high)
                state = following
            second = probe
        self._changes[year] = changes
        return changes

    def changes_between(self, first: int, last: int) -> bool:
        """
        Whether the offset changes in the instants (C{first}, C{last}].
        """
        low, high, _state = self._steady
        if self.fixed or (low <= first and last < high):
            return False

        first_year = _civil(first // 86_400)[0]
        last_year = min(_civil(last // 86_400)[0], MAX_YEAR + 1)
        low = _days_from_epoch(first_year, 1, 1) * 86_400
        high = _days_from_epoch(last_year + 1, 1, 1) * 86_400
        for year in range(first_year, last_year + 1):
            for change in self._year_changes(year):
                if first < change <= last:
                    return True
                if change <= first:
                    low = change
                elif change < high:
                    high = change
        self._steady = (low, high, self._probe(first))
        return False


_RULES: dict[tzinfo, _ZoneRules] = {}


def _zone_rules(zone: tzinfo) -> _ZoneRules:
    rules = _RULES.get(zone)
    if rules is None:
        rules = _RULES[zone] = _ZoneRules(zone)
    return rules


class _Moment:
    """
    A broken-down local time as C{struct tm} holds it: fields may be out
    of range until normalized.
    """

    __slots__ = ("day", "dst", "hour", "minute", "month", "second", "year")

    def __init__(
        self,
        year: int,
        month: int,
        day: int,
        hour: int,
        minute: int,
        second: int,
        dst: int,
    ) -> None:
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
        self.dst = dst

    def copy(self) -> _Moment:
        return _Moment(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.dst,
        )

    def fields(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
        )

    def set_local(self, local: int, dst: int) -> None:
        days, rest = divmod(local, 86_400)
        self.year, self.month, self.day = _civil(days)
        self.month -= 1
        self.hour, rest = divmod(rest, 3600)
        self.minute, self.second = divmod(rest, 60)
        self.dst = dst


class _SystemdSearch:
    """
    systemd's C{find_next} over local time with glibc's C{mktime},
    including the offset C{mktime} guesses from its previous call: what
    decides the answer near a daylight-saving change.

    Months here count from 0 as in C{struct tm}.
    """

    def __init__(self, spec: CalendarSpec, rules: _ZoneRules) -> None:
        self.spec = spec
        self.rules = rules
        self.guess = 0

    def _convert(self, second: int) -> tuple[int, int]:
        offset, dst = self.rules.offset(second)
        return second + offset, dst

    def mktime(self, tm: _Moment) -> int | None:
        """
        glibc's C{mktime}: the instant of a local time, normalizing C{tm}
        in place; None where glibc fails.
        """
        year = tm.year + tm.month // 12
        month = tm.month % 12
        requested = tm.second
        second = min(max(requested, 0), 59)
        wanted = (
            _days_from_epoch(year, month + 1, tm.day) * 86_400
            + tm.hour * 3600
            + tm.minute * 60
            + second
        )
        isdst = tm.dst
        first = wanted + self.guess
        instant = older = previous = first
        previous_dst = 0
        for _probe in range(6):
            local, dst = self._convert(instant)
            delta = wanted - local
            if delta == 0:
                break
            if instant == older and instant != previous:
                if isdst < 0:
                    stuck = previous_dst <= dst
                else:
                    stuck = (isdst != 0) != (dst != 0)
                if stuck:
                    break
            older, previous = previous, instant
            instant += delta
            previous_dst = dst
        else:
            return None

        if delta == 0 and isdst >= 0 and (isdst != 0) != (dst != 0):
            found = self._other_dst(instant, wanted, isdst != 0)
            if found is None:
                return None
            instant = found
            local, dst = self._convert(instant)

        self.guess = instant - first + self.guess
        if requested != local % 60:
            instant += requested - second
            local, dst = self._convert(instant)
        tm.set_local(local, dst)
        return instant

    def _other_dst(self, instant: int, wanted: int, dst: bool) -> int | None:
        """
        glibc's search for a nearby instant with the requested
        daylight-saving flag.
        """
        stride = 601_200
        for delta in range(stride, 536_454_000 // 2 + stride, stride):
            for direction in (-1, 1):
                other = instant + delta * direction
                local, other_dst = self._convert(other)
                if (other_dst != 0) == dst:
                    return other + wanted - local
        return None

    def within_bounds(self, tm: _Moment) -> int:
        """
        systemd's C{tm_within_bounds}: 1 when C{tm} is a real local time;
        0 when normalizing moved it forward, and C{tm} now holds the
        normal form with the unit below the first changed one reset; -1
        when it cannot be used.  The daylight-saving flag of C{tm} stays
        as it was, which is what matches systemd 252 near a gap.
        """
        if tm.year > MAX_YEAR:
            return -1
        normal = tm.copy()
        if self.mktime(normal) is None:
            return -1

        before, after = tm.fields(), normal.fields()
        if before == after:
            return 1
        if after < before:
            return -1

        changed = next(i for i in range(6) if before[i] != after[i])
        values = list(after)
        if changed < 5:
            values[changed + 1] = 1 if changed == 1 else 0
        tm.year, tm.month, tm.day, tm.hour, tm.minute, tm.second = values
        return 0

    def _end_of_month(self, tm: _Moment, day: int) -> int:
        probe = tm.copy()
        probe.month += 1
        probe.day = 1 - day
        if self.mktime(probe) is None or probe.month != tm.month:
            return -1
        return probe.day

    def _match(self, chain: Chain, tm: _Moment, value: int, eom: bool) -> int:
        """
        systemd's C{find_matching_component}: the least value of the
        chain at or after C{value}, or -1.
        """
        best = -1
        for start, stop, repeat in chain:
            if eom:
                start = self._end_of_month(tm, start)
                stop = self._end_of_month(tm, stop)
                if stop > 0:
                    start, stop = stop, start
            if start >= value:
                if best < 0 or start < best:
                    best = start
            elif repeat > 0:
                candidate = start + repeat * -((start - value) // repeat)
                in_range = stop < 0 or candidate <= stop
                if in_range and (best < 0 or candidate < best):
                    best = candidate
        return best

    def _weekday_ok(self, tm: _Moment) -> bool:
        if self.spec.weekdays == _ALL_WEEKDAYS:
            return True
        probe = tm.copy()
        if self.mktime(probe) is None:
            return False
        weekday = date(probe.year, probe.month + 1, probe.day).weekday()
        return bool(self.spec.weekdays >> weekday & 1)

    def next_usec(self, after: int) -> int | None:
        """
        systemd's C{calendar_spec_next_usec} for an instant in
        microseconds.
        """
        after += 1
        second, usec = divmod(after, USEC)
        local, dst = self._convert(second)
        tm = _Moment(0, 0, 0, 0, 0, 0, 0)
        tm.set_local(local, dst)
        found = self._find_next(tm, usec)
        if found is None:
            return None
        instant = self.mktime(tm)
        if instant is None:
            return None
        return instant * USEC + found

    def _find_next(self, c: _Moment, usec: int) -> int | None:
        spec = self.spec
        # FIXME: systemd stops after 1000 rounds; this bounds a runaway
        for _round in range(100_000):
            self.mktime(c)
            c.dst = -1

            if spec.year:
                value = self._match(spec.year, c, c.year, False)
                if value < 0:
                    return None
                if value != c.year:
                    c.year, c.month, c.day = value, 0, 1
                    c.hour = c.minute = c.second = usec = 0
            if self.within_bounds(c) <= 0:
                return None

            changed = 0
            if spec.month:
                value = self._match(spec.month, c, c.month + 1, False)
                changed = value >= 0 and value != c.month + 1
                if changed:
                    c.month, c.day = value - 1, 1
                    c.hour = c.minute = c.second = usec = 0
            else:
                value = c.month + 1
            bound = -1 if value < 0 else self.within_bounds(c)
            if bound < 0:
                c.year, c.month, c.day = c.year + 1, 0, 1
                c.hour = c.minute = c.second = usec = 0
                continue
            if bound == 0:
                continue

            if spec.day:
                value = self._match(spec.day, c, c.day, spec.end_of_month)
                if value >= 0 and value != c.day:
                    c.day = value
                    c.hour = c.minute = c.second = usec = 0
            else:
                value = c.day
            bound = -1 if value < 0 else self.within_bounds(c)
            if bound < 0:
                c.month, c.day = c.month + 1, 1
                c.hour = c.minute = c.second = usec = 0
                continue
            if bound == 0:
                continue

            if not self._weekday_ok(c):
                c.day += 1
                c.hour = c.minute = c.second = usec = 0
                continue

            if spec.hour:
                value = self._match(spec.hour, c, c.hour, False)
                if value >= 0 and value != c.hour:
                    c.hour, c.minute, c.second, usec = value, 0, 0, 0
            else:
                value = c.hour
            bound = -1 if value < 0 else self.within_bounds(c)
            if bound < 0:
                c.day += 1
                c.hour = c.minute = c.second = usec = 0
                continue
            if bound == 0:
                continue

            if spec.minute:
                value = self._match(spec.minute, c, c.minute, False)
                if value >= 0 and value != c.minute:
                    c.minute, c.second, usec = value, 0, 0
            else:
                value = c.minute
            bound = -1 if value < 0 else self.within_bounds(c)
            if bound < 0:
                c.hour += 1
                c.minute = c.second = usec = 0
                continue
            if bound == 0:
                continue

            value = self._match(spec.second, c, c.second * USEC + usec, False)
            if value >= 0:
                c.second, usec = divmod(value, USEC)
            bound = -1 if value < 0 else self.within_bounds(c)
            if bound < 0:
                c.minute += 1
                c.second = usec = 0
                continue
            if bound == 0:
                continue
            return usec
        return None


def elapses(spec: CalendarSpec, after: datetime, count: int) -> list[datetime]:
    """
    The next C{count} elapses of a specification after a moment.

    @param spec: the calendar.
    @param after: an aware datetime; every elapse is strictly after it.
    @param count: how many elapses at most.
    @return: up to C{count} aware datetimes in the spec's zone, fewer when
        the calendar stops elapsing.
    """
    found: list[datetime] = []
    moment = _to_usec(after)
    while len(found) < count:
        following = spec._next_usec(moment)
        if following is None:
            break
        found.append(spec._datetime(following))
        moment = following
    return found
