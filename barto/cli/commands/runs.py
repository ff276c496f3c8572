"""
C{barto-cli runs}: the latest runs, missed and lost ones included.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto import wire
from barto.cli import options, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output

STATES = wire.RUN_STATES


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{runs} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "runs",
        help="list the latest runs, missed and lost ones with reasons",
        description="List the latest runs, newest first, with their state"
        " and, for missed, skipped and lost slots, the reason.",
    )
    parser.add_argument("-n", "--name", help="only this worker's runs")
    parser.add_argument(
        "-c", "--cmd-name", metavar="SCHEDULE", help="only this schedule"
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="only runs in this state (repeatable)",
    )
    options.add_run_window_flags(parser)
    parser.add_argument(
        "--until",
        type=options.moment,
        metavar="TIME",
        help="only slots before TIME",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the runs and print them as a table.
    """
    params = {
        "worker": args.name,
        "schedule": args.cmd_name,
        "state": args.state,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
    }
    result = await session.request("runs", params)
    if out.json:
        out.document(result)
        return 0

    if result["runs"]:
        out.lines(views.run_table(result["runs"], out))
        out.line()
    out.line(f"Total runs: {len(result['runs'])}")
    return 0


handler = options.handler(body)
