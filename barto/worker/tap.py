"""
C{twistd bartoc}: the worker's command line and its service.

The options are the original's (C{-v}, C{-q}, C{-e}, C{-c}, C{-t}, C{-r});
a configuration that cannot be used is one line on standard error and
exit status 2. L{makeService} opens the spool and returns a
L{WorkerService}, which keeps the session connected and, when it stops,
gives running commands the shutdown grace before the connection closes.

A worker that runs out of connection attempts stops the reactor and the
process exits with status 1, so that a service manager restarts it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from barto import __version__, logs
from barto.config import ConfigError, WorkerConfig, load_worker_config
from barto.tls import TLSConfigError
from barto.worker.client import (
    WorkerClient,
    bearer_token,
    make_endpoint,
    worker_url,
)
from barto.worker.facts import host_facts
from barto.worker.guard import GroupGuard
from barto.worker.session import WorkerSession
from barto.worker.spool import Spool

log = Logger()

# The exit status of a worker that gave up connecting.
EXIT_GAVE_UP = 1


class Options(logs.ProgramOptions):
    """
    The options of C{twistd bartoc}.

    @ivar config: the loaded configuration, after L{postOptions}.
    """

    synopsis = "[options]"
    longdesc = (
        "Connect to bartos, run the commands it sends and report their"
        " output and exit status back."
    )

    program = "bartoc"
    optParameters = [
        [
            "redb-absolute-path",
            "r",
            None,
            "The spool file [default: $XDG_DATA_HOME/bartoc/bartoc.sqlite3].",
        ],
    ]

    config: WorkerConfig

    def postOptions(self) -> None:
        """
        Load the configuration; exit 2 with one line if it is unusable.
        """
        try:
            self.config = load_worker_config(
                self["config-absolute-path"],
                overrides={"spool_path": self["redb-absolute-path"]},
            )
        except ConfigError as error:
            self.fail(str(error), error.exit_code)
        logs.claim_twistd_logging(self)


def _exit_at_interpreter_end(status: int) -> None:
    """
    Make the process exit with C{status} once twistd has cleaned up.

    twistd ends with status 0 whatever stopped the reactor; this runs
    after it (at interpreter exit) and replaces that status.
    """

    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(exit_now)


class WorkerService(Service):
    """
    The running worker: its session, its connection, its spool.

    @ivar session: the session, which owns the runner.
    @ivar client: the connection to C{bartos}.
    """

    def __init__(
        self,
        config: WorkerConfig,
        reactor: Any,
        *,
        spool: Spool,
        on_exit: Callable[[int], None],
        environ: Mapping[str, str] | None = None,
        guard: GroupGuard | None = None,
    ) -> None:
        """
        @param config: the worker's configuration.
        @param reactor: spawns processes, keeps time, connects.
        @param spool: the opened spool; closed when the service stops.
        @param on_exit: called with an exit status when the worker must
            end the process (it gave up connecting).
        @param environ: the environment commands start from.
        @param guard: stops the commands if the worker dies; started and
            closed with the service.
        """
        self.spool = spool
        self._on_exit = on_exit
        self.guard = guard
        self.session = WorkerSession(
            name=config.name,
            reactor=reactor,
            runner_config=config.runner,
            spool=spool,
            host=host_facts(),
            missed_tick=config.missed_tick,
            environ=environ,
            guard=guard,
        )
        self.client = WorkerClient(
            reactor=reactor,
            session=self.session,
            endpoint=make_endpoint(reactor, config.bartos, config.client_timeout),
            url=worker_url(config.bartos, config.name),
            token=bearer_token(config.bartos),
            timeout=config.client_timeout,
            retry_count=config.retry_count,
            on_give_up=self._gave_up,
        )

    def startService(self) -> None:
        """
        Close runs a previous process left, then connect.
        """
        super().startService()
        if self.guard is not None:
            self.guard.start()
        self.session.start()
        self.client.startService()

    def stopService(self) -> Deferred[None]:
        """
        Let the runs finish (or stop them), then disconnect and close the
        spool.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """
        The steps of L{stopService}, in order.
        """
        await self.session.stop()
        if self.guard is not None:
            self.guard.close()
        if self.client.running:
            await self.client.stopService()
        self.spool.close()
        log.info("bartoc stopped")

    def _gave_up(self, failures: int) -> None:
        """
        The client ran out of attempts: end the process, non-zero.
        """
        self._on_exit(EXIT_GAVE_UP)


def _ignore_sighup(reactor: Any) -> None:
    """
    SIGHUP does not reload anything: log that, instead of dying of it.
    """
    threads = IReactorFromThreads(reactor)

    def received(number: int, frame: FrameType | None) -> None:
        threads.callFromThread(
            log.info,
            "SIGHUP ignored: restart bartoc to apply a new configuration",
        )

    signal.signal(signal.SIGHUP, received)


def makeService(options: Options) -> IService:
    """
    Build the worker from parsed options.
    """
    from twisted.internet import reactor

    config = options.config
    try:
        logs.set_twistd_observer(
            logs.build_observer(
                config.tracing,
                verbose=options["verbose"],
                quiet=options["quiet"],
                stdout=bool(options["enable-std-output"]),
                path=options["tracing-absolute-path"],
            )
        )
    except ConfigError as error:
        logs.exit_with("bartoc", str(error), error.exit_code)
    for warning in config.warnings:
        log.warn("{warning}", warning=warning)

    path = config.spool_file()
    try:
        spool = Spool(path, max_bytes=config.spool_max_bytes)
    except (OSError, sqlite3.Error) as error:
        logs.exit_with("bartoc", f"cannot open the spool {str(path)!r}: {error}", 2)

    def end_process(status: int) -> None:
        _exit_at_interpreter_end(status)
        reactor.stop()

    try:
        service = WorkerService(
            config,
            reactor,
            spool=spool,
            on_exit=end_process,
            guard=GroupGuard(config.runner.kill_grace),
        )
    except TLSConfigError as error:
        spool.close()
        logs.exit_with("bartoc", str(error), 2)

    _ignore_sighup(reactor)
    log.info(
        "bartoc {version} starting as {name}, spool {spool}",
        version=__version__,
        name=config.name,
        spool=str(path),
    )
    return service
