"""
Tests for the CLI endpoint: requests and responses, every failure as an
error, roles, streams, the handler registry and C{info}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fakes import START, SyncStore
from twisted.internet import defer
from twisted.internet.task import Clock

import barto
from barto import wire
from barto.server.cliapi import (
    BadRequest,
    CliContext,
    CliSession,
    NotFound,
    ServerState,
    get_param,
    handler,
)
from barto.server.runs import EventBus, RunLedger
from barto.server.scheduler import Scheduler
from barto.server.store import StoreUnavailable
from barto.server.workers import WorkerRegistry


class Client:
    """
    A CLI session and what it was sent.
    """

    def __init__(self, state: ServerState, role: str = "cli-admin") -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.session = CliSession(
            state,
            "tester",
            role,
            send=lambda text: self.frames.append(json.loads(text)),
            close=lambda code, reason: setattr(self, "closed", (code, reason)),
            max_message_bytes=2048,
        )

    def request(
        self, method: str, params: Mapping[str, Any] | None = None, id: int = 1
    ) -> None:
        message = wire.Request(id=id, method=method, params=dict(params or {}))
        self.session.received(wire.encode(message).encode(), False)


@pytest.fixture
def state(clock: Clock, sync_store: SyncStore, write_config: Any) -> ServerState:
    """
    A server state on the synchronous store, with two schedules.
    """
    config = write_config(
        """
        [schedules.w1]
        schedules = [
            { name = "a", on_calendar = "daily", cmds = ["true"] },
            { name = "b", on_calendar = "hourly", cmds = ["true"] },
        ]
        """
    )
    events = EventBus()
    ledger = RunLedger(sync_store, clock=clock, events=events)
    registry = WorkerRegistry(ledger, sync_store, clock=clock)
    scheduler = Scheduler(ledger, config.schedules, clock=clock)
    return ServerState(
        store=sync_store,
        workers=registry,
        scheduler=scheduler,
        ledger=ledger,
        events=events,
        config=config,
        clock=clock,
        started_at=START - 42,
    )


def test_info(state: ServerState) -> None:
    """info answers version, uptime, store kind and counts."""
    client = Client(state)

    client.request("info", id=7)

    (frame,) = client.frames
    assert frame["type"] == "response" and frame["id"] == 7
    assert frame["result"] == {
        "version": barto.__version__,
        "started": wire.format_time(
            __import__("datetime").datetime.fromtimestamp(
                START - 42, __import__("datetime").timezone.utc
            )
        ),
        "uptime": 42,
        "store": "sqlite",
        "pending_writes": 0,
        "runs": 0,
        "runs_by_state": {},
        "active_runs": 0,
        "workers": {"known": 0, "connected": 0},
        "schedules": 2,
    }


def test_unknown_method(state: ServerState) -> None:
    """An unknown method is answered with unknown-method and the id."""
    client = Client(state)

    client.request("nope", id=3)

    assert client.frames == [
        {
            "type": "error",
            "id": 3,
            "code": "unknown-method",
            "message": "unknown method 'nope'",
        }
    ]


@pytest.mark.parametrize(
    ("payload", "binary", "request_id"),
    [
        (b"{oops", False, None),
        (b'{"type": "request", "id": 5}', False, 5),
        (b'{"type": "request", "id": 5, "method": "info", "extra": 1}', False, 5),
        (b'{"type": "response", "id": 2}', False, 2),
        (b"\x01\x02", True, None),
    ],
)
def test_bad_requests_get_errors(
    state: ServerState, payload: bytes, binary: bool, request_id: int | None
) -> None:
    """Bad JSON, fields or binary frames get bad-request, with the id."""
    client = Client(state)

    client.session.received(payload, binary)

    (frame,) = client.frames
    assert (frame["type"], frame["code"], frame["id"]) == (
        "error",
        "bad-request",
        request_id,
    )
    assert client.closed is None


def test_oversize_request_closes(state: ServerState) -> None:
    """A frame past the size cap closes the connection with 1009."""
    client = Client(state)

    client.request("info", {"pad": "x" * 5000})

    assert client.closed is not None and client.closed[0] == wire.CLOSE_TOO_BIG


def test_handler_errors(state: ServerState, isolated_handlers: Any) -> None:
    """Handler errors map to their code, unavailable, or internal."""

    @handler("missing")
    async def missing(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        raise NotFound("no such run")

    @handler("down")
    async def down(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        raise StoreUnavailable("gone")

    @handler("broken")
    async def broken(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        raise RuntimeError("bug")

    client = Client(state)
    for index, method in enumerate(["missing", "down", "broken"]):
        client.request(method, id=index)

    assert [(f["id"], f["code"]) for f in client.frames] == [
        (0, "not-found"),
        (1, "unavailable"),
        (2, "internal"),
    ]


def test_store_down_info_unavailable(state: ServerState, sync_store: SyncStore) -> None:
    """info while the database is down answers unavailable."""
    sync_store.fail_next = StoreUnavailable("down")
    client = Client(state)

    client.request("info")

    assert client.frames[0]["code"] == "unavailable"


def test_admin_handler_forbidden_for_readers(
    state: ServerState, isolated_handlers: Any
) -> None:
    """A handler declared admin refuses a cli-read client."""

    @handler("wipe", admin=True)
    async def wipe(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        return "wiped"

    reader, admin = Client(state, "cli-read"), Client(state, "cli-admin")
    reader.request("wipe")
    admin.request("wipe")

    assert reader.frames[0]["code"] == "forbidden"
    assert admin.frames[0]["result"] == "wiped"


def test_stream_events_then_response(
    state: ServerState, isolated_handlers: Any
) -> None:
    """A streaming handler sends events before its final response."""
    release: defer.Deferred[None] = defer.Deferred()

    @handler("follow")
    async def follow(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        stop = ctx.events.subscribe(
            lambda event: event["kind"] == "state", ctx.send_event
        )
        await release
        stop()
        return {"done": True}

    client = Client(state)
    client.request("follow", id=9)
    state.events.emit({"kind": "state", "run": "r"})
    state.events.emit({"kind": "output", "run": "r"})
    release.callback(None)

    assert client.frames == [
        {"type": "event", "id": 9, "event": {"kind": "state", "run": "r"}},
        {"type": "response", "id": 9, "result": {"done": True}},
    ]


def test_close_ends_streams(state: ServerState, isolated_handlers: Any) -> None:
    """When the client goes, a waiting stream's ctx.closed fires."""
    ended: list[bool] = []

    @handler("wait")
    async def wait(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        await ctx.closed
        ended.append(True)
        return None

    client = Client(state)
    client.request("wait")
    client.session.closed()

    assert ended == [True]
    assert client.frames == []


def test_registry_refuses_twice(isolated_handlers: Any) -> None:
    """A method cannot be registered twice or under a bad name."""
    with pytest.raises(ValueError):
        handler("info")(lambda ctx, params: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        handler("bad name")(lambda ctx, params: None)


def test_get_param() -> None:
    """get_param checks presence and type, and applies defaults."""
    params = {"n": 3, "s": "x", "f": 2, "b": True}

    assert get_param(params, "n", int) == 3
    assert get_param(params, "f", float) == 2.0
    assert get_param(params, "missing", str, None) is None
    assert get_param(params, "missing", int, 10) == 10
    for name, kind in [("missing", str), ("s", int), ("b", int)]:
        with pytest.raises(BadRequest):
            get_param(params, name, kind)


def test_unserialisable_result_is_internal(
    state: ServerState, isolated_handlers: Any
) -> None:
    """A result that is not JSON-able still gets an answer: internal."""

    @handler("odd")
    async def odd(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        return {"when": object()}

    client = Client(state)
    client.request("odd", id=4)

    assert client.frames == [
        {"type": "error", "id": 4, "code": "internal", "message": "bad result"}
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    frame=st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"type": st.just("request")},
            optional={
                "id": st.integers() | st.text(max_size=5),
                "method": st.sampled_from(
                    ["info", "runs", "show", "query", "nope", ""]
                ),
                "params": st.dictionaries(st.text(max_size=8), JSON, max_size=3),
            },
        ).map(lambda value: json.dumps(value).encode()),
    ),
    binary=st.booleans(),
)
def test_arbitrary_frames_get_an_answer(
    state: ServerState, frame: bytes, binary: bool
) -> None:
    """Any frame gets a response, an error or a close, never silence."""
    client = Client(state)

    client.session.received(frame, binary)

    assert client.closed is not None or len(client.frames) >= 1
    for sent in client.frames:
        assert sent["type"] in ("response", "error", "event")
