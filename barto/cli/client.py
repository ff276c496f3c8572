"""
The connection of barto-cli to bartos: one short-lived WebSocket.

L{connect} opens C{/v1/ws/cli?name=NAME} with the bearer token of the
config and returns a L{Session}; L{Session.request} sends one request
and waits for its answer, handing every C{event} of a stream to a
callback on the way.  Failures are L{CliError}s that carry the exit code
barto-cli ends with: L{Unreachable} (3) when the server cannot be
reached, refuses the TLS handshake or the credentials, or does not
answer in time; L{RemoteError} (1) when it answers with an C{error}.

One timeout covers connecting and the answer: it starts when
L{connect} is called and ends with the first frame that answers a
request (for a stream, its first event).
"""

from __future__ import annotations

import os

# The native (cffi) UTF-8 validator and masker gain nothing for the few
# frames of a CLI session and cost a C parse at every start.
os.environ.setdefault("AUTOBAHN_USE_NVX", "0")

import typing
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from autobahn.websocket.types import ConnectionResponse
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from barto import wire
from barto.config import EndpointConfig
from barto.tls import TLSConfigError, client_context_factory

EXIT_OK = 0
EXIT_REMOTE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The largest frame the CLI accepts from its own server."""

EventHandler = Callable[[Mapping[str, Any]], None]

log = Logger()


class CliError(Exception):
    """
    A failure that ends barto-cli with C{exit_code} and a one-line
    message on standard error.
    """

    exit_code = EXIT_REMOTE


class Unreachable(CliError):
    """
    No answer: cannot connect, TLS or authentication refused, timed out,
    or the connection dropped.
    """

    exit_code = EXIT_UNREACHABLE


class Interrupted(CliError):
    """
    The user interrupted barto-cli (Ctrl-C) while it waited.
    """

    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")


class RemoteError(CliError):
    """
    The server answered a request with an C{error}.

    @ivar code: the error code (C{not-found}, C{forbidden}, ...).
    """

    exit_code = EXIT_REMOTE

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class UsageError(CliError):
    """
    A problem with the command line or the config, found before any
    request is sent.
    """

    exit_code = EXIT_USAGE


def bearer(endpoint: EndpointConfig) -> str | None:
    """
    The bearer token to present: C{token} if set, else C{api_key}.
    """
    secret = endpoint.token or endpoint.api_key
    return secret.reveal() if secret is not None else None


def cli_url(endpoint: EndpointConfig, name: str) -> str:
    """
    The URL of the CLI endpoint for the client C{name}.
    """
    path = wire.CLI_PATH.decode("ascii")
    return f"{endpoint.url_base}{path}?name={quote(name, safe='')}"


class Session:
    """
    An open CLI connection: requests by id, answers and events.
    """

    def __init__(
        self,
        protocol: _CliProtocol,
        url: str,
        deadline: _Deadline,
    ) -> None:
        """
        @param protocol: the open WebSocket.
        @param url: the server's URL, for messages.
        @param deadline: the timeout that ends with the first answer.
        """
        self._protocol = protocol
        self._url = url
        self._deadline = deadline
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._closed: CliError | None = None
        protocol.session = self

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        on_event: EventHandler | None = None,
    ) -> Any:
        """
        Call C{method} and wait for its result.

        @param on_event: gets each C{event} of a stream, in order.
        @raise RemoteError: the server answered with an error.
        @raise Unreachable: the connection failed or the time ran out.
        """
        if self._closed is not None:
            raise self._closed

        request_id = self._next_id
        self._next_id += 1
        pending = _Pending(on_event)
        self._pending[request_id] = pending
        arguments = dict(params or {})
        message = wire.Request(id=request_id, method=method, params=arguments)
        self._protocol.sendMessage(wire.encode(message).encode("utf-8"))
        log.debug("request {id}: {method}", method=method, id=request_id)
        result = await pending.answer
        return result

    def close(self, reason: CliError | None = None) -> None:
        """
        Close the connection (normal closure); pending requests fail with
        C{reason}.
        """
        self.cancel_timeout()
        closed = Unreachable(f"connection to {self._url} closed")
        self.fail_all(reason or closed)
        self._protocol.sendClose(wire.CLOSE_NORMAL)

    def cancel_timeout(self) -> None:
        """
        Stop the timeout that covers connecting and the first answer.
        """
        self._deadline.cancel()

    def received(self, payload: bytes | str) -> None:
        """
        Route one frame from the server to the request it answers.
        """
        try:
            limit = MAX_ANSWER_BYTES
            message = wire.decode(payload, wire.TO_CLI, max_bytes=limit)
        except wire.WireError as error:
            self.fail_all(Unreachable(f"bad answer from {self._url}: {error}"))
            self._protocol.sendClose(wire.CLOSE_BAD_PAYLOAD)
            return

        if isinstance(message, wire.Error) and message.id is None:
            self.fail_all(RemoteError(message.code, message.message))
            return

        if not isinstance(message, (wire.Event, wire.Response, wire.Error)):
            return
        pending = self._pending.get(message.id or 0)
        if pending is None:
            log.debug("ignored an answer to no request: {m!r}", m=message)
            return

        self.cancel_timeout()
        if isinstance(message, wire.Event):
            if not pending.event(message.event):
                self._pending.pop(message.id, None)
            return

        self._pending.pop(message.id or 0, None)
        if isinstance(message, wire.Response):
            pending.answer.callback(message.result)
        else:
            failure = RemoteError(message.code, message.message)
            pending.answer.errback(Failure(failure))

    def fail_all(self, error: CliError) -> None:
        """
        Fail every pending request with C{error}; later ones fail too.
        """
        if self._closed is None:
            self._closed = error
        pending, self._pending = self._pending, {}
        for each in pending.values():
            if not each.answer.called:
                each.answer.errback(Failure(error))


class _Pending:
    """
    One request waiting for its answer.
    """

    def __init__(self, on_event: EventHandler | None) -> None:
        self.answer: Deferred[Any] = Deferred()
        self._on_event = on_event

    def event(self, event: Mapping[str, Any]) -> bool:
        """
        Hand an event to the request's callback, if it has one.

        @return: C{False} when the callback failed (writing to a closed
            pipe, say): the request then fails with that error.
        """
        if self._on_event is None or self.answer.called:
            return True
        try:
            self._on_event(event)
        except Exception:
            self.answer.errback(Failure())
            return False
        return True


class _CliProtocol(WebSocketClientProtocol):
    """
    The WebSocket of one CLI session.

    C{opened} fires with the protocol when the handshake is done, or
    fails with an L{Unreachable} that says why the connection failed.
    """

    session: Session | None = None
    opened: Deferred[_CliProtocol]
    url: str = ""
    _lost: Failure | None = None

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        The upgrade succeeded; check the subprotocol.
        """
        if response.protocol != wire.SUBPROTOCOL:
            self._fail(f"{self.url} does not speak {wire.SUBPROTOCOL}")
            self.dropConnection(abort=True)

    def onOpen(self) -> None:
        """
        The session is open.
        """
        if not self.opened.called:
            self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand a frame to the session.
        """
        if self.session is not None:
            self.session.received(payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Remember why the connection ended, for L{onClose}.
        """
        self._lost = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str) -> None:
        """
        The connection ended: fail whatever still waits, saying why.
        """
        unclean = self.wasNotCleanReason
        why = _close_reason(self.url, self._lost, unclean, code, reason)
        self._fail(why)

    def abort(self, error: Unreachable) -> None:
        """
        Give up on the connection: fail everything with C{error} and drop
        it.
        """
        self._fail(error)
        self.dropConnection(abort=True)

    def _fail(self, why: str | Unreachable) -> None:
        """
        Fail the opening, or every pending request, with C{why}.
        """
        error = why if isinstance(why, Unreachable) else Unreachable(why)
        if not self.opened.called:
            self.opened.errback(Failure(error))
        elif self.session is not None:
            self.session.fail_all(error)


class _CliFactory(WebSocketClientFactory):
    """
    Builds the one L{_CliProtocol} of a session.
    """

    protocol = _CliProtocol

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        protocols = [wire.SUBPROTOCOL]
        super().__init__(url, protocols=protocols, headers=dict(headers))
        self.setProtocolOptions(
            utf8validateIncoming=False,
            maxMessagePayloadSize=MAX_ANSWER_BYTES,
            maxFramePayloadSize=MAX_ANSWER_BYTES,
            autoPingInterval=10,
            autoPingTimeout=30,
        )
        self.opened: Deferred[_CliProtocol] = Deferred()

    def buildProtocol(self, addr: object) -> _CliProtocol:
        """
        The session's protocol, wired to L{opened}.
        """
        protocol = _CliProtocol()
        protocol.factory = self
        protocol.opened = self.opened
        protocol.url = urlsplit(self.url)._replace(query="").geturl()
        return protocol


def _close_reason(
    url: str,
    lost: Failure | None,
    unclean: str | None,
    code: int | None,
    reason: str | None,
) -> str:
    """
    One line that says why the connection to C{url} ended.
    """
    if unclean and "upgrade failed [401]" in unclean:
        return f"authentication refused by {url} (HTTP 401)"
    if unclean and "upgrade failed [" in unclean:
        return f"{url} refused the connection: {unclean}"
    if lost is not None and lost.check(SSL.Error):
        return f"TLS handshake with {url} failed: {_ssl_detail(lost)}"
    if code is not None and code != wire.CLOSE_NORMAL:
        return f"{url} closed the connection ({code}: {reason or 'no reason'})"
    return f"connection to {url} lost"


def _ssl_detail(lost: Failure) -> str:
    """
    The most telling part of an OpenSSL error.
    """
    for args in getattr(lost.value, "args", ()):
        for entry in args if isinstance(args, list) else ():
            if isinstance(entry, tuple) and entry:
                return str(entry[-1])
    return str(lost.value) or "unknown error"


def _endpoint(
    reactor: Any, config: EndpointConfig, timeout: float
) -> IStreamClientEndpoint:
    """
    The TCP (or TLS, for C{wss}) endpoint of the server.

    @raise UsageError: a TLS file of the config cannot be used.
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, config.host, config.port, timeout=max(timeout, 0.1)
    )
    if config.prefix != "wss":
        return endpoint

    try:
        creator = client_context_factory(
            config.host, config.ca_cert, config.client_cert, config.client_key
        )
    except TLSConfigError as error:
        raise UsageError(str(error)) from None
    return wrapClientTLS(creator, endpoint)


class _Deadline:
    """
    The one timeout of a session: connecting and the first answer.
    """

    def __init__(
        self, reactor: IReactorTime, seconds: float, error: Unreachable
    ) -> None:
        """
        @param error: what everything waiting fails with on expiry.
        """
        self.error = error
        self.expired = False
        self._actions: list[Callable[[Unreachable], object]] = []
        self._call = reactor.callLater(seconds, self._expire)

    def on_expiry(self, action: Callable[[Unreachable], object]) -> None:
        """
        Call C{action} with L{error} if the time runs out.
        """
        self._actions.append(action)

    def cancel(self) -> None:
        """
        Stop the timeout.
        """
        if self._call.active():
            self._call.cancel()

    def _expire(self) -> None:
        self.expired = True
        for action in self._actions:
            action(self.error)


async def connect(
    reactor: IReactorTime,
    config: EndpointConfig,
    name: str,
    timeout: float,
) -> Session:
    """
    Open a CLI session with the server of C{config}.

    The timeout started here keeps running until the first answer to a
    request arrives (see L{Session.cancel_timeout}).

    @param name: the client's name, sent in the URL for the server's log.
    @param timeout: seconds for connecting and the first answer.
    @raise Unreachable: the server cannot be reached, refused the TLS
        handshake or the credentials, or the time ran out.
    @raise UsageError: a TLS file of the config cannot be used.
    """
    url = cli_url(config, name)
    shown = urlsplit(url)._replace(query="").geturl()
    token = bearer(config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    factory = _CliFactory(url, headers)
    endpoint = _endpoint(reactor, config, timeout)
    expired = Unreachable(f"no answer from {shown} within {timeout:g} s")
    deadline = _Deadline(reactor, timeout, expired)

    connecting = endpoint.connect(factory)
    deadline.on_expiry(lambda error: connecting.cancel())
    try:
        protocol = typing.cast(_CliProtocol, await connecting)
    except Exception as error:
        deadline.cancel()
        if deadline.expired:
            raise expired from None
        why = _why(error)
        raise Unreachable(f"cannot connect to {shown}: {why}") from None

    deadline.on_expiry(lambda error: protocol.abort(error))
    try:
        await factory.opened
    except Unreachable:
        deadline.cancel()
        raise

    return Session(protocol, shown, deadline)


def _why(error: BaseException) -> str:
    """
    A connection error in a few words.
    """
    if isinstance(error, DNSLookupError):
        return "host name not found"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__
