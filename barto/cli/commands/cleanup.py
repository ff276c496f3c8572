"""
C{barto-cli cleanup}: apply the retention rules now.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{cleanup} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cleanup",
        help="apply retention now (needs the cli-admin role)",
        description="Delete the runs and output that the server's"
        " [retention] settings no longer keep, now.",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for a clean-up and print what it removed.
    """
    result = await session.request("cleanup")
    if out.json:
        out.document(result)
        return 0

    removed = result["removed"]
    out.line(f"deleted {removed['runs']} runs")
    out.line(f"deleted {removed['commands']} command statuses")
    out.line(f"deleted {removed['output']} output lines")
    return 0


handler = options.handler(body)
