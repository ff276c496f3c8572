"""
bartoc against a real bartos, through a TCP proxy that the test cuts in
the middle of a run and restores: nothing is lost, nothing is doubled.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import processes
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
LINES = 20


class Upstream(Protocol):
    """
    The proxy's connection to bartos: relays back to the worker.
    """

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from bartos go to the worker.
        """
        assert self.downstream.transport is not None
        self.downstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        bartos closed: close the worker's side.
        """
        assert self.downstream.transport is not None
        self.downstream.transport.loseConnection()


class Downstream(Protocol):
    """
    A worker's connection to the proxy.
    """

    factory: Proxy

    def connectionMade(self) -> None:
        """
        Open the way to bartos, or refuse while the link is cut.
        """
        assert self.transport is not None
        if self.factory.cut:
            self.transport.abortConnection()
            return

        self.factory.connections.append(self)
        self.buffer: list[bytes] = []
        self.upstream: Upstream | None = None
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.factory.target)
        connecting = connectProtocol(endpoint, Upstream(self))
        connecting.addCallbacks(self._connected, lambda _: self._abort())

    def _connected(self, upstream: Upstream) -> None:
        self.upstream = upstream
        assert self.transport is not None
        self.transport.resumeProducing()

    def _abort(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the worker go to bartos.
        """
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The worker's side closed: close bartos's side.
        """
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        upstream = getattr(self, "upstream", None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.loseConnection()


class Proxy(Factory):
    """
    A TCP proxy to bartos that can cut every connection and refuse new
    ones until it is restored.
    """

    protocol = Downstream

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut = False
        self.connections: list[Downstream] = []

    def cut_all(self) -> None:
        """
        Drop every connection, both ways, and refuse new ones.
        """
        self.cut = True
        for connection in list(self.connections):
            if connection.upstream is not None:
                assert connection.upstream.transport is not None
                connection.upstream.transport.abortConnection()
            assert connection.transport is not None
            connection.transport.abortConnection()

    def restore(self) -> None:
        """
        Accept connections again.
        """
        self.cut = False


class Twistd:
    """
    A twistd program in the foreground, its output in a file.
    """

    def __init__(self, directory: Path, name: str, args: list[str]) -> None:
        self.directory = directory
        self.name = name
        self.args = args
        self.log = directory / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Twistd:
        """
        Start the program.
        """
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*TWISTD, "--nodaemon", "--pidfile=", self.name, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=processes.test_environment(self.directory),
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        """
        What it logged so far.
        """
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """
        KILL its process group and reap it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


async def until(condition: Callable[[], bool], tries: int = 1500) -> None:
    """
    Poll C{condition} on the reactor until it holds, or fail.
    """
    for _ in range(tries):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition never held")


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """
    Read a SQLite file another process is writing.
    """
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


class Setup:
    """
    bartos, the proxy and bartoc, with their files.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bartos_port = processes.free_port()
        self.store = directory / "store.sqlite3"
        self.spool = directory / "spool.sqlite3"
        command = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.1; done"
        (directory / "bartos.toml").write_text(
            "[listen]\n"
            'ip = "127.0.0.1"\n'
            f"port = {self.bartos_port}\n"
            "[sqlite]\n"
            f'path = "{self.store}"\n'
            "[schedules.worker1]\n"
            "schedules = [\n"
            '  { name = "stream", on_calendar = "*-*-* *:*:00/4",'
            f' cmds = ["{command}"] }},\n'
            "]\n"
        )
        self.proxy = Proxy(self.bartos_port)
        self.listening: IListeningPort = reactor.listenTCP(
            0, self.proxy, interface="127.0.0.1"
        )
        (directory / "bartoc.toml").write_text(
            'name = "worker1"\n'
            "retry_count = 0\n"
            "client_timeout = 3\n"
            "[bartos]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.listening.getHost().port}\n"
        )
        self.bartos = Twistd(
            directory, "bartos", ["-c", str(directory / "bartos.toml")]
        )
        self.bartoc = Twistd(
            directory,
            "bartoc",
            ["-c", str(directory / "bartoc.toml"), "-r", str(self.spool)],
        )

    def runs(self) -> list[tuple[str, str]]:
        """
        The runs the store holds: id and state, by slot.
        """
        return query(self.store, "SELECT id, state FROM runs ORDER BY slot")

    def lines(self, run: str) -> list[str]:
        """
        The output lines the store holds for C{run}, in order.
        """
        rows = query(
            self.store,
            "SELECT data FROM output WHERE run_id = ? ORDER BY seq, line",
            run,
        )
        return [row[0] for row in rows]

    def spooled(self) -> int:
        """
        How many records the worker still holds.
        """
        rows = query(self.spool, "SELECT count(*) FROM records")
        return int(rows[0][0]) if rows else -1

    async def close(self) -> None:
        """
        Kill both programs and close the proxy.
        """
        self.bartoc.kill()
        self.bartos.kill()
        self.proxy.cut_all()
        await until(lambda: not self.proxy.connections)
        await self.listening.stopListening()


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """
    The three parts, none of which outlives the test.
    """
    made = Setup(tmp_path)
    yield made
    await made.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_cut_mid_run_loses_and_doubles_nothing(setup: Setup) -> None:
    """A link cut during a run, restored after it ended, loses nothing."""
    setup.bartos.start()
    await until(lambda: processes.port_open(setup.bartos_port))
    setup.bartoc.start()
    await until(lambda: "welcomed by bartos" in setup.bartoc.output())

    await until(lambda: any(setup.lines(run) for run, _ in setup.runs()))
    [(run, _)] = [(r, s) for r, s in setup.runs() if setup.lines(r)]
    setup.proxy.cut_all()
    await until(lambda: f"run {run} of stream finished" in setup.bartoc.output())
    assert len(setup.lines(run)) < LINES
    assert setup.spooled() > 0

    setup.proxy.restore()
    await until(lambda: dict(setup.runs()).get(run) == "succeeded")
    await until(lambda: setup.spooled() == 0)

    assert setup.lines(run) == [f"line {n}" for n in range(1, LINES + 1)]
    assert setup.bartoc.output().count(f"run {run} of stream for slot") == 1
    assert "saying hello" in setup.bartoc.output()
    assert setup.bartoc.output().count("welcomed by bartos") >= 2
