"""
Tests for C{barto-cli calendar} and the command-line skeleton around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from barto.calendar import parse
from barto.cli import calendar as command
from barto.cli.main import build_parser, main

BASE = "2025-03-29 12:00:00"
NOON = datetime(2025, 3, 29, 12, tzinfo=timezone.utc)
Captured = pytest.CaptureFixture[str]


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    """The text report follows systemd-analyze calendar's layout."""
    argv = ["calendar", "--iterations", "2", "--base-time", BASE]
    code = main([*argv, "Mon *,*,01"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "  Original form: Mon *,*,01"
    assert out[1] == "Normalized form: Mon *-*-01 00:00:00"
    assert out[2] == "    Next elapse: Mon 2025-09-01 00:00:00 UTC"
    assert out[3].startswith("       From now: ")
    assert out[4] == "       Iter. #2: Mon 2025-12-01 00:00:00 UTC"


def test_zone_shows_utc_too(capsys: pytest.CaptureFixture[str]) -> None:
    """An elapse in another zone is also shown in UTC."""
    main(["calendar", "--base-time", BASE, "*-*-* 09:00:00 Europe/Berlin"])

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Normalized form: *-*-* 09:00:00 Europe/Berlin"
    assert out[1] == "    Next elapse: Sun 2025-03-30 09:00:00 CEST"
    assert out[2] == "       (in UTC): Sun 2025-03-30 07:00:00 UTC"


def test_never(capsys: pytest.CaptureFixture[str]) -> None:
    """An expression that no longer elapses says never."""
    main(["calendar", "--base-time", BASE, "2020-01-01"])

    assert "    Next elapse: never" in capsys.readouterr().out


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one list of objects, on either side of the command."""
    for argv in (
        ["--json", "calendar", "--iterations", "2", "--base-time", BASE],
        ["calendar", "--json", "--iterations", "2", "--base-time", BASE],
    ):
        code = main([*argv, "quarterly", "*:30 Asia/Kolkata"])

        assert code == 0
        assert json.loads(capsys.readouterr().out) == [
            {
                "expression": "quarterly",
                "normalized": "*-01,04,07,10-01 00:00:00",
                "elapses": [
                    "2025-04-01T00:00:00+00:00",
                    "2025-07-01T00:00:00+00:00",
                ],
            },
            {
                "expression": "*:30 Asia/Kolkata",
                "normalized": "*-*-* *:30:00 Asia/Kolkata",
                "elapses": [
                    "2025-03-29T18:30:00+05:30",
                    "2025-03-29T19:30:00+05:30",
                ],
            },
        ]


def test_invalid_expression(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad expression is reported on stderr and the exit code is 1."""
    code = main(["calendar", "--base-time", BASE, "daily", "24:00"])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == "barto-cli: invalid hour of day: '24'\n"
    assert "Normalized form: *-*-* 00:00:00" in captured.out


@pytest.mark.parametrize(
    "argv",
    [
        ["calendar"],
        ["calendar", "--iterations", "0", "daily"],
        ["calendar", "--base-time", "yesterday", "daily"],
        ["nonsense"],
        [],
    ],
)
def test_usage_errors(argv: list[str], capsys: Captured) -> None:
    """Usage errors exit with 2."""
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-29 12:00:00", NOON),
        ("2025-03-29T12:00:00Z", NOON),
        ("2025-03-29 12:00:00 UTC", NOON),
        ("2025-03-29T14:00:00+02:00", NOON),
    ],
)
def test_base_time(text: str, expected: datetime) -> None:
    """--base-time takes ISO 8601 and systemd's form, UTC by default."""
    assert command.base_time(text) == expected


def test_base_time_now() -> None:
    """--base-time now is an aware moment."""
    assert command.base_time("now").tzinfo is not None


def test_global_flags() -> None:
    """The global flags parse into the namespace every command sees."""
    args = build_parser().parse_args(
        [
            "-vv",
            "-q",
            "-e",
            "-c",
            "/etc/barto-cli.toml",
            "-t",
            "/tmp/cli.log",
            "--timeout",
            "2.5",
            "calendar",
            "daily",
        ]
    )

    assert (args.verbose, args.quiet, args.enable_std_output) == (2, 1, True)
    assert args.config_absolute_path == "/etc/barto-cli.toml"
    assert args.tracing_absolute_path == "/tmp/cli.log"
    assert (args.timeout, args.json) == (2.5, False)
    assert args.handler is command.handler


def test_relative() -> None:
    """From now reads like systemd's relative times."""
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def later(seconds: int) -> datetime:
        return datetime.fromtimestamp(now.timestamp() + seconds, timezone.utc)

    assert command.relative(later(0), now) == "now"
    assert command.relative(later(42), now) == "42s left"
    assert command.relative(later(-90), now) == "1min 30s ago"
    assert command.relative(later(2 * 3600 + 300), now) == "2h 5min left"
    assert command.relative(later(9 * 86400), now) == "1 week 2 days left"
    assert command.relative(later(-400 * 86400), now) == "1 year 1 month ago"


def test_render_is_pure() -> None:
    """render() lays out a report from its arguments alone."""
    spec = parse("daily")
    moment = datetime(2025, 1, 2, tzinfo=timezone.utc)

    text = command.render("daily", spec, [moment], moment)
    assert text.splitlines() == [
        "  Original form: daily",
        "Normalized form: *-*-* 00:00:00",
        "    Next elapse: Thu 2025-01-02 00:00:00 UTC",
        "       From now: now",
    ]


def test_calendar_does_not_import_the_reactor() -> None:
    """The offline calendar command never imports the Twisted reactor."""
    program = (
        "import sys\n"
        "from barto.cli.main import main\n"
        "code = main(['calendar', '--base-time', '2025-01-01', 'daily'])\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, check=False
    )

    assert result.returncode == 0, result.stderr


def test_subprocess() -> None:
    """python -m barto.cli.main calendar runs end to end."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "barto.cli.main",
            "calendar",
            "--base-time",
            BASE,
            "--iterations",
            "3",
            "Mon..Fri 09:00",
            "bogus",
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr == "barto-cli: invalid day of week: 'bogus'\n"
    assert "    Next elapse: Mon 2025-03-31 09:00:00 UTC" in result.stdout
    assert "       Iter. #3: Wed 2025-04-02 09:00:00 UTC" in result.stdout
