"""
C{barto-cli updates}: what a worker's package manager would upgrade.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options, updates, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def _kind(text: str) -> str:
    """
    An argparse type: an update kind, in any case.
    """
    kind = text.lower()
    if kind not in updates.KINDS:
        raise argparse.ArgumentTypeError(
            f"invalid update kind: {text!r} (expected one of "
            f"{', '.join(updates.KINDS)})"
        )
    return kind


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{updates} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "updates",
        help="summarize the updates a worker's package manager found",
        description="Summarize the updates found by the newest successful"
        " run whose output is the given package manager's (of the"
        " schedule given with -c, if any).",
    )
    options.add_worker_flag(parser)
    parser.add_argument(
        "-u",
        "--update-kind",
        required=True,
        type=_kind,
        metavar="|".join(updates.KINDS),
        help="the package manager whose output to read",
    )
    parser.add_argument(
        "-c",
        "--cmd-name",
        metavar="SCHEDULE",
        help="read only the newest successful run of this schedule",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the summary and print it as the original did.
    """
    params = {
        "worker": args.name,
        "kind": args.update_kind,
        "schedule": args.cmd_name,
    }
    result = await session.request("updates", params)
    if out.json:
        out.document(result)
        return 0

    run = result["run"]
    out.line(
        f"{run['worker']}/{run['schedule']}: run "
        f"{views.short_id(run['id'])} at {out.time(run['slot'])}"
    )
    out.line()
    lines = updates.render(result["kind"], result["summary"])
    out.lines(lines or ["no updates"])
    return 0


handler = options.handler(body)
