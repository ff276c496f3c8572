"""
C{barto-cli query}: the rows of one read-only SELECT on the store.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from barto.cli import options, render

if TYPE_CHECKING:
    from barto.cli.client import Session
    from barto.cli.remote import Output


def _rows(text: str) -> int:
    """
    An argparse type: a row limit from 1 to 10,000.
    """
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"not a row limit: {text!r}")
    return int(text)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add C{query} to the command line.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "query",
        help="run one read-only SELECT on the store (needs cli-admin)",
        description="Run one SELECT on the store, read-only, with a row"
        " limit and a time limit. Anything else is refused.",
    )
    parser.add_argument(
        "-q", "--query", required=True, metavar="SQL", help="the SELECT"
    )
    parser.add_argument(
        "--max-rows",
        type=_rows,
        default=1000,
        metavar="N",
        help="return at most N rows (default 1000)",
    )
    options.add_output_flags(parser)
    return parser


def _cell(value: Any) -> str:
    """
    A value as a table cell: C{NULL} for none.
    """
    if value is None:
        return "NULL"
    return str(value)


async def body(session: Session, args: argparse.Namespace, out: Output) -> int:
    """
    Send the query and print its rows as a table.
    """
    params = {"sql": args.query, "max_rows": args.max_rows}
    result = await session.request("query", params)
    if out.json:
        out.document(result)
        return 0

    rows = [[_cell(value) for value in row] for row in result["rows"]]
    out.lines(render.table(result["columns"], rows, out.term))
    more = f", truncated at {args.max_rows}" if result["truncated"] else ""
    out.line(f"({len(rows)} rows{more})")
    return 0


handler = options.handler(body)
