"""
The light half of the remote commands: their common flags, the types of
their arguments, and L{handler}, which imports the connection machinery
(Twisted, Autobahn) only when a command runs, so that building the
parser, C{--help} and the offline commands stay fast.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from barto import wire

if TYPE_CHECKING:
    from barto.cli.remote import Body

DEFAULT_TIMEOUT = 10.0
"""Seconds for connecting and the first answer, unless C{--timeout}."""

Handler = Callable[[Any, argparse.Namespace], Coroutine[Any, Any, int]]
"""What L{barto.cli.main} runs under C{task.react}."""


def handler(body: Body) -> Handler:
    """
    The handler of a remote command: L{barto.cli.remote.execute} with
    C{body}, imported when the command runs.
    """

    async def run(reactor: Any, args: argparse.Namespace) -> int:
        from barto.cli import remote

        return await remote.execute(reactor, args, body)

    return run


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """
    The flags every remote command takes after its name: C{-j/--json},
    C{--local} and C{--timeout}.

    They may also come before the command name; given here, they win.
    """
    parser.add_argument(
        "-j",
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document (see docs/cli.md)",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show timestamps in the local time zone instead of UTC",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"give up when bartos has not answered in time "
        f"(default {DEFAULT_TIMEOUT:g})",
    )


def add_worker_flag(parser: argparse.ArgumentParser) -> None:
    """
    The required C{-n/--name WORKER} of the commands about one worker.
    """
    parser.add_argument(
        "-n", "--name", required=True, metavar="NAME", help="the worker's name"
    )


def add_run_window_flags(parser: argparse.ArgumentParser) -> None:
    """
    Add C{--since TIME} and C{--limit N} (default 50) for lists of runs.
    """
    parser.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="only slots from TIME on (ISO 8601, a date, or an age: 2h)",
    )
    parser.add_argument(
        "--limit",
        type=count(10_000),
        default=50,
        metavar="N",
        help="at most N runs (default 50)",
    )


def positive_seconds(text: str) -> float:
    """
    An argparse type: a number of seconds above zero.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return value


_AGO = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def moment(text: str) -> str:
    """
    An argparse type: a time the user typed, as a wire timestamp.

    Takes ISO 8601 (with C{Z} or an offset; without one it is UTC), a
    date (midnight UTC), or an age such as C{30m}, C{2h}, C{7d}, C{1w}
    (that long before now).
    """
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago is not None:
        seconds = int(ago.group(1)) * _UNITS[ago.group(2)]
        then = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        return wire.format_time(then.replace(microsecond=0))

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (expected ISO 8601 like "
            "2026-03-01T12:00:00Z, a date, or an age like 2h or 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return wire.format_time(parsed)


def count(high: int) -> Callable[[str], int]:
    """
    An argparse type: a whole number from 1 to C{high}.
    """

    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= high:
            wanted = f"a number from 1 to {high}"
            raise argparse.ArgumentTypeError(f"not {wanted}: {text!r}")
        return int(text)

    return parse
