"""
C{barto-cli info}: the server's version, uptime, store and counts.
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
    Add C{info} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "info",
        help="show the server's version, uptime, store and counts",
        description="Show the version, uptime, store and counts of bartos.",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for C{info} and print it.
    """
    info = await session.request("info")
    if out.json:
        out.document(info)
        return 0

    by_state = info["runs_by_state"]
    counts = sorted(by_state.items())
    states = ", ".join(f"{state} {count}" for state, count in counts)
    runs = str(info["runs"])
    known, connected = info["workers"]["known"], info["workers"]["connected"]
    rows = [
        ["version", info["version"]],
        ["started", out.time(info["started"])],
        ["uptime", render.duration(info["uptime"])],
        ["store", info["store"]],
        ["pending writes", str(info["pending_writes"])],
        ["runs", f"{runs} ({states})" if states else runs],
        ["active runs", str(info["active_runs"])],
        ["workers", f"{known} known, {connected} connected"],
        ["schedules", str(info["schedules"])],
    ]
    out.lines(render.table([], rows, out.term))
    return 0


handler = options.handler(body)
