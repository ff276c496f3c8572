"""
Text output of barto-cli: aligned tables, timestamps, colour.

Everything here is a pure function of its arguments and a L{Terminal},
which says what the output stream can take: its width, whether it is a
terminal (then long lines are cut with an ellipsis, else printed whole),
whether to colour, and whether timestamps are shown in local time
rather than UTC.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, TextIO

from barto import wire

ELLIPSIS = "…"

REPLACEMENT = "\N{REPLACEMENT CHARACTER}"

DEFAULT_WIDTH = 80

COLUMN_GAP = "  "

MIN_COLUMN = 8

_ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])"
)

_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}

STATE_STYLES: Mapping[str, str] = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "lost": "red",
    "cancelled": "yellow",
    "missed": "yellow",
    "skipped": "yellow",
    "pending": "cyan",
    "dispatched": "cyan",
    "running": "blue",
}
"""The colour of each run state."""

Style = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Terminal:
    """
    What the output stream can take.

    @ivar width: columns available for one line.
    @ivar is_tty: the stream is a terminal: lines longer than C{width} are
        cut with an ellipsis; otherwise they are printed whole.
    @ivar color: use ANSI colours.
    @ivar zone: show timestamps in this zone; UTC when C{None}.
    """

    width: int = DEFAULT_WIDTH
    is_tty: bool = False
    color: bool = False
    zone: tzinfo | None = None

    @classmethod
    def detect(
        cls,
        stream: TextIO,
        environ: Mapping[str, str] | None = None,
        *,
        local: bool = False,
    ) -> Terminal:
        """
        The L{Terminal} of C{stream}.

        Colour needs a terminal and no C{NO_COLOR} (any non-empty value)
        in C{environ}.

        @param environ: the environment; C{os.environ} when C{None}.
        @param local: show timestamps in the local zone.
        """
        environ = os.environ if environ is None else environ
        try:
            is_tty = stream.isatty()
        except (AttributeError, ValueError):
            is_tty = False

        width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
        color = is_tty and not environ.get("NO_COLOR")
        zone = datetime.now().astimezone().tzinfo if local else None
        return cls(width=max(width, 20), is_tty=is_tty, color=color, zone=zone)


def char_width(char: str) -> int:
    """
    The columns a character takes on a terminal: 0, 1 or 2.
    """
    if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
        return 0
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 2
    return 1


def text_width(text: str) -> int:
    """
    The columns C{text} takes on a terminal (colour sequences take none).
    """
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def cut(text: str, width: int) -> str:
    """
    C{text} shortened to at most C{width} columns, ending in an ellipsis
    when anything was left out.

    The cut falls between characters, never inside one, and keeps
    combining marks with their base character.
    """
    if text_width(text) <= width:
        return text
    if width <= 0:
        return ""

    room = width - 1
    used = 0
    end = 0
    for index, char in enumerate(text):
        size = char_width(char)
        if used + size > room:
            break
        used += size
        end = index + 1
    return text[:end] + ELLIPSIS


def pad(text: str, width: int, *, right: bool = False) -> str:
    """
    C{text} padded with spaces to C{width} columns.

    @param right: align to the right instead of the left.
    """
    fill = " " * max(width - text_width(text), 0)
    return fill + text if right else text + fill


def clean(text: str) -> str:
    """
    C{text} made safe for a terminal: ANSI escape sequences removed, tabs
    turned into spaces, other control characters shown as U+FFFD.
    """
    text = _ANSI.sub("", text).expandtabs(4)
    if text.isprintable():
        return text
    shown = (char if char.isprintable() else REPLACEMENT for char in text)
    return "".join(shown)


def fit(text: str, term: Terminal) -> str:
    """
    One line of output: cut to the width on a terminal, else whole.

    A coloured line that must be cut loses its colours.
    """
    if not term.is_tty or text_width(text) <= term.width:
        return text
    return cut(_ANSI.sub("", text), term.width)


def paint(text: str, style: str | None, term: Terminal) -> str:
    """
    C{text} in C{style} (a name in C{_STYLES}) when the terminal colours.
    """
    if not term.color or style is None or style not in _STYLES:
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"


def state_style(state: str) -> str | None:
    """
    The colour of a run state, for L{table}'s C{styles}.
    """
    return STATE_STYLES.get(state)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    term: Terminal,
    *,
    right: Sequence[int] = (),
    styles: Mapping[int, Style] | None = None,
) -> list[str]:
    """
    Rows as aligned columns under a header line (none when C{headers}
    is empty).

    On a terminal narrower than the table, the widest columns shrink
    (down to C{MIN_COLUMN}) and their cells are cut with an ellipsis;
    elsewhere the table is printed whole.

    @param right: the indexes of right-aligned columns (numbers).
    @param styles: per column index, a function from a cell to a style
        name, applied only when the terminal colours.
    @return: the lines, without newlines.
    """
    styles = styles or {}
    cells = [[clean(cell) for cell in row] for row in rows]
    count = len(headers) or max((len(row) for row in cells), default=0)
    widths = [text_width(header) for header in headers] or [0] * count
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], text_width(cell))
    if term.is_tty:
        widths = _shrink(widths, term.width)

    def line(row: Sequence[str], heading: bool) -> str:
        parts = []
        last = len(row) - 1
        for index, cell in enumerate(row):
            text = cut(cell, widths[index])
            if index < last or index in right:
                text = pad(text, widths[index], right=index in right)
            style = "bold" if heading else styles.get(index, _none)(cell)
            parts.append(paint(text, style, term))
        return COLUMN_GAP.join(parts).rstrip()

    lines = [line(headers, True)] if headers else []
    lines.extend(line(row, False) for row in cells)
    return lines


def _none(cell: str) -> str | None:
    """
    No style for any cell.
    """
    return None


def _shrink(widths: list[int], room: int) -> list[int]:
    """
    Column widths made to fit C{room} columns, narrowing the widest first.
    """
    widths = list(widths)
    gaps = len(COLUMN_GAP) * (len(widths) - 1)
    while sum(widths) + gaps > room:
        widest = max(range(len(widths)), key=lambda index: widths[index])
        if widths[widest] <= MIN_COLUMN:
            break
        excess = sum(widths) + gaps - room
        second = sorted(widths)[-2] if len(widths) > 1 else MIN_COLUMN
        step = max(1, min(excess, widths[widest] - max(second, MIN_COLUMN)))
        widths[widest] -= step
    return widths


def timestamp(value: str | None, term: Terminal) -> str:
    """
    A wire timestamp for people: ISO 8601 to the second, in UTC with a
    C{Z}, or with its offset in the local zone; C{-} for none.
    """
    if not value:
        return "-"

    moment = wire.parse_time(value).replace(microsecond=0)
    if term.zone is None:
        return wire.format_time(moment)
    return moment.astimezone(term.zone).isoformat()


def duration(seconds: float | None) -> str:
    """
    A duration for people: C{0.25s}, C{42s}, C{3m07s}, C{2h05m}, C{3d04h}.
    """
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def seconds_between(start: str | None, end: str | None) -> float | None:
    """
    The seconds from one wire timestamp to another; C{None} if either is
    missing.
    """
    if not start or not end:
        return None
    delta = wire.parse_time(end) - wire.parse_time(start)
    return delta.total_seconds()


def exit_code(value: Any) -> str:
    """
    An exit code for a table: the number, or C{-} when there is none.
    """
    return "-" if value is None else str(value)


def now_utc() -> datetime:
    """
    The current time, aware, in UTC.
    """
    return datetime.now(timezone.utc)
