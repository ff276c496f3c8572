"""
Tests for L{barto.cli.render}: widths, cutting, tables, time, colour.
"""

from __future__ import annotations

import io
from datetime import timedelta, timezone

from barto.cli import render
from barto.cli.render import Terminal

TTY = Terminal(width=30, is_tty=True)
PIPE = Terminal(width=30, is_tty=False)


class _FakeTTY(io.StringIO):
    """
    A text stream that claims to be a terminal.
    """

    def isatty(self) -> bool:
        return True


def test_text_width_counts_wide_and_combining() -> None:
    """
    East Asian wide characters take two columns, combining marks none.
    """
    assert render.text_width("abc") == 3
    assert render.text_width("日本") == 4
    assert render.text_width("e\u0301") == 1


def test_cut_short_text_unchanged() -> None:
    """
    Text that fits is returned as it is.
    """
    assert render.cut("hello", 5) == "hello"


def test_cut_adds_ellipsis() -> None:
    """
    Text that does not fit ends in an ellipsis within the width.
    """
    assert render.cut("hello world", 8) == "hello w…"


def test_cut_never_splits_a_character() -> None:
    """
    A wide character that would straddle the edge is left out whole.
    """
    cut = render.cut("日本語テキスト", 6)

    assert cut == "日本…"
    assert render.text_width(cut) <= 6


def test_cut_keeps_combining_marks_with_their_base() -> None:
    """
    A combining mark stays with the character it modifies.
    """
    assert render.cut("e\u0301e\u0301e\u0301e\u0301", 3) == "e\u0301e\u0301…"


def test_fit_cuts_only_on_a_terminal() -> None:
    """
    On a terminal long lines are cut; in a pipe they are printed whole.
    """
    line = "x" * 50

    assert render.fit(line, TTY) == "x" * 29 + "…"
    assert render.fit(line, PIPE) == line


def test_clean_strips_escapes_and_controls() -> None:
    """
    ANSI sequences are removed, tabs expanded, controls replaced.
    """
    cleaned = render.clean("\x1b[31mred\x1b[0m\tx\x07")

    assert cleaned == "red x\N{REPLACEMENT CHARACTER}"


def test_table_aligns_columns() -> None:
    """
    Columns are padded to their widest cell, numbers aligned right.
    """
    lines = render.table(
        ["NAME", "CODE", "NOTE"],
        [["a", "1", "x"], ["long", "127", "y"]],
        PIPE,
        right=[1],
    )

    assert lines == [
        "NAME  CODE  NOTE",
        "a        1  x",
        "long   127  y",
    ]


def test_table_fits_terminal_width() -> None:
    """
    On a terminal the widest column shrinks, cut with an ellipsis.
    """
    rows = [["w1", "failed", "a very long last output line of the run"]]
    lines = render.table(["WORKER", "STATE", "LAST"], rows, TTY)

    assert all(render.text_width(line) <= TTY.width for line in lines)
    assert lines[1].endswith("…")


def test_table_whole_in_a_pipe() -> None:
    """
    In a pipe the table is never cut.
    """
    long = "a very long last output line of the run"
    lines = render.table(["WORKER", "LAST"], [["w1", long]], PIPE)

    assert lines[1] == f"w1      {long}"


def test_colour_only_on_a_terminal_without_no_color() -> None:
    """
    Colour needs a terminal, and NO_COLOR turns it off.
    """
    assert Terminal.detect(_FakeTTY(), {}).color
    assert not Terminal.detect(_FakeTTY(), {"NO_COLOR": "1"}).color
    assert not Terminal.detect(io.StringIO(), {}).color


def test_paint() -> None:
    """
    Styles become ANSI sequences only when the terminal colours.
    """
    colour = Terminal(color=True)

    assert render.paint("ok", "green", colour) == "\x1b[32mok\x1b[0m"
    assert render.paint("ok", "green", TTY) == "ok"


def test_table_colours_after_padding() -> None:
    """
    Coloured cells keep the columns aligned.
    """
    colour = Terminal(width=80, is_tty=True, color=True)
    lines = render.table(
        ["STATE", "X"],
        [["failed", "1"], ["ok", "2"]],
        colour,
        styles={0: render.state_style},
    )

    assert lines[1] == "\x1b[31mfailed\x1b[0m  1"
    assert lines[2] == "ok      2"


def test_timestamp_utc_and_local() -> None:
    """
    Timestamps show in UTC with Z, or with the local offset, to the second.
    """
    value = "2026-03-01T12:00:05.654321Z"
    zone = timezone(timedelta(hours=2))

    assert render.timestamp(value, PIPE) == "2026-03-01T12:00:05Z"
    local = render.timestamp(value, Terminal(zone=zone))
    assert local == "2026-03-01T14:00:05+02:00"
    assert render.timestamp(None, PIPE) == "-"


def test_duration() -> None:
    """
    Durations read naturally from fractions of a second to days.
    """
    assert render.duration(0.25) == "0.25s"
    assert render.duration(42) == "42s"
    assert render.duration(187) == "3m07s"
    assert render.duration(7500) == "2h05m"
    assert render.duration(273600) == "3d04h"
    assert render.duration(None) == "-"


def test_seconds_between() -> None:
    """
    The time between two wire timestamps, or None when one is missing.
    """
    start, end = "2026-03-01T12:00:00Z", "2026-03-01T12:00:01.5Z"

    assert render.seconds_between(start, end) == 1.5
    assert render.seconds_between(start, None) is None
