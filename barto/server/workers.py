"""
The C{/v1/ws/worker} endpoint and the registry of connected workers.

A L{WorkerSession} holds one worker's conversation (hello, records,
acknowledgements) and knows nothing of Autobahn: it sends text and closes
through two callables. L{WorkerProtocol} is the thin Autobahn shell around
it, and L{WorkerRegistry} keeps the sessions by name, refuses a second
connection under a name that is alive, and is how the ledger reaches a
worker.

Authentication happens on the upgrade request, in L{Gate.check}, shared
with the CLI endpoint.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

import barto
from barto import wire
from barto.config import ServerConfig, TokenConfig
from barto.server.runs import RunLedger
from barto.server.store import RecordResult, Store, thdSaveWorker

log = Logger()

ALL_ROLES = frozenset({"worker", "cli-read", "cli-admin"})

MAX_LOGGED_FAULTS = 3
"""Bad frames logged per connection; later ones are only counted."""


# Authentication.


@dataclass(frozen=True)
class Identity:
    """
    Who a connection is, from its credentials.

    @ivar name: the client name its token stands for; C{None} when the
        credentials (the shared C{api_key}, or none on loopback) name no
        one, so the name comes from the C{name} query parameter.
    @ivar roles: what it may do: C{worker}, C{cli-read}, C{cli-admin}.
    """

    name: str | None
    roles: frozenset[str]


def is_loopback(host: str) -> bool:
    """
    Whether C{host} (an IP address) is a loopback address.
    """
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer(header: str | None) -> str | None:
    """
    The token of an C{Authorization: Bearer TOKEN} header, if any.
    """
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(
    header: str | None,
    peer: str,
    *,
    api_key: str | None,
    tokens: Iterable[TokenConfig],
) -> Identity | None:
    """
    The identity behind an upgrade request, or C{None} to refuse it.

    With an C{api_key} or tokens configured, the bearer token must match
    one (compared in constant time): the key grants every role, a token
    its own name and role. With neither, only loopback peers are let in,
    with every role.

    @param header: the C{Authorization} header.
    @param peer: the peer's IP address.
    """
    tokens = tuple(tokens)
    if api_key is None and not tokens:
        return Identity(None, ALL_ROLES) if is_loopback(peer) else None

    given = bearer(header)
    if given is None:
        return None
    offered = given.encode()
    found: Identity | None = None
    if api_key is not None and hmac.compare_digest(offered, api_key.encode()):
        found = Identity(None, ALL_ROLES)
    for item in tokens:
        if hmac.compare_digest(offered, item.token.reveal().encode()):
            found = found or Identity(item.name, frozenset({item.role}))
    return found


class Gate:
    """
    The credentials in force, checked on every upgrade request.

    Besides the config's credentials, a gate admits the workers it was
    told to L{admit} (a worker inside C{bartos}) with tokens it made
    itself and holds only in memory.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        admitted_only: bool = False,
    ) -> None:
        """
        @param admitted_only: admit nothing but the L{admit}ted workers,
            whatever the config says (a private listener's gate).
        """
        self._warned = admitted_only
        self._admitted_only = admitted_only
        self._admitted: dict[str, str] = {}
        self.update(config)

    def update(self, config: ServerConfig) -> None:
        """
        Take the credentials of a (re)loaded config.
        """
        key = config.api_key
        self._api_key = None if key is None else key.reveal()
        self._tokens = tuple(config.tokens)
        if self._api_key is None and not self._tokens and not self._warned:
            self._warned = True
            log.warn(
                "no api_key or tokens configured: only loopback clients are accepted"
            )

    def admit(self, name: str) -> str:
        """
        Make a random token that grants the role C{worker} under C{name}
        and nothing else. It is kept in memory only (a reload keeps it)
        and admitted whether or not the config has credentials.

        @return: the token, for the worker's C{Authorization} header.
        """
        token = secrets.token_urlsafe(32)
        self._admitted[name] = token
        return token

    def check(self, header: str | None, peer: str) -> Identity | None:
        """
        An L{admit}ted worker's identity, else L{authenticate} with the
        credentials in force.
        """
        given = bearer(header)
        if given is not None:
            offered = given.encode()
            for name, token in self._admitted.items():
                if hmac.compare_digest(offered, token.encode()):
                    return Identity(name, frozenset({"worker"}))
        if self._admitted_only:
            return None
        return authenticate(
            header,
            peer,
            api_key=self._api_key,
            tokens=self._tokens,
        )


def upgrade_identity(
    gate: Gate, request: ConnectionRequest, peer: str, role: str
) -> tuple[str, Identity]:
    """
    Check an upgrade request to an endpoint that needs C{role}.

    @return: the connection's client name and identity.
    @raise ConnectionDeny: 401 without valid credentials, 403 for the
        wrong role or a name the token does not stand for, 400 for a
        missing or bad name or subprotocol.
    """
    if request.protocols and wire.SUBPROTOCOL not in request.protocols:
        raise ConnectionDeny(400, f"subprotocol {wire.SUBPROTOCOL} required")

    identity = gate.check(request.headers.get("authorization"), peer)
    if identity is None:
        log.warn("refused {peer}: bad or missing credentials", peer=peer)
        raise ConnectionDeny(401, "unauthorized")
    if role not in identity.roles and not (
        role == "cli-read" and "cli-admin" in identity.roles
    ):
        log.warn(
            "refused {peer}: credentials of {name} are not for role {role}",
            peer=peer,
            name=identity.name,
            role=role,
        )
        raise ConnectionDeny(403, f"credentials are not for role {role}")

    asked = request.params.get("name", [None])[0]
    if identity.name is not None:
        if asked is not None and asked != identity.name:
            log.warn(
                "refused {peer}: the token of {name} used as {asked!r}",
                peer=peer,
                name=identity.name,
                asked=asked,
            )
            raise ConnectionDeny(403, f"token is not for {asked!r}")
        return identity.name, identity
    if asked is None or not wire.is_valid_name(asked):
        raise ConnectionDeny(400, "a valid ?name= is required")
    return asked, identity


def offered_subprotocol(request: ConnectionRequest) -> str | None:
    """
    C{barto.v1} when the client offered it (the handshake's answer).
    """
    return wire.SUBPROTOCOL if wire.SUBPROTOCOL in request.protocols else None


def frame_fault(payload: str, error: wire.WireError) -> int | None:
    """
    The close code a bad frame deserves, or C{None} when it is a JSON
    object that only is not a valid message (answered with C{error}).
    """
    if error.close_code == wire.CLOSE_TOO_BIG:
        return wire.CLOSE_TOO_BIG
    try:
        body = json.loads(payload)
    except ValueError:
        return wire.CLOSE_BAD_PAYLOAD
    return None if isinstance(body, dict) else wire.CLOSE_BAD_PAYLOAD


# Sessions.


class WorkerSession:
    """
    One worker's connection: hello, records in, acknowledgements out.

    @ivar name: the authenticated worker name.
    @ivar hello: its C{hello}, once received.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        name: str,
        address: str,
        *,
        send: Callable[[str], None],
        close: Callable[[int, str], None],
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        """
        @param send: sends one text frame.
        @param close: closes the connection with a code and a reason.
        @param pause: stops reading from the connection (back-pressure).
        @param resume: reads again.
        """
        self.registry = registry
        self.name = name
        self.address = address
        self.hello: wire.Hello | None = None
        self.session = uuid.uuid4().hex
        self.connected_since = registry.clock.seconds()
        self.last_seen = self.connected_since
        self.open = True
        self.closing = False
        self._send = send
        self._close = close
        self.pause = pause
        self.resume = resume
        self._acks: list[int] = []
        self._ack_call: IDelayedCall | None = None
        self._faults = 0

    # From the connection.

    def opened(self) -> None:
        """
        The WebSocket is open: claim the name, or close as a duplicate.
        """
        if not self.registry.claim(self):
            log.warn(
                "refused worker {worker} from {address}: already connected",
                worker=self.name,
                address=self.address,
            )
            self.close(
                wire.CLOSE_POLICY,
                f"worker {self.name} is already connected",
            )

    def received(self, payload: bytes, binary: bool) -> None:
        """
        One frame from the worker.
        """
        if self.closing:
            return
        self.last_seen = self.registry.clock.seconds()
        if binary:
            self._fault("a binary frame", wire.CLOSE_BAD_PAYLOAD)
            return

        text = payload.decode("utf-8", errors="replace")
        try:
            message = wire.decode(
                text,
                wire.FROM_WORKER,
                max_bytes=self.registry.max_message_bytes,
            )
        except wire.WireError as error:
            self._fault(str(error), frame_fault(text, error))
            return

        log.debug(
            "frame from {worker}: {type}",
            worker=self.name,
            type=message.TYPE,
        )
        if self.hello is None:
            self._first(message)
        elif isinstance(message, wire.Hello):
            self._fault("a second hello", None)
        elif isinstance(message, wire.Error):
            log.warn(
                "worker {worker} reports an error: {code}: {message}",
                worker=self.name,
                code=message.code,
                message=message.message,
            )
        else:
            self._record(message)  # type: ignore[arg-type]

    def closed(self) -> None:
        """
        The connection is gone.
        """
        if not self.open:
            return
        self.open = False
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self.registry.release(self)

    # Protocol.

    def _first(self, message: wire.Message) -> None:
        if not isinstance(message, wire.Hello):
            self._fault("a frame before hello", wire.CLOSE_POLICY)
            return
        if message.name != self.name:
            self._fault(
                f"hello as {message.name!r} on a connection for {self.name!r}",
                wire.CLOSE_POLICY,
            )
            return

        self.hello = message
        self.send(
            wire.Welcome(version=barto.__version__, session=self.session),
        )
        self.registry.welcomed(self)

    def _record(self, record: wire.Record) -> None:
        done = self.registry.ledger.record(self.name, record)
        done.addCallback(self._stored, record)
        done.addErrback(self._not_stored, record)

    def _stored(self, result: RecordResult, record: wire.Record) -> None:
        if result.status == "unknown":
            self._fault(f"a {record.TYPE} for unknown run {record.run}", None)
        self._acks.append(record.rec)
        if self._ack_call is None and self.open:
            self._ack_call = self.registry.clock.callLater(0, self._send_acks)

    def _not_stored(self, failure: Failure, record: wire.Record) -> None:
        log.failure(
            "record {rec} of {worker} could not be stored",
            failure,
            rec=record.rec,
            worker=self.name,
        )
        self.send(
            wire.Error(
                code="not-stored",
                message=f"record {record.rec} not stored",
            )
        )

    def _send_acks(self) -> None:
        self._ack_call = None
        recs, self._acks = self._acks, []
        if recs and self.open:
            self.send(wire.Ack(recs=tuple(recs)))

    def _fault(self, what: str, close_code: int | None) -> None:
        """
        A frame broke the protocol: log it (the first few), then answer
        with C{error} or close with C{close_code}.
        """
        self._faults += 1
        if self._faults <= MAX_LOGGED_FAULTS:
            log.warn(
                "bad frame from worker {worker} ({address}): {what}",
                worker=self.name,
                address=self.address,
                what=what[:200],
            )
        if close_code is None:
            self.send(wire.Error(code="bad-message", message=what[:500]))
        else:
            self.close(close_code, what[:120])

    # To the connection.

    def send(self, message: wire.Message) -> None:
        """
        Send one message, if the connection is still open.
        """
        # Not logged per frame: at a busy slot that cost a third of the
        # tick. Received frames are logged at debug; the run ledger logs
        # each dispatch at info.
        if self.open:
            self._send(wire.encode(message))

    def close(self, code: int, reason: str) -> None:
        """
        Close the connection with C{code}; frames still arriving are
        ignored.
        """
        if self.open and not self.closing:
            self.closing = True
            self._close(code, reason)

    def describe(self) -> dict[str, Any]:
        """
        This session as a JSON-able mapping (for the CLI).
        """
        hello = self.hello or wire.Hello(name=self.name)
        return {
            "name": self.name,
            "address": self.address,
            "version": hello.version,
            "hostname": hello.host.hostname,
            "os": hello.host.os,
            "os_version": hello.host.os_version,
            "kernel": hello.host.kernel,
            "missed_tick": hello.missed_tick,
            "connected_since": wire.format_time(_utc(self.connected_since)),
            "last_seen": wire.format_time(_utc(self.last_seen)),
            "session": self.session,
        }


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class WorkerRegistry:
    """
    The connected workers, by name; how the ledger reaches them.
    """

    def __init__(
        self,
        ledger: RunLedger,
        store: Store,
        *,
        clock: IReactorTime,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self._sessions: dict[str, WorkerSession] = {}
        self._emptied: list[defer.Deferred[None]] = []
        store.on_pressure(self._pressure)
        ledger.attach(self)

    # For the ledger.

    def send(self, worker: str, message: wire.Message) -> bool:
        """
        Send C{message} to C{worker}; C{False} unless it is connected.
        """
        session = self._sessions.get(worker)
        if session is None or session.hello is None or not session.open:
            return False
        session.send(message)
        return True

    def is_connected(self, worker: str) -> bool:
        """
        Whether C{worker} is connected and has said hello.
        """
        session = self._sessions.get(worker)
        return session is not None and session.hello is not None

    # Views.

    def connected(self) -> list[dict[str, Any]]:
        """
        The connected workers (after hello), by name.
        """
        return [
            self._sessions[name].describe()
            for name in sorted(self._sessions)
            if self._sessions[name].hello is not None
        ]

    def session(self, worker: str) -> WorkerSession | None:
        """
        The live session of C{worker}, if any.
        """
        return self._sessions.get(worker)

    # Sessions.

    def claim(self, session: WorkerSession) -> bool:
        """
        Register a new connection; C{False} while another one holds the
        name.
        """
        if session.name in self._sessions:
            return False
        self._sessions[session.name] = session
        if self.store.pressure:
            session.pause()
        return True

    def welcomed(self, session: WorkerSession) -> None:
        """
        A session said hello: record the worker's facts and let the ledger
        resume its runs.
        """
        hello = session.hello
        assert hello is not None
        log.info(
            "worker {worker} connected from {address} (version {version},"
            " missed_tick {policy})",
            worker=session.name,
            address=session.address,
            version=hello.version,
            policy=hello.missed_tick,
        )
        since = int(session.connected_since * 1_000_000)
        facts = {
            "hostname": hello.host.hostname,
            "os": hello.host.os,
            "os_version": hello.host.os_version,
            "kernel": hello.host.kernel,
            "version": hello.version,
            "address": session.address,
            "connected_since": since,
            "last_seen": since,
        }
        self._save(session.name, facts)
        self.ledger.worker_connected(
            session.name,
            hello.missed_tick,
            hello.running,
        )

    def release(self, session: WorkerSession) -> None:
        """
        A session ended.
        """
        if self._sessions.get(session.name) is not session:
            return
        del self._sessions[session.name]
        if not self._sessions:
            waiting, self._emptied = self._emptied, []
            for gone in waiting:
                gone.callback(None)
        if session.hello is None:
            return
        log.info("worker {worker} disconnected", worker=session.name)
        self._save(
            session.name,
            {"last_seen": int(session.last_seen * 1_000_000)},
        )
        self.ledger.worker_disconnected(session.name)

    def close_all(self, code: int, reason: str) -> defer.Deferred[None]:
        """
        Close every worker connection (the server is stopping).

        @return: fires when every session has ended.
        """
        for session in list(self._sessions.values()):
            session.close(code, reason)
        if not self._sessions:
            return defer.succeed(None)
        gone: defer.Deferred[None] = defer.Deferred()
        self._emptied.append(gone)
        return gone

    def _save(self, name: str, facts: Mapping[str, Any]) -> None:
        done = self.store.write(thdSaveWorker, name, facts)
        done.addErrback(
            lambda failure: log.failure(
                "saving worker {worker} failed", failure, worker=name
            )
        )

    def _pressure(self, on: bool) -> None:
        # FIXME: a paused worker cannot answer pings, so a long database
        # outage can drop its connection; it reconnects and resends.
        for session in self._sessions.values():
            if on:
                session.pause()
            else:
                session.resume()


# Autobahn.


def peer_host(protocol: WebSocketServerProtocol) -> str:
    """
    The IP address of a protocol's peer, or C{""}.
    """
    transport = protocol.transport
    if transport is None:
        return ""
    return str(getattr(transport.getPeer(), "host", ""))


def close_with(
    protocol: WebSocketServerProtocol,
    code: int,
    reason: str,
) -> None:
    """
    Start the closing handshake with any status code (Autobahn's
    C{sendClose} only takes 1000 and 3000-4999).
    """
    protocol.sendCloseFrame(
        code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False
    )


def pause_reading(protocol: WebSocketServerProtocol) -> None:
    """
    Stop reading from a protocol's transport.
    """
    transport: Any = protocol.transport
    if transport is not None:
        transport.pauseProducing()


def resume_reading(protocol: WebSocketServerProtocol) -> None:
    """
    Read from a protocol's transport again.
    """
    transport: Any = protocol.transport
    if transport is not None:
        transport.resumeProducing()


class WorkerProtocol(WebSocketServerProtocol):
    """
    A worker connection: authentication on the upgrade, then a
    L{WorkerSession}.
    """

    factory: WorkerFactory
    worker: WorkerSession | None = None
    client_name = ""

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """
        Check the credentials and the name of the upgrade request.
        """
        self.client_name, _ = upgrade_identity(
            self.factory.gate, request, peer_host(self), "worker"
        )
        return offered_subprotocol(request)

    def onOpen(self) -> None:
        """
        Start the session.
        """
        self.worker = WorkerSession(
            self.factory.registry,
            self.client_name,
            peer_host(self),
            send=lambda text: self.sendMessage(text.encode("utf-8")),
            close=lambda code, reason: close_with(self, code, reason),
            pause=lambda: pause_reading(self),
            resume=lambda: resume_reading(self),
        )
        self.worker.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand a frame to the session.
        """
        if self.worker is not None:
            self.worker.received(payload, isBinary)

    def onClose(
        self,
        wasClean: bool,
        code: int | None,
        reason: str | None,
    ) -> None:
        """
        End the session.
        """
        if self.worker is not None:
            self.worker.closed()


def configure_factory(
    factory: WebSocketServerFactory,
    config: ServerConfig,
) -> None:
    """
    Frame limits, auto-ping and failure handling shared by both endpoints.
    """
    limit = config.websocket.max_message_bytes
    factory.setProtocolOptions(
        maxFramePayloadSize=limit,
        maxMessagePayloadSize=limit,
        autoPingInterval=config.websocket.ping_interval,
        autoPingTimeout=config.websocket.ping_timeout,
        failByDrop=False,
        openHandshakeTimeout=30,
        closeHandshakeTimeout=5,
    )


class WorkerFactory(WebSocketServerFactory):
    """
    Builds L{WorkerProtocol}s that share one registry and gate.
    """

    protocol = WorkerProtocol  # type: ignore[assignment]

    def __init__(
        self, registry: WorkerRegistry, gate: Gate, config: ServerConfig
    ) -> None:
        super().__init__(
            protocols=[wire.SUBPROTOCOL], server=f"bartos/{barto.__version__}"
        )
        self.registry = registry
        self.gate = gate
        configure_factory(self, config)
