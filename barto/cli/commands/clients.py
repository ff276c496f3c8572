"""
C{barto-cli clients}: the workers connected now.
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
    Add C{clients} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "clients",
        help="list the connected workers",
        description="List the connected workers with their host facts.",
    )
    parser.add_argument(
        "--versions",
        action="store_true",
        help="show only each worker's bartoc version",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the connected workers and print them.
    """
    result = await session.request("clients")
    connected = result["clients"]
    if out.json:
        if args.versions:
            versions = {each["name"]: _version(each) for each in connected}
            result = {"versions": versions}
        out.document(result)
        return 0

    if args.versions:
        headers = ["NAME", "VERSION"]
        rows = [[each["name"], _version(each)] for each in connected]
    else:
        headers = ["NAME", "ADDRESS", "HOSTNAME", "OS", "OS VERSION"]
        headers += ["KERNEL", "VERSION", "CONNECTED SINCE"]
        rows = [
            [
                each["name"],
                each["address"],
                each["hostname"],
                each["os"],
                each["os_version"],
                each["kernel"],
                each["version"],
                out.time(each["connected_since"]),
            ]
            for each in connected
        ]
    if rows:
        out.lines(render.table(headers, rows, out.term))
        out.line()
    out.line(f"Total clients: {len(connected)}")
    return 0


def _version(client: dict[str, Any]) -> str:
    """
    A worker's bartoc version, or C{unknown} when it sent none.
    """
    return str(client["version"] or "unknown")


handler = options.handler(body)
