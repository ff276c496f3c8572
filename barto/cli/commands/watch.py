"""
C{barto-cli watch}: follow live output and run states until interrupted.
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
    Add C{watch} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="follow live output and run states until interrupted",
        description="Print the output and state changes of runs as they"
        " happen, until interrupted (Ctrl-C). With --json, one JSON"
        " event per line.",
    )
    parser.add_argument("-n", "--name", help="only this worker's runs")
    parser.add_argument(
        "-c", "--cmd-name", metavar="SCHEDULE", help="only this schedule"
    )
    options.add_output_flags(parser)
    return parser


def event_lines(event: Mapping[str, Any], out: Output) -> list[str]:
    """
    The text of one run event: a line per output line, or one line for a
    state change or a command's exit.
    """
    where = (
        f"{event.get('worker')}/{event.get('schedule')} "
        f"{views.short_id(str(event.get('run', '')))}"
    )
    kind = event.get("kind")
    if kind == "output":
        at = out.time(event["at"])
        stream = "!" if event["stream"] == "stderr" else " "
        return [
            f"{at} {where} {stream} {text}"
            for text in map(render.clean, event["lines"])
        ]
    if kind == "state":
        state = out.paint(event["state"], render.state_style(event["state"]))
        reason = f" ({event['reason']})" if event.get("reason") else ""
        code = event.get("code")
        code_text = f" exit {code}" if code is not None else ""
        return [f"{where} {state}{code_text}{reason}"]
    if kind == "exit":
        code = render.exit_code(event.get("code"))
        return [f"{where} command {event['cmd']} exited {code}"]
    return []


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Open the stream and print its events until interrupted.
    """

    def event(item: Mapping[str, Any]) -> None:
        if item.get("kind") == "watching":
            if not out.json:
                out.stderr.write("watching; press Ctrl-C to stop\n")
            return
        if out.json:
            out.record(item)
            return
        out.lines(event_lines(item, out))
        out.flush()

    from barto.cli.client import Interrupted

    params = {"worker": args.name, "schedule": args.cmd_name}
    try:
        await session.request("watch", params, event)
    except Interrupted:
        return 0
    return 0


handler = options.handler(body)
