"""
C{barto-cli run}: fire a schedule now, and optionally follow the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from barto.cli import options, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output

SUCCESS = "succeeded"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{run} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a schedule now (needs the cli-admin role)",
        description="Run a worker's schedule now and print the run id."
        " With --follow, print its output as it comes and exit with the"
        " run's exit code.",
    )
    options.add_worker_flag(parser)
    parser.add_argument(
        "-c",
        "--cmd-name",
        required=True,
        metavar="SCHEDULE",
        help="the schedule to run",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="print the run's output until it ends",
    )
    options.add_output_flags(parser)
    return parser


def exit_code_of(run: Mapping[str, Any] | None) -> int:
    """
    The exit code C{run --follow} ends with: 0 for a success, the run's
    own code for a failure, 1 when it has none (timed out, cancelled,
    lost, missed, skipped, killed by a signal).
    """
    if run is None:
        return 1
    if run["state"] == SUCCESS:
        return 0
    code = run.get("exit_code")
    if isinstance(code, int) and 0 < code < 256:
        return code
    return 1


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Fire the schedule; with C{--follow}, relay the run's events.
    """
    params = {
        "worker": args.name,
        "schedule": args.cmd_name,
        "follow": args.follow,
    }
    output: list[Mapping[str, Any]] = []

    def event(item: Mapping[str, Any]) -> None:
        if item["kind"] == "output":
            output.extend(_lines(item))
        if out.json:
            return
        if item["kind"] == "fired":
            out.line(item["run"])
        elif item["kind"] == "output":
            for line in _lines(item):
                out.line(views.output_line(line, out))
        elif item["kind"] == "state" and item["state"] != "running":
            reason = f" ({item['reason']})" if item.get("reason") else ""
            run = views.short_id(item["run"])
            out.line(f"run {run} {item['state']}{reason}")
        out.flush()

    result = await session.request("run", params, event)
    if out.json:
        out.document({**result, "output": output} if args.follow else result)
    elif not args.follow:
        out.line(result["run"])
    return exit_code_of(result["stored"]) if args.follow else 0


def _lines(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    The output lines of an C{output} event, one mapping each.
    """
    return [
        {
            "cmd": event["cmd"],
            "stream": event["stream"],
            "at": event["at"],
            "data": text,
        }
        for text in event["lines"]
    ]


handler = options.handler(body)
