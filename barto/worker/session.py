"""
The worker session: what a worker says to C{bartos} and does with what it
hears, whatever carries the frames.

L{WorkerSession} outlives connections. A connection L{attaches
<WorkerSession.attach>} a C{send} callable, feeds every frame it receives
to L{WorkerSession.received} and L{detaches <WorkerSession.detach>} when it
closes; the session sends C{hello}, waits for C{welcome}, runs what a
valid C{dispatch} asks, and streams the spooled records to the server
with a bounded window of unacknowledged ones. C{bartoc} attaches its
WebSocket client (L{barto.worker.client}); a server can attach an
in-process link instead to run a local worker.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from barto import __version__, wire
from barto.config import RunnerConfig
from barto.worker.guard import GroupGuard
from barto.worker.output import timestamp
from barto.worker.runner import KillGroup, Runner
from barto.worker.spool import Spool

log = Logger()

# At most this many records, and this many bytes of them, are sent and
# not yet acknowledged; the rest wait in the spool, not in memory.
WINDOW_RECORDS = 1000
WINDOW_BYTES = 8 * 1024 * 1024

Send = Callable[[bytes], None]
OnWelcome = Callable[[wire.Welcome], None]


class WorkerSession:
    """
    A worker's side of the protocol, above any transport.

    @ivar name: the worker's name.
    @ivar spool: where records wait for the server's acknowledgement.
    @ivar runner: the runs going on.
    """

    def __init__(
        self,
        *,
        name: str,
        reactor: IReactorProcess,
        runner_config: RunnerConfig,
        spool: Spool,
        host: wire.HostFacts,
        missed_tick: wire.MissedTick = "Burst",
        version: str = __version__,
        environ: Mapping[str, str] | None = None,
        kill_group: KillGroup = os.killpg,
        guard: GroupGuard | None = None,
    ) -> None:
        """
        @param name: the worker's name, sent in C{hello}.
        @param reactor: runs the commands; it must also provide
            L{IReactorTime}.
        @param runner_config: how commands run.
        @param spool: the worker's spool, opened; the session does not
            close it.
        @param host: the facts sent in C{hello}.
        @param missed_tick: the policy sent in C{hello}.
        @param version: the version sent in C{hello}.
        @param environ: the environment commands start from (less its
            secrets); C{os.environ} when C{None}.
        @param kill_group: signals a process group, like C{os.killpg}.
        @param guard: stops the commands' process groups if the worker
            dies.
        """
        self.name = name
        self.spool = spool
        self._clock = IReactorTime(reactor)
        self._host = host
        self._missed_tick: wire.MissedTick = missed_tick
        self._version = version
        self.runner = Runner(
            reactor,
            runner_config,
            self.record,
            environ=environ,
            kill_group=kill_group,
            guard=guard,
        )
        self._send: Send | None = None
        self._on_welcome: OnWelcome | None = None
        self._welcomed = False
        self._sent = 0
        self._in_flight: dict[int, int] = {}
        self._in_flight_bytes = 0

    @property
    def welcomed(self) -> bool:
        """
        Whether a connection is attached and the server welcomed it.
        """
        return self._welcomed

    @property
    def in_flight(self) -> int:
        """
        How many records were sent on this connection and not acknowledged.
        """
        return len(self._in_flight)

    def start(self) -> None:
        """
        Close the runs a previous process left unfinished.

        A worker that died during a run cannot report how its commands
        ended; each such run gets a C{finished} record in state C{failed}.
        """
        for run, schedule in self.spool.interrupted_runs():
            log.warn(
                "run {run} of {schedule} was cut off when the worker stopped",
                run=run,
                schedule=schedule,
            )
            # Its processes were stopped by the GroupGuard when the
            # worker died (bartoc starts one).
            self.record(
                [
                    wire.Finished(
                        rec=0,
                        run=run,
                        at=timestamp(self._clock.seconds()),
                        state="failed",
                        reason="the worker stopped during the run",
                    )
                ]
            )

    def attach(self, send: Send, on_welcome: OnWelcome | None = None) -> None:
        """
        A connection to the server is open: say C{hello} on it.

        @param send: sends one text frame (UTF-8 bytes) to the server.
        @param on_welcome: called when the server's C{welcome} arrives.
        """
        if self._send is not None:
            self.detach()

        self._send = send
        self._on_welcome = on_welcome
        hello = wire.Hello(
            name=self.name,
            version=self._version,
            host=self._host,
            missed_tick=self._missed_tick,
            running=self.runner.running,
            spooled=self.spool.count(),
        )
        log.info(
            "saying hello: {running} runs going on, {spooled} records spooled",
            running=len(hello.running),
            spooled=hello.spooled,
        )
        send(wire.encode(hello).encode())

    def detach(self) -> None:
        """
        The connection closed: records wait in the spool for the next one.
        """
        self._send = None
        self._on_welcome = None
        self._welcomed = False
        self._sent = 0
        self._in_flight.clear()
        self._in_flight_bytes = 0

    def received(self, payload: str | bytes) -> None:
        """
        Act on one frame from the server; a malformed one is logged and
        ignored.
        """
        try:
            message = wire.decode(payload, wire.TO_WORKER)
        except wire.WireError as error:
            log.warn("ignored a malformed frame from bartos: {error}", error=error)
            return

        if isinstance(message, wire.Error):
            log.warn(
                "bartos reports an error: {code}: {message}",
                code=message.code,
                message=message.message,
            )
        elif isinstance(message, wire.Welcome):
            self._welcome(message)
        elif not self._welcomed:
            log.warn(
                "ignored a {type} frame that came before welcome",
                type=message.TYPE,
            )
        elif isinstance(message, wire.Dispatch):
            self._dispatch(message)
        elif isinstance(message, wire.Cancel):
            self._cancel(message)
        elif isinstance(message, wire.Ack):
            self._ack(message)

    def record(self, records: Sequence[wire.Record]) -> None:
        """
        Spool records and send them when the window allows.

        The runner calls this with every record it makes.
        """
        try:
            added = self.spool.add(records)
        except sqlite3.Error:
            # FIXME: records that cannot be spooled are lost; a full disk
            # should pause the runs instead.
            log.failure(
                "cannot spool {count} records of run {run}",
                count=len(records),
                run=records[0].run if records else "",
            )
            return
        self._pump(added)

    def stop(self) -> Deferred[None]:
        """
        Stop taking runs and wait for those going on (see
        L{Runner.shutdown}).
        """
        return self.runner.shutdown()

    def _welcome(self, welcome: wire.Welcome) -> None:
        """
        The server accepted the session: send everything spooled.
        """
        if self._welcomed or self._send is None:
            log.warn("ignored a repeated welcome")
            return

        self._welcomed = True
        log.info(
            "welcomed by bartos {version}, session {session}",
            version=welcome.version,
            session=welcome.session,
        )
        if self._on_welcome is not None:
            self._on_welcome(welcome)
        self._pump()

    def _dispatch(self, dispatch: wire.Dispatch) -> None:
        """
        Start a run, unless it is going on or was run before.
        """
        run, schedule = dispatch.run, dispatch.schedule
        if self.runner.closing:
            log.warn(
                "run {run} of {schedule} refused: shutting down",
                run=run,
                schedule=schedule,
            )
            return
        if self.runner.is_running(run):
            log.info(
                "run {run} of {schedule} is going on already",
                run=run,
                schedule=schedule,
            )
            return

        try:
            new = self.spool.begin_run(run, schedule, self._clock.seconds())
        except sqlite3.Error:
            log.failure(
                "run {run} of {schedule} refused: spool error",
                run=run,
                schedule=schedule,
            )
            return
        if not new:
            log.info(
                "run {run} of {schedule} was run already",
                run=run,
                schedule=schedule,
            )
            return

        ended = self.runner.start(dispatch)
        ended.addErrback(self._run_failed, dispatch)

    def _run_failed(self, failure: Failure, dispatch: wire.Dispatch) -> None:
        """
        A run broke inside the worker; say so in the log.
        """
        log.failure(
            "run {run} of {schedule} broke",
            failure,
            run=dispatch.run,
            schedule=dispatch.schedule,
        )

    def _cancel(self, cancel: wire.Cancel) -> None:
        """
        Cancel a run, if it is going on.
        """
        if not self.runner.cancel(cancel.run, cancel.reason):
            log.info("cancel of run {run} ignored: not going on", run=cancel.run)

    def _ack(self, ack: wire.Ack) -> None:
        """
        The server stored these records: forget them, send more.
        """
        try:
            self.spool.ack(ack.recs)
        except sqlite3.Error:
            log.failure(
                "cannot delete {count} acknowledged records", count=len(ack.recs)
            )
        for rec in ack.recs:
            self._in_flight_bytes -= self._in_flight.pop(rec, 0)
        log.debug("{count} records acknowledged", count=len(ack.recs))
        self._pump()

    def _pump(self, fresh: Sequence[tuple[int, bytes]] = ()) -> None:
        """
        Send spooled records in order while the window has room.

        @param fresh: records just spooled; sent from memory when nothing
            older is waiting.
        """
        if self._send is None or not self._welcomed:
            return

        for rec, frame in fresh:
            if rec != self._sent + 1 or not self._window_open():
                break
            self._transmit(rec, frame)
        else:
            if fresh:
                return

        while self._window_open():
            room = WINDOW_RECORDS - len(self._in_flight)
            batch = self.spool.pending(self._sent, min(room, 100))
            if not batch:
                return
            for rec, frame in batch:
                if not self._window_open():
                    return
                if rec > self._sent:
                    self._transmit(rec, frame)

    def _window_open(self) -> bool:
        """
        Whether another record may be sent before more acknowledgements.
        """
        return (
            self._send is not None
            and len(self._in_flight) < WINDOW_RECORDS
            and self._in_flight_bytes < WINDOW_BYTES
        )

    def _transmit(self, rec: int, frame: bytes) -> None:
        """
        Send one spooled record.

        The books are kept before sending, so that an acknowledgement
        delivered during the send (an in-process link) finds them.
        """
        send = self._send
        assert send is not None
        self._in_flight[rec] = len(frame)
        self._in_flight_bytes += len(frame)
        self._sent = rec
        send(frame)
