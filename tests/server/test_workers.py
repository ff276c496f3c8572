"""
Tests for the worker endpoint: authentication, the session protocol,
acknowledgements, duplicate names and bad frames.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fakes import START, SyncStore
from twisted.internet.task import Clock

from barto import wire
from barto.config import Secret, TokenConfig
from barto.server.runs import EventBus, RunLedger, slot_time
from barto.server.workers import (
    ALL_ROLES,
    Gate,
    Identity,
    WorkerRegistry,
    WorkerSession,
    authenticate,
    bearer,
    upgrade_identity,
)

SLOT = int(START)

TOKENS = (
    TokenConfig(name="w1", token=Secret("tok-w1"), role="worker"),
    TokenConfig(name="ops", token=Secret("tok-ops"), role="cli-admin"),
)


class Peer:
    """
    The far end of a session: what it was sent, and how it was closed.
    """

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.paused = False

    def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def types(self) -> list[str]:
        return [frame["type"] for frame in self.frames]


class Setup:
    """
    A registry on a synchronous store, with sessions to open.
    """

    def __init__(self, clock: Clock, store: SyncStore, schedules: Any) -> None:
        self.clock = clock
        self.store = store
        self.ledger = RunLedger(store, clock=clock, events=EventBus())
        self.registry = WorkerRegistry(
            self.ledger, store, clock=clock, max_message_bytes=4096
        )
        self.schedules = schedules(("w1", "job", "*-*-* *:*:*"))
        self.ledger.set_schedules(self.schedules)

    def connect(self, name: str = "w1") -> tuple[WorkerSession, Peer]:
        peer = Peer()
        session = WorkerSession(
            self.registry,
            name,
            "127.0.0.1",
            send=peer.send,
            close=peer.close,
            pause=lambda: setattr(peer, "paused", True),
            resume=lambda: setattr(peer, "paused", False),
        )
        session.opened()
        return session, peer

    def hello(self, name: str = "w1", **fields: Any) -> tuple[WorkerSession, Peer]:
        session, peer = self.connect(name)
        send(session, wire.Hello(name=name, version="1.0", **fields))
        return session, peer

    def dispatch(self) -> str:
        (item,) = self.schedules["w1"]
        return self.ledger.slot_due(item, SLOT)


def send(session: WorkerSession, message: wire.Message) -> None:
    session.received(wire.encode(message).encode(), False)


def at() -> str:
    return wire.format_time(slot_time(SLOT))


@pytest.fixture
def setup(clock: Clock, sync_store: SyncStore, schedules: Any) -> Setup:
    """
    A registry, ledger and store for sessions.
    """
    return Setup(clock, sync_store, schedules)


def request(headers: dict[str, str], params: dict[str, list[str]]) -> ConnectionRequest:
    return ConnectionRequest(
        peer="tcp:127.0.0.1:1",
        headers=headers,
        host="localhost",
        path="/v1/ws/worker",
        params=params,
        version=13,
        origin=None,
        protocols=[wire.SUBPROTOCOL],
        extensions=[],
    )


# Authentication.


def test_bearer() -> None:
    """Only a Bearer header with a token yields one."""
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_no_credentials_loopback_only() -> None:
    """With nothing configured, loopback peers get every role, others none."""
    assert authenticate(None, "127.0.0.1", api_key=None, tokens=()) == Identity(
        None, ALL_ROLES
    )
    assert authenticate(None, "::1", api_key=None, tokens=()) is not None
    assert authenticate(None, "192.0.2.7", api_key=None, tokens=()) is None


def test_api_key_and_tokens() -> None:
    """The api_key grants every role; a token its own name and role."""

    def check(header: str | None) -> Identity | None:
        return authenticate(header, "192.0.2.7", api_key="key", tokens=TOKENS)

    assert check("Bearer key") == Identity(None, ALL_ROLES)
    assert check("Bearer tok-w1") == Identity("w1", frozenset({"worker"}))
    assert check("Bearer tok-ops") == Identity("ops", frozenset({"cli-admin"}))
    assert check("Bearer wrong") is None
    assert check(None) is None
    assert authenticate(None, "127.0.0.1", api_key="key", tokens=()) is None


def test_upgrade_identity(write_config: Any) -> None:
    """The upgrade names the connection and refuses bad credentials."""
    gate = Gate(
        write_config(
            """
            [[tokens]]
            name = "w1"
            token = "tok-w1"
            role = "worker"
            [[tokens]]
            name = "reader"
            token = "tok-r"
            role = "cli-read"
            """
        )
    )
    auth = {"authorization": "Bearer tok-w1"}

    assert upgrade_identity(gate, request(auth, {}), "192.0.2.1", "worker")[0] == "w1"
    denied = [
        (request({}, {"name": ["w1"]}), "worker", 401),
        (request(auth, {"name": ["w2"]}), "worker", 403),
        (request({"authorization": "Bearer tok-r"}, {}), "worker", 403),
        (request(auth, {}), "cli-read", 403),
    ]
    for item, role, code in denied:
        with pytest.raises(ConnectionDeny) as caught:
            upgrade_identity(gate, item, "192.0.2.1", role)
        assert caught.value.code == code

    loopback = Gate(write_config(""))
    with pytest.raises(ConnectionDeny) as caught:
        upgrade_identity(loopback, request({}, {}), "127.0.0.1", "worker")
    assert caught.value.code == 400


# Sessions.


def test_hello_welcome_and_facts(setup: Setup) -> None:
    """A hello is answered with welcome and the worker's facts are kept."""
    session, peer = setup.hello(host=wire.HostFacts(hostname="box", os="Linux"))

    assert peer.types() == ["welcome"]
    assert peer.frames[0]["session"] == session.session
    assert setup.registry.is_connected("w1")
    assert setup.store.rows("SELECT name, hostname, os, version FROM workers") == [
        ("w1", "box", "Linux", "1.0")
    ]
    assert [item["name"] for item in setup.registry.connected()] == ["w1"]


def test_first_frame_must_be_hello(setup: Setup) -> None:
    """Anything before hello closes the connection with 1008."""
    session, peer = setup.connect()

    send(
        session,
        wire.Started(
            rec=1, run="0" * 8 + "-0000-0000-0000-" + "0" * 12, cmd=0, at=at()
        ),
    )

    assert peer.closed is not None and peer.closed[0] == wire.CLOSE_POLICY


def test_frames_after_close_ignored(setup: Setup) -> None:
    """Once the server closes a connection, later frames are ignored."""
    session, peer = setup.connect()
    session.received(b"{oops", False)

    send(session, wire.Hello(name="w1"))

    assert peer.closed is not None and peer.closed[0] == wire.CLOSE_BAD_PAYLOAD
    assert peer.frames == []


def test_hello_name_must_match(setup: Setup) -> None:
    """A hello under another name than the connection's closes with 1008."""
    session, peer = setup.connect("w1")

    send(session, wire.Hello(name="w2"))

    assert peer.closed is not None and peer.closed[0] == wire.CLOSE_POLICY


def test_duplicate_name_refused_while_alive(setup: Setup) -> None:
    """A live name refuses a second connection; a dead one frees it."""
    first, _ = setup.hello()
    _, peer = setup.connect()
    assert peer.closed is not None
    assert peer.closed == (wire.CLOSE_POLICY, "worker w1 is already connected")

    first.closed()
    _, again = setup.hello()

    assert again.closed is None and again.types() == ["welcome"]


def test_records_acknowledged_after_store(setup: Setup) -> None:
    """Records are acknowledged once stored, duplicates too, stored once."""
    run_id = setup.dispatch()
    session, peer = setup.hello()
    records = [
        wire.Started(rec=1, run=run_id, cmd=0, at=at()),
        wire.Output(rec=2, run=run_id, seq=0, cmd=0, at=at(), lines=("x",)),
        wire.Exit(rec=3, run=run_id, cmd=0, at=at(), code=0),
        wire.Finished(rec=4, run=run_id, at=at(), state="succeeded", code=0),
    ]

    for record in records + records:
        send(session, record)
    setup.clock.advance(0)

    acks = [frame for frame in peer.frames if frame["type"] == "ack"]
    assert acks == [{"type": "ack", "recs": [1, 2, 3, 4, 1, 2, 3, 4]}]
    assert setup.store.rows("SELECT COUNT(*) FROM output") == [(1,)]
    assert setup.store.run(run_id)["state"] == "succeeded"


def test_record_for_unknown_run(setup: Setup) -> None:
    """A record for another worker's run gets an error and an ack."""
    session, peer = setup.hello()
    run_id = wire.run_id("w2", "job", slot_time(SLOT))

    send(session, wire.Finished(rec=7, run=run_id, at=at()))
    setup.clock.advance(0)

    assert peer.types() == ["welcome", "error", "ack"]
    assert peer.frames[1]["code"] == "bad-message"
    assert peer.closed is None


def test_record_not_stored_is_not_acknowledged(setup: Setup) -> None:
    """A record the store refuses gets an error and no ack."""
    run_id = setup.dispatch()
    session, peer = setup.hello()
    setup.store.fail_next = ValueError("refused")

    send(session, wire.Started(rec=1, run=run_id, cmd=0, at=at()))
    setup.clock.advance(0)

    assert peer.types() == ["welcome", "dispatch", "error"]
    assert peer.frames[2]["code"] == "not-stored"


@pytest.mark.parametrize(
    ("payload", "binary", "code"),
    [
        (b"\x00\x01", True, wire.CLOSE_BAD_PAYLOAD),
        (b"{not json", False, wire.CLOSE_BAD_PAYLOAD),
        (b"[1, 2]", False, wire.CLOSE_BAD_PAYLOAD),
        (
            b'{"type": "hello", "name": "' + b"x" * 5000 + b'"}',
            False,
            wire.CLOSE_TOO_BIG,
        ),
    ],
)
def test_bad_frames_close(
    setup: Setup, payload: bytes, binary: bool, code: int
) -> None:
    """Binary, non-JSON and oversize frames close with 1007 or 1009."""
    session, peer = setup.hello()

    session.received(payload, binary)

    assert peer.closed is not None and peer.closed[0] == code


def test_invalid_message_gets_error(setup: Setup) -> None:
    """Valid JSON that is not a valid message gets an error, no close."""
    session, peer = setup.hello()

    session.received(b'{"type": "output", "rec": -1}', False)
    session.received(b'{"type": "nonsense"}', False)
    send(session, wire.Hello(name="w1"))

    assert peer.types() == ["welcome", "error", "error", "error"]
    assert peer.closed is None


def test_back_pressure_pauses_workers(setup: Setup) -> None:
    """Store back-pressure pauses every worker connection, and resumes."""
    _, peer = setup.hello()

    setup.store._set_pressure(True)
    assert peer.paused
    _, late = setup.connect("w2")
    assert late.paused

    setup.store._set_pressure(False)
    assert not peer.paused


def test_disconnect_starts_lost_grace(setup: Setup) -> None:
    """A worker that leaves and stays away loses its runs after the grace."""
    run_id = setup.dispatch()
    session, _ = setup.hello()
    setup.clock.advance(0)

    session.closed()
    setup.clock.advance(300)

    assert setup.store.run(run_id)["state"] == "lost"
    assert not setup.registry.is_connected("w1")
    assert setup.store.rows("SELECT last_seen IS NOT NULL FROM workers") == [(1,)]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    frame=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(wire.FROM_WORKER))},
            optional={
                "rec": st.integers(),
                "run": st.text(max_size=40),
                "seq": st.integers(),
                "lines": st.lists(st.text(max_size=5), max_size=3),
                "name": st.text(max_size=10),
            },
        ).map(lambda value: json.dumps(value).encode()),
    ),
    binary=st.booleans(),
)
def test_arbitrary_frames_never_crash(
    clock: Clock, schedules: Any, frame: bytes, binary: bool
) -> None:
    """Arbitrary bytes and JSON get an error or a close, never an exception."""
    setup = Setup(clock, SyncStore(clock), schedules)
    session, peer = setup.hello()

    session.received(frame, binary)
    clock.advance(0)

    assert peer.closed is not None or len(peer.frames) >= 1
