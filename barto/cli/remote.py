"""
What every command that talks to bartos shares: config, logging, one
connection, output and the exit code.

A command module has an async function C{body(session, args, out) ->
int}; L{execute} loads C{barto-cli.toml} (a bad config exits 2),
connects with the C{--timeout}, calls it, closes the connection, and
maps every expected failure to its exit code and one line on standard
error: 1 when the server answered with an error, 3 when it could not be
reached in time.  L{barto.cli.options.handler} makes the handler that
L{barto.cli.main} runs under C{task.react}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet.interfaces import IReactorCore, IReactorTime

from barto.cli import client, render
from barto.cli.client import EXIT_USAGE, CliError, Session
from barto.cli.options import DEFAULT_TIMEOUT
from barto.config import CliConfig, ConfigError, load_cli_config

PROGRAM = "barto-cli"


@dataclass
class Output:
    """
    Where a command writes: its text or JSON, and the terminal it is for.

    @ivar json: print one JSON document instead of text.
    """

    stdout: TextIO
    stderr: TextIO
    term: render.Terminal
    json: bool = False

    def line(self, text: str = "") -> None:
        """
        Print one line of text, cut to the terminal's width on a TTY.
        """
        self.stdout.write(render.fit(text, self.term) + "\n")

    def lines(self, texts: Iterable[str]) -> None:
        """
        Print lines of text.
        """
        for text in texts:
            self.line(text)

    def document(self, value: Any) -> None:
        """
        Print one JSON document.
        """
        self.stdout.write(json.dumps(value, indent=2, ensure_ascii=False))
        self.stdout.write("\n")

    def record(self, value: Any) -> None:
        """
        Print one JSON value on one line (for streams: JSON Lines).
        """
        self.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def flush(self) -> None:
        """
        Push what was printed to the terminal.
        """
        self.stdout.flush()

    def time(self, value: str | None) -> str:
        """
        A wire timestamp as the terminal shows timestamps.
        """
        return render.timestamp(value, self.term)

    def paint(self, text: str, style: str | None) -> str:
        """
        C{text} in a style, when the terminal colours.
        """
        return render.paint(text, style, self.term)


Body = Callable[[Session, argparse.Namespace, Output], Awaitable[int]]
"""A command's work once connected: returns the exit code."""


def load_config(
    args: argparse.Namespace,
    environ: Mapping[str, str],
) -> CliConfig:
    """
    The CLI config from C{-c} (or the default file) and the environment.

    @raise ConfigError: it cannot be used.
    """
    path = getattr(args, "config_absolute_path", None)
    return load_cli_config(path, environ=environ)


def _start_logging(args: argparse.Namespace, config: CliConfig) -> None:
    """
    Log as C{-v}, C{-q}, C{-e} and C{-t} ask; without any of them the
    CLI logs nothing, so standard error holds only its one-line message.

    @raise ConfigError: the log file cannot be opened.
    """
    verbose = getattr(args, "verbose", 0) or 0
    quiet = getattr(args, "quiet", 0) or 0
    stdout = bool(getattr(args, "enable_std_output", False))
    path = getattr(args, "tracing_absolute_path", None)
    if not (verbose or stdout or path):
        return

    from barto import logs

    observer = logs.build_observer(
        config.tracing, verbose=verbose, quiet=quiet, stdout=stdout, path=path
    )
    logs.install(observer)


async def execute(
    reactor: Any,
    args: argparse.Namespace,
    body: Body,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    start_logging: bool = True,
) -> int:
    """
    Run one remote command: config, connection, C{body}, exit code.

    @param reactor: provides L{IReactorTime} and L{IReactorTCP} (and
        L{IReactorCore}: an interrupt closes the connection first).
    @param start_logging: set up logging from the flags; tests leave the
        global log alone.
    @return: the exit code; expected failures are reported in one line
        on C{stderr}, never as a traceback.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ

    def fail(message: str, code: int) -> int:
        stderr.write(f"{PROGRAM}: {message}\n")
        stderr.flush()
        return code

    try:
        config = load_config(args, environ)
        if start_logging:
            _start_logging(args, config)
    except ConfigError as error:
        return fail(str(error), EXIT_USAGE)
    for warning in config.warnings:
        stderr.write(f"{PROGRAM}: warning: {warning}\n")

    term = render.Terminal.detect(
        stdout, environ, local=bool(getattr(args, "local", False))
    )
    out = Output(stdout, stderr, term, json=bool(getattr(args, "json", False)))
    timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT
    if timeout <= 0:
        return fail(f"--timeout must be above 0, not {timeout:g}", EXIT_USAGE)
    clock: IReactorTime = reactor
    try:
        bartos, name = config.bartos, config.name
        session = await client.connect(clock, bartos, name, timeout)
    except CliError as error:
        return fail(str(error), error.exit_code)

    trigger = None
    if IReactorCore.providedBy(reactor):
        trigger = reactor.addSystemEventTrigger(
            "before", "shutdown", session.close, client.Interrupted()
        )
    try:
        return await body(session, args, out)
    except CliError as error:
        return fail(str(error), error.exit_code)
    except BrokenPipeError:
        _discard_stdout(stdout)
        return client.EXIT_OK
    finally:
        _flush(out)
        session.close()
        if trigger is not None:
            reactor.removeSystemEventTrigger(trigger)


def _flush(out: Output) -> None:
    """
    Flush what is left; a reader that went away is not an error.
    """
    try:
        out.flush()
    except BrokenPipeError:
        _discard_stdout(out.stdout)


def _discard_stdout(stream: TextIO) -> None:
    """
    After a broken pipe, send what C{stream} still holds nowhere, so the
    interpreter's last flush does not complain.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass
