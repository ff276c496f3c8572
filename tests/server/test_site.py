"""
Tests of the whole service in-process over real loopback sockets: the
site's paths, Autobahn glue, authentication on the upgrade, and a worker
and a CLI talking to a running server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from support.processes import free_port
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint

from barto import wire
from barto.server.tap import BartosService, build_service, prepare_store


class Client(WebSocketClientProtocol):
    """
    A test client: every text frame lands in C{factory.frames}.
    """

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.frames.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed_with = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        if not self.factory.closed.called:
            self.factory.closed.callback(code)


async def connect(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[Client, WebSocketClientFactory]:
    """
    Open a WebSocket to the server; the protocol and its factory.
    """
    url = f"ws://127.0.0.1:{port}{path}"
    factory = WebSocketClientFactory(url, protocols=[wire.SUBPROTOCOL], headers=headers)
    factory.protocol = Client
    factory.frames = defer.DeferredQueue()
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(factory)
    protocol = await factory.opened
    return protocol, factory


def send(protocol: Client, message: wire.Message) -> None:
    protocol.sendMessage(wire.encode(message).encode())


@pytest.fixture
def server(write_config: Any) -> Iterator[tuple[BartosService, int]]:
    """
    A running server on a free loopback port with a secondly schedule.
    """
    port = free_port()
    config = write_config(
        f"""
        [listen]
        ip = "127.0.0.1"
        port = {port}
        [schedules.w1]
        schedules = [{{ name = "tick", on_calendar = "*:*:*", cmds = ["echo hi"] }}]
        """
    )
    marks, rows, _ = prepare_store(config, 0)
    service = build_service(
        config, reactor=reactor, marks=marks, open_runs=rows, config_path=None
    )
    service.startService()
    yield service, port
    pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
async def test_worker_gets_dispatch_and_acks(server: tuple[BartosService, int]) -> None:
    """A worker gets its dispatch; its records are acked and stored."""
    service, port = server
    worker, factory = await connect(port, "/v1/ws/worker?name=w1")

    send(worker, wire.Hello(name="w1", version="t"))
    assert (await factory.frames.get())["type"] == "welcome"
    dispatch = await factory.frames.get()
    assert dispatch["type"] == "dispatch" and dispatch["schedule"] == "tick"

    run = dispatch["run"]
    send(worker, wire.Started(rec=1, run=run, cmd=0, at=dispatch["slot"]))
    send(
        worker,
        wire.Finished(rec=2, run=run, at=dispatch["slot"], state="succeeded", code=0),
    )
    recs: list[int] = []
    while recs != [1, 2]:
        frame = await factory.frames.get()
        if frame["type"] == "ack":
            recs.extend(frame["recs"])

    stored = await service.state.store.get_run(run)
    assert stored is not None and stored["state"] == "succeeded"
    worker.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_cli_info_over_the_wire(server: tuple[BartosService, int]) -> None:
    """A CLI request over a real socket gets its response."""
    _, port = server
    cli, factory = await connect(port, "/v1/ws/cli?name=me")

    send(cli, wire.Request(id=1, method="info"))
    frame = await factory.frames.get()

    assert frame["type"] == "response" and frame["result"]["store"] == "sqlite"
    cli.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_duplicate_worker_closed_1008(server: tuple[BartosService, int]) -> None:
    """A second live connection under a worker's name is closed with 1008."""
    _, port = server
    first, first_factory = await connect(port, "/v1/ws/worker?name=w1")
    send(first, wire.Hello(name="w1"))
    await first_factory.frames.get()

    _, second = await connect(port, "/v1/ws/worker?name=w1")

    assert await second.closed == wire.CLOSE_POLICY
    first.sendClose()
    await first_factory.closed


@pytest_twisted.ensureDeferred
async def test_other_paths_404(server: tuple[BartosService, int]) -> None:
    """Paths other than the two endpoints answer 404."""
    _, port = server

    def fetch() -> int:
        try:
            urlopen(f"http://127.0.0.1:{port}/v1/other", timeout=10)
        except HTTPError as error:
            return error.code
        return 200

    assert await threads.deferToThread(fetch) == 404


@pytest_twisted.ensureDeferred
async def test_missing_name_refused(server: tuple[BartosService, int]) -> None:
    """An upgrade without a worker name is refused."""
    _, port = server

    with pytest.raises(ConnectionError):
        await connect(port, "/v1/ws/worker")
