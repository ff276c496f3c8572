"""
Fixtures for the barto-cli tests: a real bartos in this process (on the
reactor pytest-twisted runs), a store seeded with known runs, a scripted
worker, and a way to run barto-cli commands in-process or as a process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from support.processes import free_port
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from zope.interface import implementer

from barto import wire
from barto.cli import main, remote
from barto.config import ServerConfig, load_server_config
from barto.server.store import (
    NewRun,
    open_direct,
    run_direct,
    slot_run_id,
    thdAddRun,
)
from barto.server.tap import BartosService, build_service, prepare_store

NOW = int(time.time())
"""A whole second near the start of the test session."""

DAY = 86400

APT_OLD = [
    "Reading package lists...",
    "The following packages will be upgraded:",
    "  bash",
    "1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
]

APT_NEW = [
    "Reading package lists...",
    "The following packages will be upgraded:",
    "  libssl3 openssl",
    "  tzdata",
    "3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
]

PACMAN = [
    ":: Starting full system upgrade...",
    "Packages (2) linux-6.1-1  vim-9.0-1",
    "Total Download Size:   120.50 MiB",
    "Total Installed Size:  300.00 MiB",
    "Net Upgrade Size:       10.25 MiB",
]

NEVER = "2099-01-01 00:00:00"
"""A calendar that fires during no test."""

SCHEDULES = f"""
[schedules.w1]
schedules = [
  {{ name = "apt", on_calendar = "{NEVER}", cmds = ["apt-get -s upgrade"] }},
  {{ name = "backup", on_calendar = "{NEVER}", cmds = ["backup.sh"] }},
  {{ name = "pacman", on_calendar = "{NEVER}", cmds = ["pacman -Syu"] }},
  {{ name = "spread", on_calendar = "2099-01-01 R:R:R", cmds = ["true"] }},
]

[schedules.w2]
schedules = [
  {{ name = "backup", on_calendar = "{NEVER}", cmds = ["backup.sh"] }},
]

[schedules.w3]
schedules = [
  {{ name = "job", on_calendar = "{NEVER}", cmds = ["job.sh"] }},
]
"""


@dataclass(frozen=True)
class SeededRun:
    """
    A run the seed puts in the store.
    """

    worker: str
    schedule: str
    slot: int
    state: str
    exit_code: int | None = None
    reason: str = ""
    lines: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        """
        The run's id.
        """
        return slot_run_id(self.worker, self.schedule, self.slot)


def _out(*texts: str) -> tuple[tuple[str, str], ...]:
    return tuple(("stdout", text) for text in texts)


SEEDED = (
    SeededRun(
        "w1",
        "apt",
        NOW - 3 * DAY,
        "succeeded",
        0,
        lines=_out(*APT_OLD),
    ),
    SeededRun(
        "w1",
        "apt",
        NOW - 2 * DAY,
        "succeeded",
        0,
        lines=_out(*APT_NEW),
    ),
    SeededRun(
        "w1",
        "apt",
        NOW - DAY,
        "failed",
        100,
        lines=(("stderr", "E: Could not get lock"),),
    ),
    SeededRun(
        "w1",
        "backup",
        NOW - 2 * DAY,
        "failed",
        2,
        lines=(
            *_out("copying /home", "copying /etc"),
            ("stderr", "disk full"),
        ),
    ),
    SeededRun("w1", "backup", NOW - DAY, "timed_out", None, "timed out"),
    SeededRun(
        "w1",
        "backup",
        NOW - 3600,
        "missed",
        None,
        "worker offline (Skip)",
    ),
    SeededRun("w1", "backup", NOW - 1800, "lost", None, "worker vanished"),
    SeededRun("w2", "backup", NOW - DAY, "succeeded", 0, lines=_out("done")),
    SeededRun("w1", "pacman", NOW - DAY, "succeeded", 0, lines=_out(*PACMAN)),
    SeededRun(
        "w1",
        "retired",
        NOW - 5 * DAY,
        "succeeded",
        0,
        lines=_out("bye"),
    ),
)
"""The runs every store starts with; C{retired} is no longer configured."""


def seed(config: ServerConfig) -> None:
    """
    Put L{SEEDED} in the (migrated) store of C{config}.
    """
    connection, dialect = open_direct(config)
    mark = "?" if dialect == "sqlite" else "%s"
    try:
        for run in SEEDED:
            _seed_run(connection, dialect, mark, run)
    finally:
        connection.close()


def _seed_run(
    connection: Any,
    dialect: Any,
    mark: str,
    run: SeededRun,
) -> None:
    at = run.slot * 1_000_000
    new = NewRun(
        run.worker,
        run.schedule,
        run.slot,
        "schedule",
        run.state,
        "",
        ("cmd",),
        at,
    )
    run_direct(connection, thdAddRun, dialect, new)
    cursor = connection.cursor()
    started = None if run.state == "missed" else at + 1000
    ended = None if run.state == "missed" else at + 2_501_000
    cursor.execute(
        f"UPDATE runs SET exit_code = {mark}, reason = {mark}, started_at ="
        f" {mark}, ended_at = {mark}, output_lines = {mark} WHERE id = {mark}",
        (run.exit_code, run.reason, started, ended, len(run.lines), run.id),
    )
    cursor.execute(
        f"UPDATE commands SET started_at = {mark}, ended_at = {mark},"
        f" exit_code = {mark} WHERE run_id = {mark}",
        (started, ended, run.exit_code, run.id),
    )
    rows = [
        (run.id, 0, index, 0, stream, at + 2000, text, 0)
        for index, (stream, text) in enumerate(run.lines)
    ]
    if rows:
        cursor.executemany(
            "INSERT INTO output"
            " (run_id, seq, line, cmd, stream, at, data, cut)"
            f" VALUES ({', '.join([mark] * 8)})",
            rows,
        )
    connection.commit()
    cursor.close()


@dataclass
class Bartos:
    """
    A bartos running in this process.

    @ivar dialect: the store's, C{sqlite} or C{mariadb}.
    """

    port: int
    config: ServerConfig
    service: BartosService
    dialect: str
    directory: Path

    def cli_config(self, extra: str = "", name: str = "tester") -> Path:
        """
        A barto-cli config file for this server.

        @param extra: more keys of the C{[bartos]} table.
        """
        path = self.directory / f"cli-{abs(hash(extra))}.toml"
        path.write_text(
            textwrap.dedent(
                f"""\
                name = "{name}"
                [bartos]
                host = "127.0.0.1"
                port = {self.port}
                """,
            )
            + extra,
        )
        return path


def write_server_config(
    directory: Path,
    port: int,
    store: str,
    extra: str = "",
    top: str = "",
) -> ServerConfig:
    """
    Write and load a bartos config for tests.

    @param top: top-level keys, written before every table.
    @param extra: tables, written after the store's.
    """
    path = directory / "bartos.toml"
    path.write_text(
        top
        + textwrap.dedent(
            f"""\
            [listen]
            ip = "127.0.0.1"
            port = {port}
            """,
        )
        + store
        + extra
        + SCHEDULES,
    )
    return load_server_config(str(path), environ={})


def start_bartos(
    directory: Path,
    store: str,
    extra: str = "",
    dialect: str = "sqlite",
    top: str = "",
) -> Bartos:
    """
    Migrate and seed a store, then start a bartos on a free port.

    @param top: top-level keys of the config; C{extra}: more tables.
    """
    port = free_port()
    config = write_server_config(directory, port, store, extra, top)
    prepare_store(config, time.time())
    seed(config)
    marks, rows, _ = prepare_store(config, time.time())
    service = build_service(
        config,
        reactor=reactor,  # type: ignore[arg-type]
        marks=marks,
        open_runs=rows,
        config_path=None,
    )
    service.startService()
    return Bartos(port, config, service, dialect, directory)


def mariadb_store(db: Any) -> str:
    """
    The C{[mariadb]} table for the C{mariadb} fixture's database.
    """
    return textwrap.dedent(
        f"""\
        [mariadb]
        host = "{db.host}"
        port = {db.port}
        username = "{db.username}"
        password = "{db.password}"
        database = "{db.database}"
        """,
    )


@pytest.fixture(params=["sqlite", "mariadb"])
def bartos(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bartos]:
    """
    A seeded bartos in this process, on SQLite and on MariaDB.
    """
    if request.param == "sqlite":
        store = f'[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
    else:
        store = mariadb_store(request.getfixturevalue("mariadb"))
    server = start_bartos(tmp_path, store, dialect=request.param)
    yield server
    pytest_twisted.blockon(server.service.stopService())


@pytest.fixture
def sqlite_bartos(tmp_path: Path) -> Iterator[Bartos]:
    """
    A seeded bartos on SQLite only, for tests about the CLI itself.
    """
    store = f'[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
    server = start_bartos(tmp_path, store)
    yield server
    pytest_twisted.blockon(server.service.stopService())


# Running barto-cli.


@dataclass
class Result:
    """
    What one barto-cli command did.
    """

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """
        Standard output as JSON.
        """
        import json

        return json.loads(self.out)


class WatchingOutput(io.StringIO):
    """
    Standard output that calls C{on_write} after every write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_write: Callable[[str], None] = lambda text: None

    def write(self, text: str) -> int:
        written = super().write(text)
        self.on_write(self.getvalue())
        return written


@implementer(
    IReactorTime,
    IReactorTCP,
    IReactorCore,
    IReactorPluggableNameResolver,
)
class InterruptibleReactor:
    """
    The real reactor, except that shutdown triggers are only recorded, so
    a test can play the part of Ctrl-C with L{interrupt}.
    """

    def __init__(self) -> None:
        self.triggers: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def addSystemEventTrigger(
        self,
        phase: str,
        event: str,
        call: Callable[..., Any],
        *args: Any,
    ) -> int:
        self.triggers.append((call, args))
        return len(self.triggers) - 1

    def removeSystemEventTrigger(self, trigger: int) -> None:
        self.triggers[trigger] = (lambda: None, ())

    def interrupt(self) -> None:
        """
        What Ctrl-C does: run the shutdown triggers.
        """
        for call, args in self.triggers:
            call(*args)


async def cli(
    argv: Sequence[str],
    *,
    config: Path | None = None,
    environ: dict[str, str] | None = None,
    stdout: io.StringIO | None = None,
    clock: Any = None,
) -> Result:
    """
    Run one barto-cli command in this process, on the running reactor.

    @param config: the config file, passed as C{-c}.
    """
    args = main.build_parser().parse_args(
        [*(["-c", str(config)] if config else []), *argv],
    )
    module = sys.modules[f"barto.cli.commands.{args.command}"]
    out = stdout or io.StringIO()
    err = io.StringIO()
    code = await remote.execute(
        clock or reactor,
        args,
        module.body,
        stdout=out,
        stderr=err,
        environ=environ or {},
        start_logging=False,
    )
    return Result(code, out.getvalue(), err.getvalue())


def cli_process(
    argv: Sequence[str],
    home: Path,
    timeout: float = 30.0,
) -> Result:
    """
    Run barto-cli as a process (the console script's code path).
    """
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-c", "from barto.cli.main import run; run()", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


# A scripted worker.


@dataclass
class ScriptedWorker:
    """
    A worker that answers every dispatch with two output lines and exit
    code C{code}, as a real bartoc would report it.
    """

    name: str
    code: int = 3
    welcomed: defer.Deferred[None] = field(default_factory=defer.Deferred)
    protocol: Any = None


class _WorkerProtocol(WebSocketClientProtocol):
    worker: ScriptedWorker
    rec = 0

    def onOpen(self) -> None:
        self.worker.protocol = self
        self._send(wire.Hello(name=self.worker.name, version="9.9"))

    def _send(self, message: wire.Message) -> None:
        self.sendMessage(wire.encode(message).encode("utf-8"))

    def _next(self) -> int:
        self.rec += 1
        return self.rec

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = wire.decode(payload, wire.TO_WORKER)
        welcomed = self.worker.welcomed
        if isinstance(message, wire.Welcome) and not welcomed.called:
            self.worker.welcomed.callback(None)
        if not isinstance(message, wire.Dispatch):
            return
        at = wire.format_time(wire.parse_time(message.slot))
        run, code = message.run, self.worker.code
        self._send(wire.Started(rec=self._next(), run=run, cmd=0, at=at))
        self._send(
            wire.Output(
                rec=self._next(),
                run=run,
                seq=0,
                cmd=0,
                at=at,
                lines=("line one", "line two"),
            ),
        )
        self._send(
            wire.Exit(rec=self._next(), run=run, cmd=0, at=at, code=code),
        )
        state = "succeeded" if code == 0 else "failed"
        self._send(
            wire.Finished(
                rec=self._next(),
                run=run,
                at=at,
                state=state,
                code=code,
            ),
        )


async def connect_worker(
    port: int,
    name: str,
    code: int = 3,
) -> ScriptedWorker:
    """
    Connect a L{ScriptedWorker} and wait for its welcome.
    """
    worker = ScriptedWorker(name, code)
    url = f"ws://127.0.0.1:{port}/v1/ws/worker?name={name}"
    factory = WebSocketClientFactory(url, protocols=[wire.SUBPROTOCOL])

    class Protocol(_WorkerProtocol):
        pass

    Protocol.worker = worker
    factory.protocol = Protocol
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(factory)
    await worker.welcomed
    return worker


@pytest_twisted.async_yield_fixture
async def worker(sqlite_bartos: Bartos) -> AsyncIterator[ScriptedWorker]:
    """
    Worker C{w3} connected to the SQLite bartos.
    """
    connected = await connect_worker(sqlite_bartos.port, "w3")
    yield connected
    connected.protocol.dropConnection(abort=True)


@dataclass(frozen=True)
class Kit:
    """
    The helpers of this conftest, for test modules (which cannot import
    it under pytest's importlib mode).
    """

    cli: Callable[..., Any] = cli
    cli_process: Callable[..., Result] = cli_process
    connect_worker: Callable[..., Any] = connect_worker
    start_bartos: Callable[..., Bartos] = start_bartos
    reactor_for_interrupt: Callable[[], Any] = InterruptibleReactor
    output_that_watches: Callable[[], WatchingOutput] = WatchingOutput
    seeded: tuple[SeededRun, ...] = SEEDED
    now: int = NOW
    apt_new: tuple[str, ...] = tuple(APT_NEW)


@pytest.fixture
def kit() -> Kit:
    """
    The helpers and the seeded data.
    """
    return Kit()
