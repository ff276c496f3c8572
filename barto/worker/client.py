"""
The connection to C{bartos}: a WebSocket client that keeps reconnecting.

L{WorkerClient} keeps one connection open with Twisted's C{ClientService}
and carries a L{WorkerSession}'s frames over it. When to try again is
L{ReconnectPolicy}'s call: capped exponential backoff with jitter, reset
when the server welcomes a session (not merely when TCP connects, so a
server that refuses the handshake is not hammered), and a give-up after
C{retry_count} consecutive failed attempts (0: never give up).

Both sides ping (Autobahn's auto-ping): a connection that answers no ping
within C{client_timeout} is dropped, and so is one that is not welcomed
within it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from autobahn.websocket.types import ConnectionResponse
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from barto import __version__, wire
from barto.config import EndpointConfig
from barto.tls import client_context_factory
from barto.worker.session import WorkerSession

log = Logger()

# Backoff between failed attempts: 1 s, doubling, at most 60 s, each
# delay drawn between half and all of that. After a welcomed connection
# drops, the first attempt comes within RECONNECT_SPREAD seconds.
INITIAL_DELAY = 1.0
MAX_DELAY = 60.0
FACTOR = 2.0
RECONNECT_SPREAD = 1.0

# Autobahn's ping and handshake timers round their deadline down to a
# whole second, so a shorter one may fire at once: none is set shorter.
MIN_AUTOBAHN_TIMER = 2.0


class ReconnectPolicy:
    """
    When to try to connect again, and when to stop trying.

    An instance is C{ClientService}'s C{retryPolicy}. It keeps its own
    count of consecutive failed attempts: C{ClientService} resets its
    count when TCP connects, this one only when the server welcomes the
    session.

    @ivar failures: consecutive failed attempts so far.
    """

    def __init__(
        self,
        retry_count: int,
        *,
        clock: IReactorTime,
        give_up: Callable[[int], None],
        random: Callable[[], float] = random.random,
        initial: float = INITIAL_DELAY,
        maximum: float = MAX_DELAY,
        factor: float = FACTOR,
    ) -> None:
        """
        @param retry_count: consecutive failed attempts before giving up;
            0 never gives up.
        @param clock: schedules the give-up.
        @param give_up: called, from the clock, with the count of failed
            attempts when they reach C{retry_count}.
        @param random: a number in [0, 1) for the jitter.
        """
        self.failures = 0
        self._retry_count = retry_count
        self._clock = clock
        self._give_up = give_up
        self._random = random
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._welcomed = False
        self._gave_up = False

    def welcomed(self) -> None:
        """
        The server welcomed a session: the next drop starts a new count.
        """
        self._welcomed = True
        self.failures = 0

    def delay(self, failures: int) -> float:
        """
        The jittered backoff after C{failures} failed attempts in a row.
        """
        base = min(self._maximum, self._initial * self._factor ** (failures - 1))
        return base / 2 + base / 2 * self._random()

    def __call__(self, attempt: int) -> float:
        """
        The seconds to wait before the next attempt.

        @param attempt: C{ClientService}'s own count; not used.
        """
        if self._welcomed:
            self._welcomed = False
            return RECONNECT_SPREAD * self._random()

        self.failures += 1
        if self._retry_count and self.failures >= self._retry_count:
            if not self._gave_up:
                self._gave_up = True
                self._clock.callLater(0, self._give_up, self.failures)
        return self.delay(self.failures)


class WorkerClientProtocol(WebSocketClientProtocol):
    """
    One WebSocket connection carrying a L{WorkerSession}.

    @ivar closed: fires (soon after) the connection closed.
    """

    factory: WorkerClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.closed: Deferred[None] = Deferred()
        self._attached = False
        self._welcome_timer: IDelayedCall | None = None

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        The upgrade succeeded.
        """
        log.debug("upgraded to {protocol}", protocol=response.protocol)

    def onOpen(self) -> None:
        """
        The WebSocket is open: the session says hello.
        """
        factory = self.factory
        factory.current = self
        self._welcome_timer = factory.clock.callLater(
            factory.timeout, self._not_welcomed
        )
        self._attached = True
        factory.session.attach(self._send_frame, self._welcomed)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        A frame from the server; binary frames are not part of barto.v1.
        """
        if isBinary:
            log.warn("ignored a binary frame of {size} bytes", size=len(payload))
            return
        self.factory.session.received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection closed (or never opened).
        """
        if self._welcome_timer is not None and self._welcome_timer.active():
            self._welcome_timer.cancel()
        self._welcome_timer = None
        if self.factory.current is self:
            self.factory.current = None
        if self._attached:
            self._attached = False
            self.factory.session.detach()

        log.info(
            "connection to bartos closed: {code} {reason}",
            code=code,
            reason=reason or "",
            clean=wasClean,
        )
        self.factory.clock.callLater(0, self.closed.callback, None)

    def _send_frame(self, frame: bytes) -> None:
        """
        Send one text frame.
        """
        self.sendMessage(frame, isBinary=False)

    def _welcomed(self, welcome: wire.Welcome) -> None:
        """
        The server welcomed the session.
        """
        if self._welcome_timer is not None and self._welcome_timer.active():
            self._welcome_timer.cancel()
        self._welcome_timer = None
        self.factory.policy.welcomed()

    def _not_welcomed(self) -> None:
        """
        No welcome came in time: drop the connection.
        """
        self._welcome_timer = None
        log.warn(
            "no welcome from bartos within {timeout} s; dropping the connection",
            timeout=self.factory.timeout,
        )
        self.dropConnection(abort=True)


class WorkerClientFactory(WebSocketClientFactory):
    """
    Makes L{WorkerClientProtocol}s for one session.

    @ivar current: the open connection, if any.
    """

    protocol = WorkerClientProtocol  # type: ignore[assignment]

    def __init__(
        self,
        url: str,
        *,
        session: WorkerSession,
        policy: ReconnectPolicy,
        timeout: float,
        token: str | None,
        reactor: IReactorTime,
    ) -> None:
        """
        @param url: the worker endpoint's URL, with the name.
        @param session: the session the connections carry.
        @param policy: told when a session is welcomed.
        @param timeout: seconds for a ping's answer, the handshake and the
            welcome.
        @param token: the bearer token, if any.
        @param reactor: the reactor the connections run on.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else None
        super().__init__(
            url,
            protocols=[wire.SUBPROTOCOL],
            useragent=f"bartoc/{__version__}",
            headers=headers,
            reactor=reactor,
        )
        self.setProtocolOptions(
            autoPingInterval=max(timeout / 2, MIN_AUTOBAHN_TIMER),
            autoPingTimeout=max(timeout / 2, MIN_AUTOBAHN_TIMER),
            openHandshakeTimeout=max(timeout, MIN_AUTOBAHN_TIMER),
            closeHandshakeTimeout=MIN_AUTOBAHN_TIMER,
            maxMessagePayloadSize=wire.DEFAULT_MAX_MESSAGE_BYTES,
        )
        self.noisy = False
        self.session = session
        self.policy = policy
        self.timeout = timeout
        self.clock = reactor
        self.current: WorkerClientProtocol | None = None


def worker_url(endpoint: EndpointConfig, name: str) -> str:
    """
    The URL of the worker endpoint for the worker C{name}.
    """
    path = wire.WORKER_PATH.decode()
    return f"{endpoint.url_base}{path}?name={quote(name, safe='')}"


def bearer_token(endpoint: EndpointConfig) -> str | None:
    """
    The bearer token to present: the worker's own token, else the api key.
    """
    secret = endpoint.token or endpoint.api_key
    return secret.reveal() if secret is not None else None


def make_endpoint(
    reactor: Any, endpoint: EndpointConfig, timeout: float
) -> IStreamClientEndpoint:
    """
    The client endpoint for C{[bartos]}: TCP, with TLS for C{wss}.

    @raise barto.tls.TLSConfigError: a certificate or key is unusable.
    """
    tcp = HostnameEndpoint(reactor, endpoint.host, endpoint.port, timeout=timeout)
    if endpoint.prefix == "ws":
        return tcp
    options = client_context_factory(
        endpoint.host,
        endpoint.ca_cert,
        endpoint.client_cert,
        endpoint.client_key,
    )
    return wrapClientTLS(options, tcp)


@implementer(IStreamClientEndpoint)
class _LoggedEndpoint:
    """
    An endpoint whose failed connection attempts are logged.
    """

    def __init__(self, wrapped: IStreamClientEndpoint, url: str) -> None:
        self._wrapped = wrapped
        self._url = url

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        log.info("connecting to {url}", url=self._url)
        connecting = self._wrapped.connect(protocolFactory)

        def failed(reason: Failure) -> Failure:
            log.warn(
                "cannot connect to {url}: {error}",
                url=self._url,
                error=reason.getErrorMessage(),
            )
            return reason

        connecting.addErrback(failed)
        return connecting


class WorkerClient(Service):
    """
    Keeps a L{WorkerSession} connected to C{bartos}.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        session: WorkerSession,
        endpoint: IStreamClientEndpoint,
        url: str,
        token: str | None,
        timeout: float,
        retry_count: int,
        on_give_up: Callable[[int], None],
        random: Callable[[], float] = random.random,
    ) -> None:
        """
        @param reactor: provides L{IReactorTime}; the connections use it.
        @param session: the session to carry.
        @param endpoint: where C{bartos} listens (see L{make_endpoint}).
        @param url: the worker endpoint's URL (see L{worker_url}).
        @param token: the bearer token, if any.
        @param timeout: the C{client_timeout}.
        @param retry_count: consecutive failed attempts before giving up;
            0 never gives up.
        @param on_give_up: called with the count of failed attempts after
            this service stopped trying.
        @param random: a number in [0, 1) for the jitter.
        """
        self._on_give_up = on_give_up
        self.policy = ReconnectPolicy(
            retry_count, clock=reactor, give_up=self._give_up, random=random
        )
        self.factory = WorkerClientFactory(
            url,
            session=session,
            policy=self.policy,
            timeout=timeout,
            token=token,
            reactor=reactor,
        )
        self._client = ClientService(
            _LoggedEndpoint(endpoint, url),
            self.factory,
            retryPolicy=self.policy,
            clock=reactor,
        )

    def startService(self) -> None:
        """
        Start connecting.
        """
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the connection (WebSocket close 1000, waiting for the
        server's answer) and stop reconnecting.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """
        The steps of L{stopService}, in order.
        """
        current = self.factory.current
        if current is not None:
            current.sendClose(wire.CLOSE_NORMAL, "worker shutting down")
            await current.closed
        await self._client.stopService()

    def _give_up(self, failures: int) -> None:
        """
        C{retry_count} attempts in a row failed: stop trying.
        """
        if not self.running:
            return
        log.error(
            "giving up after {failures} failed attempts to connect",
            failures=failures,
        )
        self.stopService()
        self._on_give_up(failures)
