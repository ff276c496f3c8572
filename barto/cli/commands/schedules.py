"""
C{barto-cli schedules}: the schedules in force on the server.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options, render

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{schedules} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schedules",
        help="list the schedules in force, with their next elapse",
        description="List the schedules in force: normalized calendar,"
        " the values chosen for R, time zone and next elapse.",
    )
    parser.add_argument("-n", "--name", help="only this worker's schedules")
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the schedules and print them as a table.
    """
    result = await session.request("schedules", {"worker": args.name})
    if out.json:
        out.document(result)
        return 0

    headers = ["WORKER", "SCHEDULE", "NEXT ELAPSE", "ZONE", "CALENDAR", "R"]
    rows = [
        [
            each["worker"],
            each["name"],
            out.time(each["next_elapse"]),
            each["timezone"],
            each["normalized"],
            " ".join(f"{k}={v}" for k, v in each["random"].items()) or "-",
        ]
        for each in result["schedules"]
    ]
    if rows:
        out.lines(render.table(headers, rows, out.term))
        out.line()
    out.line(f"Total schedules: {len(rows)}")
    return 0


handler = options.handler(body)
