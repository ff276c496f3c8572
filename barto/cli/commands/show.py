"""
C{barto-cli show}: one run's status, commands and whole output.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from barto.cli import options, render, views

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{show} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "show",
        help="show one run: its status, commands and whole output",
        description="Show one run: its status, each command's exit status"
        " and the whole output. RUN is a run id or its start (at least 6"
        " characters, as the tables show it).",
    )
    parser.add_argument("run", metavar="RUN", help="the run id or its start")
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the run; print its output as it arrives, then its status.
    """
    # FIXME: the output is held until the run's header arrives, last; a
    # header sent first would let the lines stream to the terminal.
    lines: list[Mapping[str, Any]] = []
    result = await session.request(
        "show", {"run": args.run}, lambda event: lines.extend(event["lines"])
    )
    if out.json:
        out.document(
            {
                "run": result["run"],
                "commands": result["commands"],
                "output": lines,
            }
        )
        return 0

    run = result["run"]
    fields = [
        ["run", run["id"]],
        ["worker", run["worker"]],
        ["schedule", run["schedule"]],
        ["slot", out.time(run["slot"])],
        ["trigger", run["trigger"]],
        ["state", run["state"]],
        ["reason", run["reason"] or "-"],
        ["exit code", views.exit_text(run)],
        ["created", out.time(run["created_at"])],
        ["dispatched", out.time(run["dispatched_at"])],
        ["started", out.time(run["started_at"])],
        ["ended", out.time(run["ended_at"])],
        ["duration", render.duration(run["duration"])],
        ["output lines", str(run["output_lines"])],
    ]
    out.lines(render.table([], fields, out.term, styles={}))
    out.line()
    out.lines(_commands(result["commands"], out))
    out.line()
    for line in lines:
        out.line(views.output_line(line, out))
    return 0


def _commands(commands: list[dict[str, Any]], out: Output) -> list[str]:
    """
    The table of a run's commands and their exit statuses.
    """
    rows = []
    for each in commands:
        took = render.seconds_between(each["started_at"], each["ended_at"])
        rows.append(
            [
                str(each["index"]),
                render.exit_code(each["exit_code"]),
                render.exit_code(each["signal"]),
                render.duration(took),
                each["cmd"],
            ]
        )
    headers = ["#", "EXIT", "SIGNAL", "DURATION", "COMMAND"]
    return render.table(headers, rows, out.term, right=[0, 1, 2])


handler = options.handler(body)
