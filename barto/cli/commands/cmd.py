"""
C{barto-cli cmd}: one schedule's latest runs on every worker.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output

BANNER = "#" * 72


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{cmd} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cmd",
        help="show a schedule's latest runs on every worker",
        description="Show the latest runs of the schedule SCHEDULE on"
        " every worker that has it, with their output.",
    )
    parser.add_argument("cmd_name", metavar="SCHEDULE", help="the schedule")
    parser.add_argument(
        "--runs",
        type=options.count(100),
        default=1,
        metavar="N",
        help="the N latest runs per worker (default 1)",
    )
    parser.add_argument(
        "--lines",
        type=options.count(100_000),
        default=100,
        metavar="N",
        help="the last N output lines of each run (default 100)",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the schedule's runs and print them per worker.
    """
    params = {"schedule": args.cmd_name, "runs": args.runs}
    params["lines"] = args.lines
    result = await session.request("cmd", params)
    if out.json:
        out.document(result)
        return 0

    for each in result["workers"]:
        out.lines([BANNER, f"#  worker: {each['worker']}", BANNER])
        for run in each["runs"]:
            views.print_run_output(run, out)
        if not each["runs"]:
            out.line("  (no runs yet)")
        out.line()
    out.line(f"Total workers: {len(result['workers'])}")
    return 0


handler = options.handler(body)
