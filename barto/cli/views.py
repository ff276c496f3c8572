"""
Text views of runs shared by several commands: run tables, a run's
header and its output lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from barto.cli import render

if TYPE_CHECKING:
    from barto.cli.remote import Output

SHORT_ID = 8
"""How many characters of a run id the tables show."""


def short_id(run_id: str) -> str:
    """
    The start of a run id, as tables show it (C{show} takes it).
    """
    return run_id[:SHORT_ID]


def exit_text(run: Mapping[str, Any]) -> str:
    """
    A run's exit code for a table, or C{-}.
    """
    return render.exit_code(run.get("exit_code"))


def run_rows(
    runs: Sequence[Mapping[str, Any]], out: Output, *, reason: bool = True
) -> tuple[list[str], list[list[str]]]:
    """
    The header and rows of a table of runs.
    """
    headers = ["SLOT", "WORKER", "SCHEDULE", "STATE", "EXIT", "DURATION"]
    headers += ["RUN", "REASON"] if reason else ["RUN"]
    rows = []
    for run in runs:
        row = [
            out.time(run["slot"]),
            run["worker"],
            run["schedule"],
            run["state"],
            exit_text(run),
            render.duration(run.get("duration")),
            short_id(run["id"]),
        ]
        if reason:
            row.append(run.get("reason") or "")
        rows.append(row)
    return headers, rows


def run_table(runs: Sequence[Mapping[str, Any]], out: Output) -> list[str]:
    """
    An aligned table of runs: slot, worker, schedule, state, exit code,
    duration, short id and reason.
    """
    headers, rows = run_rows(runs, out)
    return render.table(
        headers,
        rows,
        out.term,
        right=[4],
        styles={3: render.state_style},
    )


def run_header(run: Mapping[str, Any], out: Output) -> str:
    """
    The line above a run's output: slot, start, duration, state, exit
    code and id.
    """
    state = out.paint(run["state"], render.state_style(run["state"]))
    parts = [
        f"slot {out.time(run['slot'])}",
        f"start {out.time(run.get('started_at'))}",
        f"duration {render.duration(run.get('duration'))}",
        f"state {state}",
        f"exit {exit_text(run)}",
        f"run {run['id']}",
    ]
    if run.get("reason"):
        parts.append(f"reason {run['reason']}")
    return "=== " + " | ".join(parts)


def output_line(line: Mapping[str, Any], out: Output) -> str:
    """
    One output line: two spaces before standard output, C{! } before
    standard error (shown in yellow on a colour terminal).
    """
    text = render.clean(line["data"])
    if line.get("stream") == "stderr":
        return out.paint("! " + text, "yellow")
    return "  " + text


def print_run_output(run: Mapping[str, Any], out: Output) -> None:
    """
    A run's header and the output lines it came with, noting the lines
    left out before them.
    """
    out.line(run_header(run, out))
    lines = run.get("output") or []
    left_out = int(run.get("output_lines") or 0) - len(lines)
    if left_out > 0:
        out.line(
            f"  ... {left_out} earlier lines not shown "
            f"(barto-cli show {short_id(run['id'])})"
        )
    for line in lines:
        out.line(output_line(line, out))
