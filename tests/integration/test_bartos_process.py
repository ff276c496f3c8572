"""
A real C{twistd -n bartos} process: a scripted worker over a real socket
gets its dispatch, its records are stored once however often it resends
them, SIGHUP reloads the schedules and SIGTERM stops the server cleanly.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from support import processes
from support.processes import free_port, port_open
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from barto import wire

pytestmark = pytest.mark.integration

TWISTD = "from twisted.scripts.twistd import run; run()"


class Worker(WebSocketClientProtocol):
    """
    A scripted worker: frames land in C{factory.frames}.
    """

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        frame["_received"] = time.time()
        self.factory.frames.put(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        self.factory.closed.callback(code)


async def connect_worker(port: int, name: str) -> tuple[Worker, Any]:
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/v1/ws/worker?name={name}",
        protocols=[wire.SUBPROTOCOL],
    )
    factory.protocol = Worker
    factory.frames = defer.DeferredQueue()
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    return await factory.opened, factory


def send(worker: Worker, message: wire.Message) -> None:
    worker.sendMessage(wire.encode(message).encode())


async def next_of(factory: Any, kind: str, **match: Any) -> dict[str, Any]:
    """
    The next frame of type C{kind} whose fields match.
    """
    while True:
        frame: dict[str, Any] = await factory.frames.get()
        if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def acks(factory: Any, wanted: set[int]) -> None:
    seen: set[int] = set()
    while not wanted <= seen:
        seen.update((await next_of(factory, "ack"))["recs"])


async def until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


def config_text(port: int, store: Path, schedules: str) -> str:
    return f"""
[listen]
ip = "127.0.0.1"
port = {port}
[sqlite]
path = "{store}"
[schedules.w1]
schedules = [{schedules}]
"""


TICK = '{ name = "tick", on_calendar = "*-*-* *:*:*", cmds = ["echo hi"] }'
TOCK = '{ name = "tock", on_calendar = "*-*-* *:*:*", cmds = ["echo ho"] }'


@pytest.fixture
def bartos(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, Path]]:
    """
    A running C{twistd -n bartos}; killed afterwards whatever happens.
    """
    port = free_port()
    store = tmp_path / "store.sqlite3"
    config = tmp_path / "bartos.toml"
    config.write_text(config_text(port, store, TICK))
    log = (tmp_path / "bartos.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            f"--pidfile={tmp_path / 'bartos.pid'}",
            "bartos",
            "-c",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=processes.test_environment(tmp_path),
        start_new_session=True,
    )
    try:
        yield process, port, config, store
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        log.close()


@pytest_twisted.ensureDeferred
async def test_bartos_process(
    bartos: tuple[subprocess.Popen[bytes], int, Path, Path], tmp_path: Path
) -> None:
    """Dispatch, records stored once, SIGHUP reload, clean SIGTERM exit."""
    process, port, config, store = bartos
    await until(lambda: port_open(port) or process.poll() is not None, "bartos")
    assert process.poll() is None, (tmp_path / "bartos.log").read_text()

    worker, factory = await connect_worker(port, "w1")
    send(worker, wire.Hello(name="w1", version="test"))
    await next_of(factory, "welcome")
    dispatch = await next_of(factory, "dispatch", schedule="tick")
    slot = wire.parse_time(dispatch["slot"])
    assert slot.microsecond == 0
    assert dispatch["_received"] >= slot.timestamp()

    run, at = dispatch["run"], dispatch["slot"]
    records: list[wire.Message] = [
        wire.Started(rec=1, run=run, cmd=0, at=at),
        wire.Output(rec=2, run=run, seq=0, cmd=0, at=at, lines=("hi", "there")),
        wire.Exit(rec=3, run=run, cmd=0, at=at, code=0),
        wire.Finished(rec=4, run=run, at=at, state="succeeded", code=0),
    ]
    for record in records + records:
        send(worker, record)
    await acks(factory, {1, 2, 3, 4})

    with sqlite3.connect(store) as db:
        assert db.execute(
            "SELECT COUNT(*) FROM output WHERE run_id = ?", (run,)
        ).fetchone() == (2,)
        assert db.execute(
            "SELECT state, output_lines FROM runs WHERE id = ?", (run,)
        ).fetchone() == ("succeeded", 2)

    config.write_text(config_text(port, store, f"{TICK}, {TOCK}"))
    process.send_signal(signal.SIGHUP)
    await next_of(factory, "dispatch", schedule="tock")

    process.send_signal(signal.SIGTERM)
    assert await factory.closed == wire.CLOSE_GOING_AWAY
    await until(lambda: process.poll() is not None, "bartos to exit")
    # twistd ends a clean shutdown by re-raising the signal that asked it.
    assert process.returncode == -signal.SIGTERM
    with sqlite3.connect(store) as db:
        assert db.execute(
            "SELECT COUNT(*) FROM runs WHERE schedule = 'tock'"
        ).fetchone() >= (1,)
        (seen, since) = db.execute(
            "SELECT last_seen, connected_since FROM workers WHERE name = 'w1'"
        ).fetchone()
        assert seen > since
    log = (tmp_path / "bartos.log").read_text()
    assert "configuration reloaded" in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log


def test_bad_config_exits_2(tmp_path: Path) -> None:
    """A bad config stops twistd bartos with status 2 and the message."""
    config = tmp_path / "bad.toml"
    config.write_text("[listen]\nport = 70000\n")

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            f"--pidfile={tmp_path / 'p.pid'}",
            "bartos",
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=processes.test_environment(tmp_path),
        cwd=tmp_path,
        check=False,
    )

    assert done.returncode == 2
    assert "listen.port: 70000" in done.stderr
