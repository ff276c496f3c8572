"""
Fakes for the worker's tests: a reactor that records spawned processes
instead of starting them, a recorder of group signals, and a fake bartos
(an Autobahn server in the test process) for the client and the twistd
program.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import reactor as real_reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IReactorProcess,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from barto import wire
from barto.config import RunnerConfig
from barto.worker.spool import Spool


@implementer(IProcessTransport)
class FakeProcess:
    """
    A process that was never started; the test decides what it prints
    and how it ends.
    """

    def __init__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        path: str | None,
        pid: int,
    ) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = dict(env or {})
        self.path = path
        self.pid: int | None = pid
        self.stdin_closed = False
        self.ended = False

    def closeStdin(self) -> None:
        """
        Record that standard input was closed.
        """
        self.stdin_closed = True

    def out(self, data: bytes) -> None:
        """
        The process writes C{data} on standard output.
        """
        self.protocol.outReceived(data)

    def err(self, data: bytes) -> None:
        """
        The process writes C{data} on standard error.
        """
        self.protocol.errReceived(data)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        """
        The process ends: pipes close, then it is reaped.
        """
        self.ended = True
        self.protocol.outConnectionLost()
        self.protocol.errConnectionLost()
        reason: Failure
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal))
        self.pid = None
        self.protocol.processEnded(reason)

    def closeChildFD(self, descriptor: int) -> None:
        """
        Not used by the worker.
        """

    def writeToChild(self, childFD: int, data: bytes) -> None:
        """
        Not used by the worker.
        """

    def loseConnection(self) -> None:
        """
        Not used by the worker.
        """

    def signalProcess(self, signalID: str | int) -> None:
        """
        Not used by the worker: it signals the group.
        """
        raise AssertionError("the worker signals process groups")


@implementer(IReactorProcess)
class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor with a clock whose C{spawnProcess} records a
    L{FakeProcess}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        """
        Record the spawn and connect the protocol to a fake process.
        """
        process = FakeProcess(
            processProtocol, executable, args, env, path, 4000 + len(self.spawned)
        )
        self.spawned.append(process)
        processProtocol.makeConnection(process)
        return process


@dataclass
class Kills:
    """
    Records C{os.killpg} calls instead of making them.
    """

    calls: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, group: int, number: int) -> None:
        self.calls.append((group, number))


@dataclass
class Emitted:
    """
    Collects the records a runner emits.
    """

    records: list[wire.Record] = field(default_factory=list)

    def __call__(self, records: Sequence[wire.Record]) -> None:
        self.records.extend(records)

    def of(self, kind: type[Any]) -> list[Any]:
        """
        The records of one type, in order.
        """
        return [record for record in self.records if isinstance(record, kind)]

    def lines(self, stream: wire.Stream | None = None) -> list[str]:
        """
        Every output line (of one stream), in order.
        """
        return [
            line
            for record in self.of(wire.Output)
            if stream is None or record.stream == stream
            for line in record.lines
        ]


@pytest.fixture
def reactor() -> ProcessReactor:
    """
    A fake reactor that records spawned processes.
    """
    return ProcessReactor()


@pytest.fixture
def kills() -> Kills:
    """
    A recorder of process group signals.
    """
    return Kills()


@pytest.fixture
def emitted() -> Emitted:
    """
    A collector of emitted records.
    """
    return Emitted()


@pytest.fixture
def settings() -> RunnerConfig:
    """
    Runner settings with short graces and small caps.
    """
    return RunnerConfig(
        shell="/bin/sh",
        env={"EXTRA": "yes"},
        max_line_bytes=100,
        max_output_bytes=10_000,
        kill_grace=5.0,
        shutdown_grace=10.0,
    )


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """
    An empty spool in the test's directory, closed afterwards.
    """
    opened = Spool(tmp_path / "spool.sqlite3", max_bytes=1 << 30)
    yield opened
    opened.close()


def dispatch(
    *cmds: str,
    run: str = "00000000-0000-4000-8000-000000000001",
    schedule: str = "backup",
    timeout: float | None = None,
) -> wire.Dispatch:
    """
    A dispatch message for tests.
    """
    return wire.Dispatch(
        run=run,
        schedule=schedule,
        slot="2026-12-03T16:45:00Z",
        cmds=cmds,
        timeout=timeout,
    )


@pytest.fixture
def make_dispatch() -> Any:
    """
    The L{dispatch} helper.
    """
    return dispatch


class FakeBartos(WebSocketServerProtocol):
    """
    A server that speaks enough of barto.v1 to drive a worker.
    """

    factory: FakeBartosFactory

    def onConnect(self, request: ConnectionRequest) -> str:
        """
        Record the upgrade; refuse it if told to.
        """
        self.factory.requests.append(request)
        if self.factory.refuse:
            raise ConnectionDeny(401, "no")
        return wire.SUBPROTOCOL

    def onOpen(self) -> None:
        """
        Remember the connection.
        """
        self.factory.open.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Keep what the worker sends; welcome and ack as told.
        """
        message = wire.decode(payload, wire.FROM_WORKER)
        self.factory.received.append(json.loads(payload))
        if isinstance(message, wire.Hello) and self.factory.welcome:
            self.send(wire.Welcome(version="test", session="s"))
        rec = getattr(message, "rec", None)
        if rec is not None and self.factory.ack:
            self.send(wire.Ack(recs=(rec,)))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Forget the connection.
        """
        if self in self.factory.open:
            self.factory.open.remove(self)
        self.factory.closed += 1

    def send(self, message: wire.Message) -> None:
        """
        Send a message to the worker.
        """
        self.sendMessage(wire.encode(message).encode())


class FakeBartosFactory(WebSocketServerFactory):
    """
    Settings and records of the fake server.

    @ivar port: the loopback port it listens on, once listening.
    """

    protocol = FakeBartos

    def __init__(self) -> None:
        super().__init__("ws://127.0.0.1")
        self.requests: list[ConnectionRequest] = []
        self.received: list[dict[str, Any]] = []
        self.open: list[FakeBartos] = []
        self.closed = 0
        self.welcome = True
        self.ack = True
        self.refuse = False
        self.port = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        """
        What the worker sent of one type.
        """
        return [body for body in self.received if body["type"] == kind]


async def until(condition: Callable[[], bool], tries: int = 600) -> None:
    """
    Poll C{condition} on the real reactor until it holds, or fail.
    """
    for _ in range(tries):
        if condition():
            return
        await deferLater(real_reactor, 0.02, lambda: None)
    raise AssertionError("condition never held")


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """
    The L{until} helper.
    """
    return until


@pytest_twisted.async_yield_fixture
async def bartos() -> AsyncIterator[FakeBartosFactory]:
    """
    A fake bartos listening on a loopback port; afterwards its connections
    are closed and the port is free.
    """
    factory = FakeBartosFactory()
    listening: IListeningPort = real_reactor.listenTCP(
        0, factory, interface="127.0.0.1"
    )
    factory.port = listening.getHost().port
    yield factory
    for protocol in list(factory.open):
        protocol.dropConnection(abort=True)
    await until(lambda: not factory.open)
    await listening.stopListening()
