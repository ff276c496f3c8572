"""
C{barto-cli failed}: the latest runs that failed, timed out or were lost.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options, render, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{failed} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "failed",
        help="list the latest failed runs with their last output lines",
        description="List the latest runs that failed, timed out or were"
        " lost, newest first, with their last output lines.",
    )
    options.add_run_window_flags(parser)
    parser.add_argument(
        "--lines",
        type=options.count(100),
        default=3,
        metavar="N",
        help="the last N output lines of each run (default 3)",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the failed runs and print them as a table.
    """
    params = {"since": args.since, "limit": args.limit, "lines": args.lines}
    result = await session.request("failed", params)
    if out.json:
        out.document(result)
        return 0

    runs = result["runs"]
    headers, rows = views.run_rows(runs, out, reason=False)
    headers.append("LAST LINES")
    for row, run in zip(rows, runs, strict=True):
        last = run["last_lines"] or [run.get("reason") or ""]
        row.append(" | ".join(line.strip() for line in last))
    if rows:
        out.lines(
            render.table(
                headers,
                rows,
                out.term,
                right=[4],
                styles={3: render.state_style},
            )
        )
        out.line()
    out.line(f"Total failed runs: {len(runs)}")
    return 0


handler = options.handler(body)
