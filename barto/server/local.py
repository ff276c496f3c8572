"""
The worker inside C{bartos} (C{[local_worker]}): single-host mode.

The local worker is C{bartoc}'s own L{WorkerService} (session, spool,
reconnecting client) connected over loopback to this process's own
listener, so its records get exactly the guarantees of a remote worker's:
spooled before they are sent, deleted only after the server's ack, sent
again after a reconnect or a restart.

It authenticates with a token the server's L{Gate} made for it
(L{Gate.admit}): random, held only in memory, good for the role
C{worker} under the local worker's name only, and accepted whether or
not the config has C{api_key} or C{[[tokens]]}.

With the plain listener on, the worker connects to it (to its address,
or to loopback when it listens on every address). With the plain
listener off, a TLS connection would have to pass the server's own
certificate checks (a host name, perhaps a client certificate), so the
worker gets a private plain listener on 127.0.0.1 instead, on a port the
system picks, serving only this one worker: its gate admits the local
worker's token and nothing else.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from barto.config import (
    EndpointConfig,
    ListenConfig,
    LocalWorkerConfig,
    Secret,
    WorkerConfig,
)
from barto.worker.guard import GroupGuard
from barto.worker.spool import Spool
from barto.worker.tap import WorkerService

log = Logger()

PRIVATE_HOST = "127.0.0.1"
"""Where the private listener of a TLS-only server listens."""


class LocalWorkerError(Exception):
    """
    The local worker cannot be set up (its spool cannot be opened).
    """


def loopback_address(listen: ListenConfig) -> tuple[str, int] | None:
    """
    Where the local worker reaches the plain listener.

    @return: C{(host, port)}: the listener's address, or the loopback
        address of its family when it listens on every address; C{None}
        when the plain listener is off.
    """
    if not listen.plain:
        return None
    try:
        address = ipaddress.ip_address(listen.ip)
    except ValueError:
        return listen.ip, listen.port
    if address.is_unspecified:
        loopback = "::1" if address.version == 6 else "127.0.0.1"
        return loopback, listen.port
    return listen.ip, listen.port


def worker_config(
    local: LocalWorkerConfig,
    host: str,
    port: int,
    token: str,
    source: str,
    environ: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """
    The C{bartoc} configuration of the local worker.

    It never gives up connecting (C{retry_count = 0}): the server it
    connects to is its own process.
    """
    bartos = EndpointConfig(host=host, port=port, token=Secret(token))
    return WorkerConfig(
        name=local.name,
        retry_count=0,
        missed_tick=local.missed_tick,
        bartos=bartos,
        runner=local.runner,
        spool_path=str(local.spool_file(environ)),
        spool_max_bytes=local.spool_max_bytes,
        source=source,
        warnings=(),
    )


def open_spool(
    local: LocalWorkerConfig, environ: Mapping[str, str] | None = None
) -> Spool:
    """
    Open (or create) the local worker's spool.

    @raise LocalWorkerError: it cannot be opened.
    """
    path = local.spool_file(environ)
    try:
        return Spool(path, max_bytes=local.spool_max_bytes)
    except (OSError, sqlite3.Error) as error:
        raise LocalWorkerError(
            f"cannot open the local worker's spool {str(path)!r}: {error}"
        ) from None


class LocalWorker(service.Service):
    """
    A worker in the server's process, connected over loopback.

    Start it after the listener it connects to, stop it before: stopping
    gives running commands the runner's C{shutdown_grace}, sends their
    records and closes the connection, then closes the spool.

    @ivar worker: the running worker, once started.
    @ivar port: the private listener, when there is one and it listens.
    """

    def __init__(
        self,
        config: WorkerConfig,
        reactor: Any,
        *,
        spool: Spool,
        private_site: Site | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param config: the worker's configuration (see L{worker_config}).
        @param reactor: spawns processes, keeps time, listens, connects.
        @param spool: the opened spool; closed when the service stops.
        @param private_site: a site to serve on a private listener at
            C{config.bartos.host} (port chosen by the system) that the
            worker connects to instead of C{config.bartos.port}.
        @param environ: the environment commands start from.
        """
        self.config = config
        self.reactor = reactor
        self.spool = spool
        self.private_site = private_site
        self.environ = environ
        self.worker: WorkerService | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """
        Open the private listener, if any, and start the worker.
        """
        super().startService()
        config = self.config
        if self.private_site is not None:
            self.port = self.reactor.listenTCP(
                0, self.private_site, interface=config.bartos.host
            )
            bound: Any = self.port.getHost()
            config = _with_port(config, bound.port)
        self.worker = WorkerService(
            config,
            self.reactor,
            spool=self.spool,
            on_exit=_gave_up,
            environ=self.environ,
            guard=GroupGuard(config.runner.kill_grace),
        )
        log.info(
            "local worker {worker} starting, connecting to {url}",
            worker=config.name,
            url=config.bartos.url_base,
        )
        self.worker.startService()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop the worker (its runs get the shutdown grace), then the
        private listener.
        """
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """
        The steps of L{stopService}, in order.
        """
        if self.worker is not None and self.worker.running:
            await self.worker.stopService()
        else:
            self.spool.close()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
            self.port = None


def _with_port(config: WorkerConfig, port: int) -> WorkerConfig:
    """
    C{config} with the server's port replaced.
    """
    return replace(config, bartos=replace(config.bartos, port=port))


def _gave_up(status: int) -> None:
    """
    Not expected: the local worker retries forever (C{retry_count = 0}),
    and it never ends the server's process.
    """
    log.error("the local worker stopped connecting ({status})", status=status)
