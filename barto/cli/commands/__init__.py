"""
The commands of barto-cli that talk to bartos, one module each.

Every module has C{add_parser(subparsers)}, which adds the command with
its flags, and C{handler(args) -> int}, which runs it (see
L{barto.cli.remote.command}).
"""

MODULES = (
    "info",
    "updates",
    "cleanup",
    "clients",
    "query",
    "list",
    "failed",
    "cmd",
    "schedules",
    "runs",
    "show",
    "run",
    "watch",
)
"""The command modules, in the order C{--help} lists them."""
