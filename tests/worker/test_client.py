"""
Tests for L{barto.worker.client}: the backoff policy with a clock, and the
client against a fake bartos (an Autobahn server in this process).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from barto import wire
from barto.config import EndpointConfig, RunnerConfig, Secret
from barto.worker.client import (
    ReconnectPolicy,
    WorkerClient,
    bearer_token,
    make_endpoint,
    worker_url,
)
from barto.worker.session import WorkerSession
from barto.worker.spool import Spool

RUN = "00000000-0000-4000-8000-000000000001"


def test_backoff_grows_and_is_capped() -> None:
    """Delays double per failure, with jitter, up to the cap."""
    low = ReconnectPolicy(0, clock=Clock(), give_up=print, random=lambda: 0.0)
    middle = ReconnectPolicy(0, clock=Clock(), give_up=print, random=lambda: 0.5)

    assert [low(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [middle(n) for n in range(1, 9)] == [0.75, 1.5, 3, 6, 12, 24, 45, 45]


def test_backoff_resets_after_welcome() -> None:
    """After a welcomed session drops, the count starts again."""
    policy = ReconnectPolicy(0, clock=Clock(), give_up=print, random=lambda: 0.0)
    policy(1)
    policy(2)
    policy(3)
    assert policy.failures == 3

    policy.welcomed()
    after_drop = policy(1)
    next_failure = policy(2)

    assert after_drop == 0.0
    assert next_failure == 0.5
    assert policy.failures == 1


def test_gives_up_after_retry_count() -> None:
    """retry_count failures in a row call give_up once, from the clock."""
    clock = Clock()
    calls: list[int] = []
    policy = ReconnectPolicy(3, clock=clock, give_up=calls.append)

    policy(1)
    policy(2)
    clock.advance(0)
    assert calls == []
    policy(3)
    assert calls == []
    clock.advance(0)
    policy(4)
    clock.advance(0)

    assert calls == [3]
    assert clock.getDelayedCalls() == []


def test_zero_retry_count_never_gives_up() -> None:
    """retry_count 0 retries forever."""
    clock = Clock()
    calls: list[int] = []
    policy = ReconnectPolicy(0, clock=clock, give_up=calls.append)

    for attempt in range(1, 1000):
        policy(attempt)
    clock.advance(0)

    assert calls == []
    assert policy.failures == 999


def test_url_and_token() -> None:
    """The URL names the worker; the token is preferred over the key."""
    endpoint = EndpointConfig(
        host="::1", port=9, api_key=Secret("key"), token=Secret("tok")
    )

    assert worker_url(endpoint, "w@1") == "ws://[::1]:9/v1/ws/worker?name=w%401"
    assert bearer_token(endpoint) == "tok"
    assert bearer_token(EndpointConfig(api_key=Secret("key"))) == "key"
    assert bearer_token(EndpointConfig()) is None


def test_wss_endpoint_uses_tls() -> None:
    """A wss prefix wraps the TCP endpoint in TLS."""
    plain = make_endpoint(reactor, EndpointConfig(prefix="ws"), 5.0)
    secure = make_endpoint(reactor, EndpointConfig(prefix="wss"), 5.0)

    assert type(plain).__name__ == "HostnameEndpoint"
    assert type(secure).__name__ == "_WrapperEndpoint"


class World:
    """
    A worker session and its client, pointed at the fake bartos.
    """

    def __init__(self, tmp_path: Path, server: Any, until: Any) -> None:
        self.server = server
        self.until = until
        self.spool = Spool(tmp_path / "spool.sqlite3", max_bytes=1 << 20)
        self.session = WorkerSession(
            name="worker1",
            reactor=reactor,
            runner_config=RunnerConfig(),
            spool=self.spool,
            host=wire.HostFacts(hostname="test"),
            environ={"PATH": os.environ["PATH"]},
        )
        self.gave_up: list[int] = []
        self.client: WorkerClient | None = None

    def connect(
        self, *, port: int | None = None, retry_count: int = 0, timeout: float = 5.0
    ) -> WorkerClient:
        """
        Start a client toward the fake server (or another port).
        """
        number = self.server.port if port is None else port
        self.client = WorkerClient(
            reactor=reactor,
            session=self.session,
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", number),
            url=f"ws://127.0.0.1:{number}/v1/ws/worker?name=worker1",
            token="sekrit",
            timeout=timeout,
            retry_count=retry_count,
            on_give_up=self.gave_up.append,
            random=lambda: 0.0,
        )
        self.client.startService()
        return self.client

    async def close(self) -> None:
        """
        Stop the client and close the spool.
        """
        if self.client is not None and self.client.running:
            await self.client.stopService()
        await self.until(lambda: not self.server.open)
        self.spool.close()


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Path, bartos: Any, wait_until: Any) -> AsyncIterator[World]:
    """
    A worker pointed at the fake bartos, torn down after the test.
    """
    made = World(tmp_path, bartos, wait_until)
    yield made
    await made.close()


@pytest_twisted.ensureDeferred
async def test_handshake(world: World) -> None:
    """The worker asks for barto.v1 with its token and says hello."""
    world.connect()

    await world.until(lambda: bool(world.server.of("hello")))

    [request] = world.server.requests
    assert request.path == "/v1/ws/worker"
    assert request.params == {"name": ["worker1"]}
    assert request.headers["authorization"] == "Bearer sekrit"
    assert request.protocols == [wire.SUBPROTOCOL]
    assert world.server.of("hello")[0]["name"] == "worker1"
    await world.until(lambda: world.session.welcomed)


@pytest_twisted.ensureDeferred
async def test_run_is_delivered_and_acked(world: World) -> None:
    """A dispatched run's records arrive in order and leave the spool."""
    world.connect()
    await world.until(lambda: world.session.welcomed)

    world.server.open[0].send(
        wire.Dispatch(
            run=RUN,
            schedule="s",
            slot="2026-12-03T16:45:00Z",
            cmds=("echo hello",),
        )
    )
    await world.until(lambda: bool(world.server.of("finished")))
    await world.until(lambda: world.spool.count() == 0)

    types = [body["type"] for body in world.server.received]
    assert types == ["hello", "started", "output", "exit", "finished"]
    assert world.server.of("output")[0]["lines"] == ["hello"]
    assert world.server.of("finished")[0]["state"] == "succeeded"


@pytest_twisted.ensureDeferred
async def test_unacked_records_are_resent_after_reconnect(world: World) -> None:
    """Records the server did not ack come again, in order, after a drop."""
    world.server.ack = False
    world.connect()
    await world.until(lambda: world.session.welcomed)
    world.server.open[0].send(
        wire.Dispatch(
            run=RUN,
            schedule="s",
            slot="2026-12-03T16:45:00Z",
            cmds=("echo one", "echo two"),
        )
    )
    await world.until(lambda: bool(world.server.of("finished")))
    first = [body["rec"] for body in world.server.received if "rec" in body]

    world.server.ack = True
    world.server.open[0].dropConnection(abort=True)
    await world.until(lambda: len(world.server.of("hello")) == 2)
    await world.until(lambda: world.spool.count() == 0)

    received = [body["rec"] for body in world.server.received if "rec" in body]
    assert received == first + first
    assert world.server.of("hello")[1]["spooled"] == len(first)


@pytest_twisted.ensureDeferred
async def test_no_welcome_drops_and_counts_a_failure(world: World) -> None:
    """A server that never welcomes is dropped and counted as a failure."""
    world.server.welcome = False
    client = world.connect(timeout=0.3)

    await world.until(lambda: world.server.closed >= 2)

    assert client.policy.failures >= 1
    assert not world.session.welcomed


@pytest_twisted.ensureDeferred
async def test_refused_handshakes_lead_to_give_up(world: World) -> None:
    """Handshakes refused retry_count times in a row end the client."""
    world.server.refuse = True
    client = world.connect(retry_count=2)

    await world.until(lambda: bool(world.gave_up))

    assert world.gave_up == [2]
    assert len(world.server.requests) == 2
    assert not client.running


@pytest_twisted.ensureDeferred
async def test_nothing_listening_leads_to_give_up(world: World) -> None:
    """Connections refused retry_count times in a row end the client."""
    listener = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = listener.getHost().port
    await listener.stopListening()

    client = world.connect(port=number, retry_count=2)
    await world.until(lambda: bool(world.gave_up))

    assert world.gave_up == [2]
    assert not client.running


@pytest_twisted.ensureDeferred
async def test_stop_closes_cleanly(world: World) -> None:
    """Stopping the client closes the connection cleanly."""
    client = world.connect()
    await world.until(lambda: world.session.welcomed)
    server_side = world.server.open[0]

    await client.stopService()
    await world.until(lambda: not world.server.open)

    assert server_side.remoteCloseCode == wire.CLOSE_NORMAL
    assert not world.session.welcomed


def test_ping_options_follow_client_timeout(tmp_path: Path) -> None:
    """Pings go every half timeout and must be answered within the other."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=1000)
    session = WorkerSession(
        name="w",
        reactor=reactor,
        runner_config=RunnerConfig(),
        spool=spool,
        host=wire.HostFacts(),
    )
    client = WorkerClient(
        reactor=reactor,
        session=session,
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 9),
        url="ws://127.0.0.1:9/v1/ws/worker?name=w",
        token=None,
        timeout=30.0,
        retry_count=1,
        on_give_up=print,
    )

    factory = client.factory
    assert (factory.autoPingInterval, factory.autoPingTimeout) == (15.0, 15.0)
    assert factory.openHandshakeTimeout == 30.0
    assert factory.closeHandshakeTimeout == 2.0
    assert factory.maxMessagePayloadSize == wire.DEFAULT_MAX_MESSAGE_BYTES
    spool.close()


@pytest_twisted.ensureDeferred
async def test_silent_server_is_dropped_and_reconnected(world: World) -> None:
    """A server that stops answering pings is dropped; the worker comes back."""
    world.connect(timeout=4.0)
    await world.until(lambda: world.session.welcomed)

    silent = world.server.open[0]
    silent.transport.pauseProducing()
    await world.until(lambda: len(world.server.of("hello")) == 2)

    assert len(world.server.requests) == 2
    await world.until(lambda: world.session.welcomed)
    silent.transport.abortConnection()
