"""
The C{/v1/ws/cli} endpoint: requests, the handler registry, and C{info}.

A CLI sends C{request {id, method, params}} frames; each gets exactly one
C{response} or C{error} with the same C{id} (a stream sends C{event}s
first). A handler is one async function registered by name:

    @handler("clients")
    async def clients(ctx: CliContext, params: Mapping[str, Any]) -> Any:
        return ctx.workers.connected()

It returns a JSON-able result or raises L{CliError} (or one of its
subclasses) for an C{error} with that code; anything else it raises is
logged and answered with C{internal}. C{admin=True} makes a handler
refuse clients without the C{cli-admin} role.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

import barto
from barto import wire
from barto.config import ServerConfig
from barto.server.runs import EventBus, RunLedger
from barto.server.scheduler import Scheduler
from barto.server.store import Store, StoreUnavailable
from barto.server.workers import (
    Gate,
    Identity,
    WorkerRegistry,
    close_with,
    configure_factory,
    frame_fault,
    offered_subprotocol,
    peer_host,
    upgrade_identity,
)

log = Logger()

T = TypeVar("T")


# Errors.


class CliError(Exception):
    """
    A request that fails with an C{error} of code L{code}.
    """

    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(CliError):
    """
    The request's parameters are wrong.
    """

    code = "bad-request"


class NotFound(CliError):
    """
    What the request names does not exist.
    """

    code = "not-found"


class Forbidden(CliError):
    """
    The client's role does not allow the request.
    """

    code = "forbidden"


class Unavailable(CliError):
    """
    The database cannot be reached right now.
    """

    code = "unavailable"


# The server the handlers see.


@dataclass
class ServerState:
    """
    The parts of a running server that CLI handlers use.

    @ivar config: the config in force (replaced on reload).
    @ivar started_at: unix seconds.
    """

    store: Store
    workers: WorkerRegistry
    scheduler: Scheduler
    ledger: RunLedger
    events: EventBus
    config: ServerConfig
    clock: IReactorTime
    started_at: float


@dataclass
class CliContext:
    """
    What a handler gets: the server, the client, and a way to stream.

    @ivar client: the CLI client's name.
    @ivar role: C{cli-read} or C{cli-admin}.
    @ivar request_id: the C{id} of the request being answered.
    @ivar closed: fires when the client's connection ends (a streaming
        handler waits for it or for its own end condition).
    """

    server: ServerState
    client: str
    role: str
    request_id: int
    send_event: Callable[[Mapping[str, Any]], None]
    closed: defer.Deferred[None] = field(default_factory=defer.Deferred)

    @property
    def store(self) -> Store:
        """The run store."""
        return self.server.store

    @property
    def workers(self) -> WorkerRegistry:
        """The connected-worker registry."""
        return self.server.workers

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler: schedules, next elapses, fire now."""
        return self.server.scheduler

    @property
    def ledger(self) -> RunLedger:
        """The run ledger: active runs, cancel."""
        return self.server.ledger

    @property
    def events(self) -> EventBus:
        """Run events: C{subscribe(predicate, callback) -> unsubscribe}."""
        return self.server.events

    @property
    def config(self) -> ServerConfig:
        """The config in force."""
        return self.server.config

    @property
    def clock(self) -> IReactorTime:
        """The server's clock."""
        return self.server.clock

    @property
    def is_admin(self) -> bool:
        """Whether the client has the C{cli-admin} role."""
        return self.role == "cli-admin"


# The registry.

HandlerFunction = Callable[[CliContext, Mapping[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    """
    A registered request handler.

    @ivar admin: whether it needs the C{cli-admin} role.
    """

    method: str
    function: HandlerFunction
    admin: bool


HANDLERS: dict[str, Handler] = {}
"""Every registered handler, by method name."""


def handler(
    method: str, *, admin: bool = False
) -> Callable[[HandlerFunction], HandlerFunction]:
    """
    Register an async function as the handler of C{method}.

    @param admin: refuse clients without the C{cli-admin} role.
    @raise ValueError: C{method} is taken or not a valid name.
    """

    def register(function: HandlerFunction) -> HandlerFunction:
        if not wire.is_valid_name(method):
            raise ValueError(f"bad method name {method!r}")
        if method in HANDLERS:
            raise ValueError(f"method {method!r} is registered twice")
        HANDLERS[method] = Handler(method, function, admin)
        return function

    return register


_REQUIRED: Any = object()


def get_param(
    params: Mapping[str, Any],
    name: str,
    kind: type[T],
    default: T | None = _REQUIRED,
) -> T:
    """
    A parameter of the expected type.

    @param kind: C{str}, C{int}, C{float}, C{bool}, C{list} or C{dict}.
    @param default: returned when the parameter is absent or C{null};
        without it the parameter is required.
    @raise BadRequest: missing, or of another type.
    """
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise BadRequest(f"missing parameter {name!r}")
        return default  # type: ignore[return-value]
    wrong_bool = isinstance(value, bool) and kind is not bool
    if kind is float and isinstance(value, int) and not wrong_bool:
        value = float(value)
    if wrong_bool or not isinstance(value, kind):
        raise BadRequest(f"parameter {name!r} must be a {kind.__name__}")
    return value


async def call_handler(
    method: str,
    ctx: CliContext,
    params: Mapping[str, Any],
) -> Any:
    """
    Run the handler of C{method} for C{ctx}, after the role check.

    @raise CliError: unknown method, forbidden, or what the handler
        raised; a L{StoreUnavailable} becomes L{Unavailable}.
    """
    if not method:
        raise BadRequest("missing method")
    registered = HANDLERS.get(method)
    if registered is None:
        raise CliError(f"unknown method {method!r}", "unknown-method")
    if registered.admin and not ctx.is_admin:
        raise Forbidden(f"{method} needs the cli-admin role")

    try:
        return await registered.function(ctx, params)
    except StoreUnavailable as error:
        raise Unavailable(f"the database is unavailable: {error}") from None


# Sessions.


class CliSession:
    """
    One CLI connection: requests in, responses, errors and events out.
    """

    def __init__(
        self,
        server: ServerState,
        client: str,
        role: str,
        *,
        send: Callable[[str], None],
        close: Callable[[int, str], None],
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.server = server
        self.client = client
        self.role = role
        self.open = True
        self._send = send
        self._close = close
        self._max = max_message_bytes
        self._contexts: list[CliContext] = []

    def received(self, payload: bytes, binary: bool) -> None:
        """
        One frame from the CLI: dispatch a request, or answer an error.
        """
        if binary:
            self._error(None, "bad-request", "binary frames are not accepted")
            return

        text = payload.decode("utf-8", errors="replace")
        try:
            request = wire.decode(text, wire.FROM_CLI, max_bytes=self._max)
        except wire.WireError as error:
            log.warn(
                "bad request from {client}: {error}",
                client=self.client,
                error=str(error)[:200],
            )
            if frame_fault(text, error) == wire.CLOSE_TOO_BIG:
                self._close(wire.CLOSE_TOO_BIG, "frame too big")
                return
            self._error(_request_id(text), "bad-request", str(error))
            return

        assert isinstance(request, wire.Request)
        defer.Deferred.fromCoroutine(self._answer(request))

    def closed(self) -> None:
        """
        The connection is gone: tell the streams still going.
        """
        self.open = False
        contexts, self._contexts = self._contexts, []
        for ctx in contexts:
            if not ctx.closed.called:
                ctx.closed.callback(None)

    async def _answer(self, request: wire.Request) -> None:
        ctx = CliContext(
            self.server,
            self.client,
            self.role,
            request.id,
            send_event=lambda event: self._event(request.id, event),
        )
        self._contexts.append(ctx)
        log.debug(
            "request {id} from {client}: {method}",
            id=request.id,
            client=self.client,
            method=request.method,
        )
        try:
            result = await call_handler(request.method, ctx, request.params)
            self._reply(wire.Response(id=request.id, result=result))
        except CliError as error:
            self._error(request.id, error.code, str(error))
        except Exception:
            log.failure(
                "request {method} from {client} failed",
                Failure(),
                method=request.method,
                client=self.client,
            )
            self._error(request.id, "internal", "internal server error")
        finally:
            if ctx in self._contexts:
                self._contexts.remove(ctx)

    def _event(self, request_id: int, event: Mapping[str, Any]) -> None:
        self._reply(wire.Event(id=request_id, event=event))

    def _reply(self, message: wire.Message) -> None:
        if not self.open:
            return
        try:
            text = wire.encode(message)
        except (TypeError, ValueError):
            log.failure("an answer is not JSON-able", Failure())
            request_id = getattr(message, "id", None)
            text = wire.encode(
                wire.Error(
                    id=request_id,
                    code="internal",
                    message="bad result",
                )
            )
        self._send(text)

    def _error(self, request_id: int | None, code: str, message: str) -> None:
        self._reply(
            wire.Error(id=request_id, code=code, message=message[:500]),
        )


def _request_id(text: str) -> int | None:
    """
    The C{id} of a bad request, when one can be read.
    """
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    value = body.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# Autobahn.


class CliProtocol(WebSocketServerProtocol):
    """
    A CLI connection: authentication on the upgrade, then a L{CliSession}.
    """

    factory: CliFactory
    cli: CliSession | None = None
    identity: Identity | None = None
    client_name = ""

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """
        Check the credentials and the name of the upgrade request.
        """
        self.client_name, self.identity = upgrade_identity(
            self.factory.gate, request, peer_host(self), "cli-read"
        )
        return offered_subprotocol(request)

    def onOpen(self) -> None:
        """
        Start the session.
        """
        assert self.identity is not None
        admin = "cli-admin" in self.identity.roles
        role = "cli-admin" if admin else "cli-read"
        websocket = self.factory.server.config.websocket
        self.cli = CliSession(
            self.factory.server,
            self.client_name,
            role,
            send=lambda text: self.sendMessage(text.encode("utf-8")),
            close=lambda code, reason: close_with(self, code, reason),
            max_message_bytes=websocket.max_message_bytes,
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand a frame to the session.
        """
        if self.cli is not None:
            self.cli.received(payload, isBinary)

    def onClose(
        self,
        wasClean: bool,
        code: int | None,
        reason: str | None,
    ) -> None:
        """
        End the session.
        """
        if self.cli is not None:
            self.cli.closed()


class CliFactory(WebSocketServerFactory):
    """
    Builds L{CliProtocol}s that share the server state and the gate.
    """

    protocol = CliProtocol  # type: ignore[assignment]

    def __init__(self, server: ServerState, gate: Gate) -> None:
        super().__init__(
            protocols=[wire.SUBPROTOCOL], server=f"bartos/{barto.__version__}"
        )
        self.server = server
        self.gate = gate
        configure_factory(self, server.config)


# The info handler.


@handler("info")
async def info(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    The server's version, uptime, store and counts.
    """
    counts = await ctx.store.counts()
    now = ctx.clock.seconds()
    return {
        "version": barto.__version__,
        "started": wire.format_time(_utc(ctx.server.started_at)),
        "uptime": math.floor(now - ctx.server.started_at),
        "store": ctx.store.dialect,
        "pending_writes": ctx.store.pending(),
        "runs": counts["runs"],
        "runs_by_state": counts["runs_by_state"],
        "active_runs": len(ctx.ledger.active_runs()),
        "workers": {
            "known": counts["workers"],
            "connected": len(ctx.workers.connected()),
        },
        "schedules": len(ctx.scheduler.schedules()),
    }


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
