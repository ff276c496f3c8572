"""
The runner: a dispatched run's commands, one after another, as processes.

Each command runs through the configured shell (C{[shell, "-c", cmd]})
with its standard input closed, in a session and process group of its
own, so that a timeout or a cancel can signal every process it started:
TERM to the group, then KILL after the kill grace. Twisted's
C{spawnProcess} has no hook to run code in the child before C{exec}, so
the shell is started through a small wrapper that calls C{setsid} and
then C{exec}s it without forking, which keeps the shell's pid as the
group's id: util-linux's C{setsid} program when it is installed (it costs
about 2 ms), else the Python interpreter running L{SETSID_SNIPPET} (about
15 ms).

At most L{MAX_CONCURRENT_RUNS} runs execute at once; the runs dispatched
beyond that wait in a queue, in the order they came, and start as slots
free up. A queued run counts as going on (it is in L{Runner.running},
so the server does not declare it lost), its timeout counts from when
it starts executing, a cancel ends it C{cancelled} at once without
running anything, and a shutdown ends every queued run C{cancelled}
(reason L{NOT_STARTED_AT_SHUTDOWN}) at once, so every run dispatched
gets its C{finished} record.

Everything a run produces is handed to an C{emit} callable as
L{wire.Record}s, in order; their C{rec} number is left at 0 for the spool
to assign. The runner never touches the network or the spool itself, so
it runs the same inside C{bartoc} and inside another process.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from barto import wire
from barto.config import RunnerConfig
from barto.worker.guard import GroupGuard
from barto.worker.output import MAX_LINE_CAP, Emit, LineSplitter, RunOutput, timestamp

log = Logger()

SETSID_SNIPPET = (
    "import os, sys\n"
    "os.setsid()\n"
    "try:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "except OSError as error:\n"
    "    sys.stderr.write(f'cannot start {sys.argv[1]}: {error.strerror}\\n')\n"
    "    os._exit(127)\n"
)

# Environment variables of the worker that commands do not see: the
# programs' own settings (they hold the keys) and anything named like a
# secret. Matched case-insensitively.
SECRET_PREFIXES = ("BARTOC_", "BARTOS_", "BARTO_CLI_")
SECRET_SUFFIXES = ("_API_KEY",)
SECRET_PARTS = ("TOKEN", "PASSWORD")

KillGroup = Callable[[int, int], None]

MAX_CONCURRENT_RUNS = 32
"""
How many runs execute at once; the runs dispatched beyond that wait in a
queue, oldest first. Each command is a process and three pipes, and
Twisted's C{spawnProcess} closes every descriptor the worker holds for
each spawn, so a burst of hundreds of runs started at once would make
every spawn slower; a few dozen keep the machine busy without that.
"""

NOT_STARTED_AT_SHUTDOWN = "the worker shut down before the run started"
"""
The reason of the C{cancelled} end of a run still queued at shutdown.
"""


def session_wrapper() -> tuple[str, ...]:
    """
    The command that starts a program in a new session, without forking.

    @return: C{setsid} from util-linux if it is on the C{PATH}, else the
        Python interpreter with L{SETSID_SNIPPET}.
    """
    program = shutil.which("setsid")
    if program is not None and sys.platform.startswith("linux"):
        return (program,)
    return (sys.executable, "-I", "-S", "-c", SETSID_SNIPPET)


def is_secret(key: str) -> bool:
    """
    Whether an environment variable of the worker is kept from commands.
    """
    upper = key.upper()
    return (
        upper.startswith(SECRET_PREFIXES)
        or upper.endswith(SECRET_SUFFIXES)
        or any(part in upper for part in SECRET_PARTS)
    )


def base_environment(
    environ: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """
    The environment every run's commands share: C{environ} less its
    secrets, plus C{extra}.
    """
    env = {key: value for key, value in environ.items() if not is_secret(key)}
    env.update(extra)
    return env


def command_environment(
    environ: Mapping[str, str],
    extra: Mapping[str, str],
    dispatch: wire.Dispatch,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    The environment a run's commands get.

    @param environ: the worker's environment; its secrets are left out.
    @param extra: the configured C{env}, added as it is.
    @param dispatch: the run, named in C{BARTO_RUN_ID}, C{BARTO_SCHEDULE}
        and C{BARTO_SCHEDULED_AT}.
    @param base: L{base_environment} of C{environ} and C{extra}, when the
        caller has it already (C{environ} and C{extra} are then unused).
    """
    env = dict(base) if base is not None else base_environment(environ, extra)
    env["BARTO_RUN_ID"] = dispatch.run
    env["BARTO_SCHEDULE"] = dispatch.schedule
    env["BARTO_SCHEDULED_AT"] = dispatch.slot
    return env


def start_problem(shell: str, workdir: str | None, env: Mapping[str, str]) -> str:
    """
    Why a command could not start, found before trying; empty if none.
    """
    if os.sep in shell:
        if not os.access(shell, os.X_OK) or os.path.isdir(shell):
            return f"shell {shell!r} is not an executable file"
    elif shutil.which(shell, path=env.get("PATH", os.defpath)) is None:
        return f"shell {shell!r} is not on the PATH"
    if workdir is not None and not os.path.isdir(workdir):
        return f"working directory {workdir!r} does not exist"
    if workdir is not None and not os.access(workdir, os.X_OK):
        return f"working directory {workdir!r} cannot be entered"
    return ""


@dataclass(frozen=True)
class ExitStatus:
    """
    How a command ended.

    @ivar code: its exit code, or C{None} if it did not exit by itself.
    @ivar signal: the signal that ended it, if one did.
    @ivar reason: why, when barto ended it or it could not start.
    """

    code: int | None
    signal: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """
        Whether the command succeeded (exit code 0).
        """
        return self.code == 0

    def describe(self, cmd: int) -> str:
        """
        One line that says how command C{cmd} ended.
        """
        if self.reason:
            return f"command {cmd}: {self.reason}"
        if self.signal is not None:
            return f"command {cmd} was killed by signal {self.signal}"
        return f"command {cmd} exited with {self.code}"


class CommandProtocol(ProcessProtocol):
    """
    One command's process: its output goes to the run, its end to
    L{ended}.

    @ivar ended: fires with the L{ExitStatus} once the process has exited
        and both its pipes are closed.
    """

    def __init__(self, output: RunOutput, cmd: int, line_cap: int) -> None:
        """
        @param output: the run's output.
        @param cmd: the command's index in the run.
        @param line_cap: the longest line kept whole.
        """
        self.ended: Deferred[ExitStatus] = Deferred()
        self._output = output
        self._cmd = cmd
        self._splitters: dict[wire.Stream, LineSplitter] = {
            "stdout": LineSplitter(line_cap),
            "stderr": LineSplitter(line_cap),
        }

    def connectionMade(self) -> None:
        """
        Close the command's standard input: it reads end-of-file.
        """
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        """
        Bytes on standard output.
        """
        lines, cut = self._splitters["stdout"].feed(data)
        self._output.add(self._cmd, "stdout", lines, cut)

    def errReceived(self, data: bytes) -> None:
        """
        Bytes on standard error.
        """
        lines, cut = self._splitters["stderr"].feed(data)
        self._output.add(self._cmd, "stderr", lines, cut)

    def outConnectionLost(self) -> None:
        """
        Standard output closed: its last line counts without a newline.
        """
        self._close("stdout")

    def errConnectionLost(self) -> None:
        """
        Standard error closed: its last line counts without a newline.
        """
        self._close("stderr")

    def processEnded(self, reason: Failure) -> None:
        """
        The process exited and its pipes are closed.
        """
        self._close("stdout")
        self._close("stderr")
        code = getattr(reason.value, "exitCode", None)
        number = getattr(reason.value, "signal", None)
        self.ended.callback(ExitStatus(code, number))

    def _close(self, stream: wire.Stream) -> None:
        """
        Take the last line of a stream that ended.
        """
        lines, cut = self._splitters[stream].close()
        self._output.add(self._cmd, stream, lines, cut)


class Run:
    """
    One run: its commands, one after another, and its end.

    @ivar dispatch: what the server sent.
    """

    def __init__(
        self,
        dispatch: wire.Dispatch,
        *,
        reactor: IReactorProcess,
        settings: RunnerConfig,
        emit: Emit,
        environ: Mapping[str, str],
        wrapper: Sequence[str],
        kill_group: KillGroup,
        guard: GroupGuard | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param reactor: spawns the processes; it must also provide
            L{IReactorTime}.
        @param settings: the runner's configuration.
        @param emit: takes the run's records, in order.
        @param environ: the worker's environment.
        @param wrapper: the L{session_wrapper} command.
        @param kill_group: signals a process group, like C{os.killpg}.
        @param guard: told each command's process group, to stop it if
            the worker dies.
        @param base_env: L{base_environment} of C{environ} and the
            configured C{env}, if the caller keeps it.
        """
        self.dispatch = dispatch
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._settings = settings
        self._sink = emit
        # Records made in one go (a command's exit and the run's end, or
        # the next command's start) are handed on together, so that the
        # spool commits them in one transaction; see L{_collect}.
        self._batch: list[wire.Record] | None = None
        self._env = command_environment(environ, settings.env, dispatch, base=base_env)
        self._wrapper = tuple(wrapper)
        self._kill_group = kill_group
        self._guard = guard
        self._output = RunOutput(
            dispatch.run, self._clock, self._collect, settings.max_output_bytes
        )
        self._line_cap = min(settings.max_line_bytes, MAX_LINE_CAP)
        self._process: IProcessTransport | None = None
        self._group: int | None = None
        self._stop_state: wire.RunState | None = None
        self._stop_reason = ""
        self._timeout_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None

    @property
    def id(self) -> str:
        """
        The run's id.
        """
        return self.dispatch.run

    def start(self) -> Deferred[wire.Finished]:
        """
        Run the commands.

        @return: fires with the run's L{wire.Finished} record, after it
            was emitted.
        """
        return Deferred.fromCoroutine(self._run())

    def cancel(self, reason: str) -> None:
        """
        Stop the run because the server asked to.
        """
        self.stop("cancelled", f"cancelled: {reason}" if reason else "cancelled")

    def stop(self, state: wire.RunState, reason: str) -> None:
        """
        Stop the run: TERM to the running command's group, KILL after the
        kill grace, and no further command.

        Only the first stop counts.

        @param state: the state the run ends in.
        @param reason: why, for the records.
        """
        if self._stop_state is not None:
            return

        self._stop_state = state
        self._stop_reason = reason
        log.info(
            "run {run} of {schedule}: stopping ({reason})",
            run=self.id,
            schedule=self.dispatch.schedule,
            reason=reason,
        )
        if self._group is not None:
            self._signal(signal.SIGTERM)
            self._kill_call = self._clock.callLater(
                self._settings.kill_grace, self._signal, signal.SIGKILL
            )

    async def _run(self) -> wire.Finished:
        """
        Run each command, then emit the run's end.

        The timeout counts from here: a run stopped before it started
        (cancelled while queued) runs nothing and only emits its end.
        """
        if self.dispatch.timeout is not None and self._stop_state is None:
            self._timeout_call = self._clock.callLater(
                self.dispatch.timeout, self._expire, self.dispatch.timeout
            )

        last: ExitStatus | None = None
        failure = ""
        try:
            try:
                for index, cmd in enumerate(self.dispatch.cmds):
                    if self._stop_state is not None:
                        break
                    last = await self._command(index, cmd)
                    if not last.ok and not failure:
                        failure = last.describe(index)
                    if last.reason and self._stop_state is None:
                        break
            finally:
                self._cancel_timers()
                self._output.close()
            return self._finish(last, failure)
        finally:
            self._release()

    def _collect(self, records: Sequence[wire.Record]) -> None:
        """
        Emit records, or keep them for L{_release} while a batch is open.

        A batch opens when a command has ended and is released before
        the run waits again (for its next command) or has ended, so the
        records stay in order and none waits longer than the current
        reactor turn.
        """
        if self._batch is not None:
            self._batch.extend(records)
        else:
            self._sink(records)

    def _release(self) -> None:
        """
        Emit the records kept since the batch opened, in one call.
        """
        batch, self._batch = self._batch, None
        if batch:
            self._sink(batch)

    def _finish(self, last: ExitStatus | None, failure: str) -> wire.Finished:
        """
        Emit and return the run's L{wire.Finished} record.
        """
        state: wire.RunState
        if self._stop_state is not None:
            state, reason = self._stop_state, self._stop_reason
        elif failure:
            state, reason = "failed", failure
        else:
            state, reason = "succeeded", ""

        finished = wire.Finished(
            rec=0,
            run=self.id,
            at=timestamp(self._clock.seconds()),
            state=state,
            code=last.code if last is not None else None,
            reason=reason,
        )
        self._collect([finished])
        log.info(
            "run {run} of {schedule} finished: {state}",
            run=self.id,
            schedule=self.dispatch.schedule,
            state=state,
            code=finished.code,
            reason=reason,
        )
        return finished

    async def _command(self, index: int, cmd: str) -> ExitStatus:
        """
        Run one command and emit its start, output and exit.
        """
        settings = self._settings
        self._collect(
            [
                wire.Started(
                    rec=0,
                    run=self.id,
                    cmd=index,
                    at=timestamp(self._clock.seconds()),
                )
            ]
        )

        # The start is handed on (and spooled) before the process exists.
        self._release()
        problem = start_problem(settings.shell, settings.workdir, self._env)
        if not problem:
            protocol = CommandProtocol(self._output, index, self._line_cap)
            argv = [*self._wrapper, settings.shell, "-c", cmd]
            try:
                self._process = self._reactor.spawnProcess(
                    protocol, argv[0], argv, self._env, path=settings.workdir
                )
            except OSError as error:
                problem = str(error)

        if problem:
            status = self._not_started(index, problem)
        else:
            status = await self._wait(protocol)
            if self._batch is None:
                self._batch = []

        self._exit(index, status)
        return status

    async def _wait(self, protocol: CommandProtocol) -> ExitStatus:
        """
        Wait for the spawned command to end; sweep its group if stopped.
        """
        assert self._process is not None
        self._group = self._process.pid
        if self._guard is not None and self._group is not None:
            self._guard.watch(self._group)
        log.debug(
            "run {run} of {schedule}: command started as pid {pid}",
            run=self.id,
            schedule=self.dispatch.schedule,
            pid=self._group,
        )
        status = await protocol.ended
        if self._stop_state is not None:
            self._signal(signal.SIGKILL)
            status = ExitStatus(status.code, status.signal, self._stop_reason)

        if self._guard is not None and self._group is not None:
            self._guard.release(self._group)
        self._process = None
        self._group = None
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        return status

    def _not_started(self, index: int, problem: str) -> ExitStatus:
        """
        A command that could not start: its reason goes to standard error.
        """
        reason = f"cannot start: {problem}"
        self._output.add(index, "stderr", [f"barto: {reason}".encode()])
        return ExitStatus(None, None, reason)

    def _exit(self, index: int, status: ExitStatus) -> None:
        """
        Emit a command's output so far and its exit record.
        """
        self._output.flush()
        self._collect(
            [
                wire.Exit(
                    rec=0,
                    run=self.id,
                    cmd=index,
                    at=timestamp(self._clock.seconds()),
                    code=status.code,
                    signal=status.signal,
                    reason=status.reason,
                )
            ]
        )
        # A command that went well is told at debug level; the run's end
        # is logged anyway, and a burst of short runs pays for each line.
        level = LogLevel.info if status.reason or not status.ok else LogLevel.debug
        log.emit(
            level,
            "run {run} of {schedule}: {outcome}",
            run=self.id,
            schedule=self.dispatch.schedule,
            outcome=status.describe(index),
            cmd=index,
            code=status.code,
            signal=status.signal,
        )

    def _expire(self, timeout: float) -> None:
        """
        The run's timeout passed.
        """
        self._timeout_call = None
        self.stop("timed_out", f"timed out after {timeout:g} s")

    def _signal(self, number: int) -> None:
        """
        Send a signal to the running command's process group.
        """
        if self._group is None:
            return
        try:
            self._kill_group(self._group, number)
        except ProcessLookupError:
            pass
        except OSError as error:
            log.warn(
                "run {run}: cannot signal process group {group}: {error}",
                run=self.id,
                group=self._group,
                error=error,
            )

    def _cancel_timers(self) -> None:
        """
        Cancel the timeout and the pending KILL, if any.
        """
        for call in (self._timeout_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = None
        self._kill_call = None


class Runner:
    """
    The runs a worker is executing.

    @ivar settings: the runner's configuration.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        settings: RunnerConfig,
        emit: Emit,
        *,
        environ: Mapping[str, str] | None = None,
        wrapper: Sequence[str] | None = None,
        kill_group: KillGroup = os.killpg,
        guard: GroupGuard | None = None,
        max_concurrent: int = MAX_CONCURRENT_RUNS,
    ) -> None:
        """
        @param reactor: spawns the processes; it must also provide
            L{IReactorTime}.
        @param settings: the runner's configuration.
        @param emit: takes every record the runs make, in order.
        @param environ: the environment commands start from (less its
            secrets); C{os.environ} when C{None}.
        @param wrapper: the command that starts the shell in a new
            session; L{session_wrapper} when C{None}.
        @param kill_group: signals a process group, like C{os.killpg}.
        @param guard: stops the commands' process groups if the worker
            dies (see L{barto.worker.guard}).
        @param max_concurrent: how many runs execute at once; the others
            wait in a queue.
        @raise ValueError: C{max_concurrent} is not positive.
        """
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be positive: {max_concurrent}")
        self.settings = settings
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._emit = emit
        self._environ = os.environ if environ is None else environ
        # The worker's environment is filtered once, not for every run;
        # later changes to it are not seen by commands.
        self._base_env = base_environment(self._environ, settings.env)
        self._wrapper = session_wrapper() if wrapper is None else tuple(wrapper)
        self._kill_group = kill_group
        self._guard = guard
        self._runs: dict[str, Run] = {}
        self._ended: dict[str, Deferred[wire.Finished]] = {}
        self._queue: OrderedDict[str, Run] = OrderedDict()
        self._max_concurrent = max_concurrent
        self._executing = 0
        self._starting_queued = False
        self._closing = False

    @property
    def running(self) -> tuple[str, ...]:
        """
        The ids of the runs going on, executing or queued, oldest first.
        """
        return tuple(self._runs)

    @property
    def queued(self) -> tuple[str, ...]:
        """
        The ids of the runs waiting for a slot, in the order they start.
        """
        return tuple(self._queue)

    @property
    def closing(self) -> bool:
        """
        Whether L{shutdown} was called: no run starts any more.
        """
        return self._closing

    def is_running(self, run: str) -> bool:
        """
        Whether the run C{run} is going on.
        """
        return run in self._runs

    def start(self, dispatch: wire.Dispatch) -> Deferred[wire.Finished]:
        """
        Start a run, or queue it if L{MAX_CONCURRENT_RUNS} (or the
        runner's C{max_concurrent}) runs are executing.

        @return: fires with its L{wire.Finished} once it is over.
        @raise ValueError: the run is going on already, or the runner is
            shutting down.
        """
        if self._closing:
            raise ValueError("the runner is shutting down")
        if dispatch.run in self._runs:
            raise ValueError(f"run {dispatch.run} is going on already")

        run = Run(
            dispatch,
            reactor=self._reactor,
            settings=self.settings,
            emit=self._emit,
            environ=self._environ,
            wrapper=self._wrapper,
            kill_group=self._kill_group,
            guard=self._guard,
            base_env=self._base_env,
        )
        ended: Deferred[wire.Finished] = Deferred()
        self._runs[run.id] = run
        self._ended[run.id] = ended
        if self._executing < self._max_concurrent:
            self._execute(run)
        else:
            self._queue[run.id] = run
            log.debug(
                "run {run} of {schedule} for slot {slot} queued:"
                " {executing} runs executing, {queued} queued",
                run=run.id,
                schedule=dispatch.schedule,
                slot=dispatch.slot,
                executing=self._executing,
                queued=len(self._queue),
            )
        return ended

    def cancel(self, run: str, reason: str) -> bool:
        """
        Cancel a run going on; a queued run ends C{cancelled} at once,
        without running anything.

        @return: whether it was going on (executing or queued).
        """
        found = self._runs.get(run)
        if found is None:
            return False
        found.cancel(reason)
        if self._queue.pop(run, None) is not None:
            self._end_unstarted(found)
        return True

    def _execute(self, run: Run) -> None:
        """
        Run C{run} in a free slot.
        """
        self._executing += 1
        log.info(
            "run {run} of {schedule} for slot {slot} started: {count} commands",
            run=run.id,
            schedule=run.dispatch.schedule,
            slot=run.dispatch.slot,
            count=len(run.dispatch.cmds),
        )
        run.start().addBoth(self._ended_run, run, True)

    def _end_unstarted(self, run: Run) -> None:
        """
        End a run taken out of the queue and stopped: it emits only its
        C{finished} record, and takes no slot.
        """
        run.start().addBoth(self._ended_run, run, False)

    def _ended_run(
        self, result: wire.Finished | Failure, run: Run, executed: bool
    ) -> None:
        """
        A run is over: free its slot, start the next queued run, and
        tell whoever started it.
        """
        self._runs.pop(run.id, None)
        ended = self._ended.pop(run.id)
        if executed:
            self._executing -= 1
            self._start_queued()
        if isinstance(result, Failure):
            ended.errback(result)
        else:
            ended.callback(result)

    def _start_queued(self) -> None:
        """
        Start queued runs, oldest first, while slots are free.

        A run that ends at once (its command cannot start) frees its slot
        within L{_execute}; the loop, not a recursion, starts the next.
        """
        if self._starting_queued:
            return
        self._starting_queued = True
        try:
            while (
                self._queue
                and self._executing < self._max_concurrent
                and not self._closing
            ):
                _, run = self._queue.popitem(last=False)
                self._execute(run)
        finally:
            self._starting_queued = False

    def shutdown(self) -> Deferred[None]:
        """
        Stop taking runs; let those executing finish within the shutdown
        grace, then stop them (TERM, then KILL after the kill grace).

        Queued runs do not start: each ends C{cancelled} at once, with
        the reason L{NOT_STARTED_AT_SHUTDOWN}.

        @return: fires once every run has ended and emitted its records.
        """
        self._closing = True
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        """
        End the queued runs; wait for the others, stopping them after the
        grace.
        """
        while self._queue:
            _, queued = self._queue.popitem(last=False)
            queued.stop("cancelled", NOT_STARTED_AT_SHUTDOWN)
            self._end_unstarted(queued)
        if not self._runs:
            return

        log.info(
            "waiting up to {grace} s for {count} runs to finish",
            grace=self.settings.shutdown_grace,
            count=len(self._runs),
        )
        grace = self._clock.callLater(self.settings.shutdown_grace, self._stop_all)
        await DeferredList(list(self._ended.values()), consumeErrors=True)
        if grace.active():
            grace.cancel()

    def _stop_all(self) -> None:
        """
        The shutdown grace is over: stop every run still going on.
        """
        for run in list(self._runs.values()):
            run.stop("cancelled", "the worker shut down")
