"""
C{barto-cli calendar}: normalize calendar expressions and show their
next elapses, offline, in the manner of C{systemd-analyze calendar}.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from barto.calendar import CalendarError, CalendarSpec, elapses, parse

_STAMP = "%a %Y-%m-%d %H:%M:%S %Z"

# systemd's units for relative times: a year is 365.25 days and a month
# a twelfth of that.
_YEAR = 31_557_600
_MONTH = _YEAR // 12
_WEEK = 7 * 86_400
_DAY = 86_400
_HOUR = 3600
_MINUTE = 60


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the C{calendar} command.

    @param subparsers: what C{add_subparsers} returned.
    @return: the command's parser.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calendar",
        help="normalize calendar expressions and show their next elapses",
        description=(
            "Parse each on_calendar expression, print its normalized form "
            "and its next elapses. Offline: no server, no config."
        ),
    )
    parser.add_argument("expressions", nargs="+", metavar="EXPR")
    parser.add_argument(
        "--iterations",
        type=_positive,
        default=1,
        metavar="N",
        help="how many elapses to show (default: %(default)s)",
    )
    parser.add_argument(
        "--base-time",
        type=base_time,
        default=None,
        metavar="TIME",
        help="count from this moment: ISO 8601, 'YYYY-MM-DD HH:MM:SS' "
        "(UTC without an offset) or 'now' (the default)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON list",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def base_time(text: str) -> datetime:
    """
    Parse a C{--base-time}.

    @param text: C{now}, ISO 8601 or C{YYYY-MM-DD HH:MM:SS}, with an
        optional offset or trailing C{UTC}; UTC when it has neither.
    @return: an aware datetime.
    @raise argparse.ArgumentTypeError: the text is not a time.
    """
    cleaned = text.strip()
    if cleaned.lower() == "now":
        return datetime.now(timezone.utc)

    if cleaned.upper().endswith(" UTC"):
        cleaned = cleaned[:-4]
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def handler(args: argparse.Namespace) -> int:
    """
    Print every expression's normalized form and elapses.

    @return: 0, or 1 when an expression is invalid.
    """
    base = args.base_time or datetime.now(timezone.utc)
    now = datetime.now(timezone.utc)
    failed = False
    reports: list[dict[str, Any]] = []
    blocks: list[str] = []
    for expression in args.expressions:
        try:
            spec = parse(expression)
        except CalendarError as error:
            print(f"barto-cli: {error}", file=sys.stderr)
            failed = True
            continue

        found = elapses(spec, base, args.iterations)
        reports.append(
            {
                "expression": expression,
                "normalized": str(spec),
                "elapses": [moment.isoformat() for moment in found],
            }
        )
        blocks.append(render(expression, spec, found, now))

    if getattr(args, "json", False):
        print(json.dumps(reports, indent=2))
    elif blocks:
        print("\n\n".join(blocks))
    return 1 if failed else 0


def render(
    expression: str,
    spec: CalendarSpec,
    found: Sequence[datetime],
    now: datetime,
) -> str:
    """
    One expression's report, laid out as C{systemd-analyze calendar} does.

    @param expression: the text as given.
    @param spec: its parsed form.
    @param found: its next elapses.
    @param now: what "From now" counts from.
    @return: the lines, without a trailing newline.
    """
    rows: list[tuple[str, str]] = []
    normalized = str(spec)
    if normalized != expression:
        rows.append(("Original form", expression))
    rows.append(("Normalized form", normalized))
    if not found:
        rows.append(("Next elapse", "never"))

    for number, moment in enumerate(found, start=1):
        label = "Next elapse" if number == 1 else f"Iter. #{number}"
        rows.append((label, moment.strftime(_STAMP)))
        if moment.utcoffset():
            in_utc = moment.astimezone(timezone.utc)
            rows.append(("(in UTC)", in_utc.strftime(_STAMP)))
        rows.append(("From now", relative(moment, now)))

    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:>{width}}: {value}" for label, value in rows)


def relative(moment: datetime, now: datetime) -> str:
    """
    How far a moment is from now, in systemd's words ("3 weeks 2 days
    left", "1 year 8 months ago").
    """
    seconds = int((moment - now).total_seconds())
    suffix = "left" if seconds > 0 else "ago"
    seconds = abs(seconds)
    if seconds == 0:
        return "now"

    def plural(count: int, unit: str) -> str:
        return f"{count} {unit}{'' if count == 1 else 's'}"

    if seconds >= _YEAR:
        years, rest = divmod(seconds, _YEAR)
        text = f"{plural(years, 'year')} {plural(rest // _MONTH, 'month')}"
    elif seconds >= _MONTH:
        months, rest = divmod(seconds, _MONTH)
        text = f"{plural(months, 'month')} {plural(rest // _DAY, 'day')}"
    elif seconds >= _WEEK:
        weeks, rest = divmod(seconds, _WEEK)
        text = f"{plural(weeks, 'week')} {plural(rest // _DAY, 'day')}"
    elif seconds >= 2 * _DAY:
        text = plural(seconds // _DAY, "day")
    elif seconds >= 25 * _HOUR:
        text = f"1 day {(seconds - _DAY) // _HOUR}h"
    elif seconds >= 6 * _HOUR:
        text = f"{seconds // _HOUR}h"
    elif seconds >= _HOUR:
        text = f"{seconds // _HOUR}h {seconds % _HOUR // _MINUTE}min"
    elif seconds >= 5 * _MINUTE:
        text = f"{seconds // _MINUTE}min"
    elif seconds >= _MINUTE:
        text = f"{seconds // _MINUTE}min {seconds % _MINUTE}s"
    else:
        text = f"{seconds}s"
    return f"{text} {suffix}"
