"""
C{barto-cli list}: a worker's schedules, or one schedule's runs with
their output.
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
    Add C{list} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "list",
        help="list a worker's schedules, or a schedule's runs and output",
        description="Without -c, list the worker's schedules with their"
        " latest run. With -c, show that schedule's latest runs, oldest"
        " first, each under a header (slot, start, duration, state, exit"
        " code), followed by its output.",
    )
    options.add_worker_flag(parser)
    parser.add_argument(
        "-c",
        "--cmd-name-opt",
        metavar="SCHEDULE",
        help="the schedule whose runs to show",
    )
    parser.add_argument(
        "--runs",
        type=options.count(1000),
        default=10,
        metavar="N",
        help="with -c, the N latest runs (default 10)",
    )
    parser.add_argument(
        "--lines",
        type=options.count(100_000),
        default=1000,
        metavar="N",
        help="with -c, the last N output lines of each run (default 1000)",
    )
    options.add_output_flags(parser)
    return parser


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Ask for the schedules or the runs, and print them.
    """
    params: dict[str, Any] = {"worker": args.name}
    if args.cmd_name_opt is not None:
        params.update(schedule=args.cmd_name_opt, runs=args.runs)
        params["lines"] = args.lines
    result = await session.request("list", params)
    if out.json:
        out.document(result)
    elif args.cmd_name_opt is None:
        _print_schedules(result, out)
    else:
        _print_runs(result, out)
    return 0


def _print_schedules(result: dict[str, Any], out: Output) -> None:
    """
    The worker's schedules: calendar, next elapse and latest run.
    """
    headers = ["SCHEDULE", "CALENDAR", "NEXT ELAPSE", "LAST SLOT"]
    headers += ["STATE", "EXIT", "RUN"]
    rows = []
    for each in result["schedules"]:
        last = each["last_run"] or {}
        rows.append(
            [
                each["name"],
                each["on_calendar"] or "(not configured)",
                out.time(each["next_elapse"]),
                out.time(last.get("slot")),
                last.get("state", "-"),
                views.exit_text(last),
                views.short_id(last.get("id", "-")),
            ]
        )
    out.lines(
        render.table(
            headers,
            rows,
            out.term,
            right=[5],
            styles={4: render.state_style},
        )
    )
    out.line()
    out.line(f"Total schedules: {len(rows)}")


def _print_runs(result: dict[str, Any], out: Output) -> None:
    """
    Each run under its header, oldest first.
    """
    for run in result["runs"]:
        views.print_run_output(run, out)
    if result["runs"]:
        out.line()
    out.line(f"Total runs: {len(result['runs'])}")


handler = options.handler(body)
