"""
The command line of barto-cli: global flags, one subcommand per module.

Each command lives in a module listed in L{COMMANDS}.  The module has
C{add_parser(subparsers)}, which adds its subparser and returns it, and
a C{handler}: either C{handler(args) -> int}, run as it is, or
C{async handler(reactor, args) -> int}, run under
L{twisted.internet.task.react}.  Adding a command is adding its module
to L{COMMANDS}; heavy imports belong inside the handler.  Only async
commands import the reactor, so offline commands such as C{calendar}
never do.  Handlers return the exit code: 0 success, 1 the request
failed, 2 usage error (argparse exits with 2 by itself), 3 server
unreachable or authentication refused.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from barto import __version__

COMMANDS: tuple[str, ...] = (
    "barto.cli.calendar",
    "barto.cli.commands.info",
    "barto.cli.commands.updates",
    "barto.cli.commands.cleanup",
    "barto.cli.commands.clients",
    "barto.cli.commands.query",
    "barto.cli.commands.list",
    "barto.cli.commands.failed",
    "barto.cli.commands.cmd",
    "barto.cli.commands.schedules",
    "barto.cli.commands.runs",
    "barto.cli.commands.show",
    "barto.cli.commands.run",
    "barto.cli.commands.watch",
)
"""The modules that each add one subcommand, in the order of --help."""

DEFAULT_TIMEOUT = 10.0


def build_parser() -> argparse.ArgumentParser:
    """
    The argument parser of barto-cli, with every command of L{COMMANDS}.

    @return: a parser whose namespace has C{handler} after a successful
        parse of a command.
    """
    parser = argparse.ArgumentParser(
        prog="barto-cli",
        description="Query and manage a running bartos; preview calendars.",
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more; repeat for more detail",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="log less; repeat for less",
    )
    parser.add_argument(
        "-e",
        "--enable-std-output",
        action="store_true",
        help="also log to standard output",
    )
    parser.add_argument(
        "-c",
        "--config-absolute-path",
        metavar="PATH",
        help="the configuration file to read",
    )
    parser.add_argument(
        "-t",
        "--tracing-absolute-path",
        metavar="PATH",
        help="the file to write the log to",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for the server (default: %(default)s)",
    )

    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    for name in COMMANDS:
        module = importlib.import_module(name)
        module.add_parser(subparsers).set_defaults(handler=module.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run barto-cli with a command line.

    @param argv: the arguments after the program name; C{sys.argv[1:]}
        when None.
    @return: the exit code.
    """
    args = build_parser().parse_args(argv)
    handler = args.handler
    if inspect.iscoroutinefunction(handler):
        return _react(handler, args)
    return int(handler(args))


def _react(handler: Any, args: argparse.Namespace) -> int:
    """
    Run an async handler under the reactor and return its exit code.
    """
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    codes: list[int] = []

    async def body(reactor: Any) -> None:
        codes.append(int(await handler(reactor, args)))

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
    except SystemExit as stop:
        if stop.code not in (0, None):
            return stop.code if isinstance(stop.code, int) else 1
    return codes[0] if codes else 1


def run() -> None:
    """
    The console script C{barto-cli}.
    """
    sys.exit(main())


if __name__ == "__main__":
    run()
