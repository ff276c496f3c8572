"""
C{twistd bartos}: the server's options and its service.

C{makeService} checks the store first (migrating it to the newest schema
and reading what a restart needs: the schedules' last slots and the runs
not over yet) on a direct connection, before the reactor runs, so a store
that cannot be opened stops the program with a clear message. It then
returns a L{BartosService}: the store, the scheduler, the listeners, a
farewell that closes worker connections when the server stops and, with
C{[local_worker]}, a worker in this process (L{barto.server.local}).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

import barto
import barto.server.clicommands
from barto import logs, wire
from barto.config import ConfigError, ServerConfig, load_server_config
from barto.server.cliapi import CliFactory, ServerState
from barto.server.local import (
    PRIVATE_HOST,
    LocalWorker,
    LocalWorkerError,
    loopback_address,
    open_spool,
    worker_config,
)
from barto.server.runs import EventBus, RunLedger
from barto.server.scheduler import Scheduler
from barto.server.site import make_site
from barto.server.store import (
    Store,
    StoreStartError,
    open_direct,
    run_direct,
    thdMarks,
    thdMigrate,
    thdOpenRuns,
)
from barto.server.workers import Gate, WorkerFactory, WorkerRegistry
from barto.tls import TLSConfigError, server_context_factory

log = Logger()

FAREWELL_TIMEOUT = 3.0
"""Seconds a stopping server waits for worker connections to close."""


class Options(logs.ProgramOptions):
    """
    The command line of C{twistd bartos}.
    """

    program = "bartos"
    synopsis = "[options]"
    longdesc = (
        "The barto server: fires every schedule's runs at their time, sends"
        " them to the workers and stores what comes back."
    )
    optFlags = [["migrate", None, "Apply the store schema and exit."]]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = None

    def postOptions(self) -> None:
        """
        Load and check the config; a bad one exits 2 with one line.
        """
        try:
            self["config"] = load_server_config(self["config-absolute-path"])
        except ConfigError as error:
            self.fail(str(error), error.exit_code)
        logs.claim_twistd_logging(self)


def prepare_store(
    config: ServerConfig,
    now: float,
) -> tuple[Any, Any, list[int]]:
    """
    Migrate the store and read what a restart needs.

    @param now: unix seconds, recorded with each schema version applied.
    @raise StoreStartError: the store cannot be opened or migrated.
    @return: C{(marks, open_runs, versions_applied)}.
    """
    connection, dialect = open_direct(config)
    try:
        applied = run_direct(connection, thdMigrate, dialect, int(now * 1e6))
        marks = run_direct(connection, thdMarks, dialect)
        rows = run_direct(connection, thdOpenRuns, dialect)
    except StoreStartError:
        raise
    except Exception as error:
        raise StoreStartError(f"cannot prepare the store: {error}") from None
    finally:
        connection.close()
    return marks, rows, applied


class Farewell(service.Service):
    """
    Closes every worker connection (1001) when the server stops, so
    workers reconnect to the next one, and waits (at most
    L{FAREWELL_TIMEOUT} seconds) until they are gone.
    """

    def __init__(self, registry: WorkerRegistry) -> None:
        self.registry = registry

    def stopService(self) -> defer.Deferred[None]:
        """
        Close the worker connections.
        """
        super().stopService()
        reason = "server shutting down"
        gone = self.registry.close_all(wire.CLOSE_GOING_AWAY, reason)
        timeout = self.registry.clock.callLater(FAREWELL_TIMEOUT, gone.cancel)

        def settled(result: object) -> None:
            if timeout.active():
                timeout.cancel()

        return gone.addBoth(settled)


class BartosService(service.MultiService):
    """
    The whole server. Stopping it stops the children in reverse order:
    the local worker, worker connections, listeners, scheduler, then the
    store (which writes what it holds before closing its pool).

    @ivar state: what CLI handlers see.
    """

    def __init__(
        self,
        state: ServerState,
        gate: Gate,
        config_path: str | None,
    ) -> None:
        super().__init__()
        self.state = state
        self.gate = gate
        self.config_path = config_path
        self._previous_hup: Any = None

    def startService(self) -> None:
        """
        Start the children and take SIGHUP for reloads.
        """
        super().startService()
        if hasattr(signal, "SIGHUP"):
            self._previous_hup = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> defer.Deferred[None]:
        """
        Give SIGHUP back and stop the children.
        """
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        log.info("bartos stopping")
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        """
        Stop the children one after the other, newest first, each once the
        one before has finished stopping.
        """
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=child)

    def _hangup(self, number: int, frame: FrameType | None) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.reload)  # type: ignore[attr-defined]

    def reload(self) -> bool:
        """
        Read the config again and put its schedules (and credentials) in
        force; a config that fails to load is logged and changes nothing.

        @return: whether the new config was taken.
        """
        try:
            config = load_server_config(self.config_path)
        except ConfigError as error:
            log.error(
                "reload failed, the schedules in force stay: {error}",
                error=str(error),
            )
            return False

        for warning in config.warnings:
            log.warn("config: {warning}", warning=warning)
        old = self.state.config
        if (
            config.listen,
            config.mariadb,
            config.sqlite_path,
            config.local_worker,
        ) != (old.listen, old.mariadb, old.sqlite_path, old.local_worker):
            log.warn("[listen], store and worker changes need a restart")
        self.state.config = config
        self.gate.update(config)
        self.state.scheduler.reload(config.schedules)
        log.info("configuration reloaded from {source}", source=config.source)
        return True


def build_service(
    config: ServerConfig,
    *,
    reactor: IReactorTime,
    marks: Any,
    open_runs: Sequence[Any],
    config_path: str | None,
) -> BartosService:
    """
    Wire the server's parts together.

    @param marks: the schedules' last handled slots, from the store.
    @param open_runs: the runs not over yet, from the store.
    @raise TLSConfigError: the TLS listener's files cannot be used.
    """
    events = EventBus()
    store = Store.from_config(config, reactor)
    ledger = RunLedger(
        store,
        clock=reactor,
        events=events,
        lost_grace=config.runs.lost_grace,
        dispatch_retry=config.runs.dispatch_retry,
    )
    registry = WorkerRegistry(
        ledger,
        store,
        clock=reactor,
        max_message_bytes=config.websocket.max_message_bytes,
    )
    scheduler = Scheduler(ledger, config.schedules, clock=reactor, marks=marks)
    ledger.restore(open_runs)

    state = ServerState(
        store=store,
        workers=registry,
        scheduler=scheduler,
        ledger=ledger,
        events=events,
        config=config,
        clock=reactor,
        started_at=reactor.seconds(),
    )
    gate = Gate(config)
    site = make_site(
        WorkerFactory(registry, gate, config),
        CliFactory(state, gate),
    )

    top = BartosService(state, gate, config_path)
    store.setServiceParent(top)
    scheduler.setServiceParent(top)
    listen = config.listen
    if listen.plain:
        internet.TCPServer(
            listen.port,
            site,
            interface=listen.ip,
        ).setServiceParent(top)
    if listen.tls is not None:
        tls = listen.tls
        context = server_context_factory(
            tls.cert_file_path, tls.key_file_path, tls.client_ca_cert
        )
        internet.SSLServer(
            tls.port,
            site,
            context,
            interface=tls.ip,
        ).setServiceParent(top)
    Farewell(registry).setServiceParent(top)
    if config.local_worker is not None:
        local_worker(config, reactor, gate, state).setServiceParent(top)
    return top


def local_worker(
    config: ServerConfig,
    reactor: Any,
    gate: Gate,
    state: ServerState,
) -> LocalWorker:
    """
    The worker of C{[local_worker]}, admitted by C{gate} with a token of
    its own; through the plain listener, else a private one on loopback.

    @raise LocalWorkerError: its spool cannot be opened.
    """
    local = config.local_worker
    assert local is not None
    address = loopback_address(config.listen)
    private_site = None
    if address is None:
        gate = Gate(config, admitted_only=True)
        private_site = make_site(
            WorkerFactory(state.workers, gate, config),
            CliFactory(state, gate),
        )
        address = (PRIVATE_HOST, 0)
    token = gate.admit(local.name)
    worker = worker_config(local, *address, token, config.source)
    return LocalWorker(
        worker,
        reactor,
        spool=open_spool(local),
        private_site=private_site,
    )


def makeService(options: Options) -> service.IService:
    """
    The C{bartos} service for parsed C{options}.
    """
    from twisted.internet import reactor

    config: ServerConfig = options["config"]
    try:
        observer = logs.build_observer(
            config.tracing,
            verbose=options["verbose"],
            quiet=options["quiet"],
            stdout=bool(options["enable-std-output"]),
            path=options["tracing-absolute-path"],
        )
    except ConfigError as error:
        logs.exit_with("bartos", str(error), error.exit_code)
    logs.set_twistd_observer(observer)
    for warning in config.warnings:
        log.warn("config: {warning}", warning=warning)

    clock: IReactorTime = reactor  # type: ignore[assignment]
    try:
        marks, rows, applied = prepare_store(config, clock.seconds())
    except StoreStartError as error:
        logs.exit_with("bartos", str(error), 1)

    if options["migrate"]:
        versions = ", ".join(str(version) for version in applied) or "none"
        sys.stdout.write(f"bartos: schema versions applied: {versions}\n")
        raise SystemExit(0)

    log.info(
        "bartos {version} starting: store {dialect}, {count} schedules",
        version=barto.__version__,
        dialect="mariadb" if config.mariadb else "sqlite",
        count=sum(len(items) for items in config.schedules.values()),
    )
    try:
        return build_service(
            config,
            reactor=clock,
            marks=marks,
            open_runs=rows,
            config_path=options["config-absolute-path"],
        )
    except (TLSConfigError, LocalWorkerError) as error:
        logs.exit_with("bartos", str(error), 2)
