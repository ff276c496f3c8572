"""
Tests for L{barto.worker.runner} with a fake process reactor and clock.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from barto import wire
from barto.config import RunnerConfig
from barto.worker.runner import (
    NOT_STARTED_AT_SHUTDOWN,
    Runner,
    command_environment,
    is_secret,
)

WRAPPER = ("/usr/bin/setsid",)


def make_runner(
    reactor: Any,
    settings: RunnerConfig,
    emitted: Any,
    kills: Any,
    environ: dict[str, str] | None = None,
    max_concurrent: int = 32,
) -> Runner:
    """
    A runner on the fake reactor, signalling into C{kills}.
    """
    return Runner(
        reactor,
        settings,
        emitted,
        environ={"PATH": "/usr/bin:/bin"} if environ is None else environ,
        wrapper=WRAPPER,
        kill_group=kills,
        max_concurrent=max_concurrent,
    )


def run_id(number: int) -> str:
    """
    The id of test run C{number}.
    """
    return f"00000000-0000-4000-8000-{number:012d}"


def kinds(emitted: Any) -> list[tuple[str, int | None]]:
    """
    The records' types with their command index.
    """
    return [(r.TYPE, getattr(r, "cmd", None)) for r in emitted.records]


def test_spawns_shell_in_new_session(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A command runs as wrapper + shell -c, stdin closed, env filtered."""
    runner = make_runner(
        reactor,
        settings,
        emitted,
        kills,
        environ={
            "PATH": "/bin",
            "HOME": "/home/w",
            "BARTOC_BARTOS__API_KEY": "k",
            "GITHUB_TOKEN": "t",
            "DB_PASSWORD": "p",
            "SERVICE_API_KEY": "s",
        },
    )

    runner.start(make_dispatch("echo hi"))

    [process] = reactor.spawned
    assert process.executable == "/usr/bin/setsid"
    assert process.args == ["/usr/bin/setsid", "/bin/sh", "-c", "echo hi"]
    assert process.stdin_closed
    assert process.path is None
    assert process.env == {
        "PATH": "/bin",
        "HOME": "/home/w",
        "EXTRA": "yes",
        "BARTO_RUN_ID": "00000000-0000-4000-8000-000000000001",
        "BARTO_SCHEDULE": "backup",
        "BARTO_SCHEDULED_AT": "2026-12-03T16:45:00Z",
    }


def test_secret_names() -> None:
    """The worker's own settings and secret-looking names are kept back."""
    assert is_secret("BARTOC_NAME")
    assert is_secret("bartos_mariadb__password")
    assert is_secret("AWS_SESSION_TOKEN")
    assert is_secret("X_API_KEY")
    assert not is_secret("PATH")
    assert not is_secret("BARTO_RUN_ID")


def test_configured_env_wins_over_filter(make_dispatch: Any) -> None:
    """A variable set in the config reaches commands even if secret-named."""
    env = command_environment(
        {"MY_TOKEN": "from worker"}, {"MY_TOKEN": "configured"}, make_dispatch("x")
    )

    assert env["MY_TOKEN"] == "configured"


def test_commands_run_one_after_another(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """The next command starts only after the previous one ended."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("first", "second"))

    assert len(reactor.spawned) == 1
    reactor.spawned[0].out(b"one\n")
    reactor.spawned[0].exit(0)
    assert len(reactor.spawned) == 2
    assert reactor.spawned[1].args[-1] == "second"
    reactor.spawned[1].err(b"two")
    reactor.spawned[1].exit(0)

    finished = ended.result
    assert finished.state == "succeeded"
    assert finished.code == 0
    assert kinds(emitted) == [
        ("started", 0),
        ("output", 0),
        ("exit", 0),
        ("started", 1),
        ("output", 1),
        ("exit", 1),
        ("finished", None),
    ]
    assert emitted.lines("stdout") == ["one"]
    assert emitted.lines("stderr") == ["two"]
    assert not runner.running
    assert reactor.getDelayedCalls() == []


def test_failed_command_fails_the_run_but_the_rest_still_runs(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A failing command marks the run failed; later commands still run."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("false", "true"))

    reactor.spawned[0].exit(3)
    reactor.spawned[1].exit(0)

    finished = ended.result
    assert (finished.state, finished.code) == ("failed", 0)
    assert finished.reason == "command 0 exited with 3"
    assert [(e.cmd, e.code) for e in emitted.of(wire.Exit)] == [(0, 3), (1, 0)]


def test_death_by_signal(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A command killed by a signal reports the signal and no code."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("kill -9 $$"))

    reactor.spawned[0].exit(None, signal.SIGKILL)

    [exit] = emitted.of(wire.Exit)
    assert (exit.code, exit.signal) == (None, signal.SIGKILL)
    assert ended.result.state == "failed"
    assert ended.result.code is None
    assert ended.result.reason == "command 0 was killed by signal 9"


def test_timeout_terms_then_kills_the_group(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A timed-out run gets TERM, then KILL after the grace, to its group."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("sleep 100", "never", timeout=30))
    process = reactor.spawned[0]

    reactor.advance(29.9)
    assert kills.calls == []
    reactor.advance(0.1)
    assert kills.calls == [(4000, signal.SIGTERM)]
    reactor.advance(settings.kill_grace)
    assert kills.calls == [(4000, signal.SIGTERM), (4000, signal.SIGKILL)]

    process.exit(None, signal.SIGKILL)

    assert len(reactor.spawned) == 1
    finished = ended.result
    assert finished.state == "timed_out"
    assert finished.reason == "timed out after 30 s"
    [exit] = emitted.of(wire.Exit)
    assert exit.reason == "timed out after 30 s"
    assert reactor.getDelayedCalls() == []


def test_group_swept_when_leader_obeys_term(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """When the shell dies of TERM, the rest of its group gets KILL now."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("sleep 100 & wait", timeout=1))

    reactor.advance(1)
    reactor.spawned[0].exit(None, signal.SIGTERM)

    assert kills.calls == [(4000, signal.SIGTERM), (4000, signal.SIGKILL)]
    assert ended.result.state == "timed_out"
    assert reactor.getDelayedCalls() == []


def test_cancel(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A cancelled run stops its command and runs no further one."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("sleep 100", "never"))

    assert runner.cancel("00000000-0000-4000-8000-000000000001", "operator")
    assert not runner.cancel("00000000-0000-4000-8000-000000000002", "nobody")
    reactor.spawned[0].exit(None, signal.SIGTERM)

    assert len(reactor.spawned) == 1
    assert (ended.result.state, ended.result.reason) == (
        "cancelled",
        "cancelled: operator",
    )
    assert kills.calls[0] == (4000, signal.SIGTERM)


def test_missing_shell_is_a_failed_run(
    reactor: Any, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A shell that does not exist fails the run with the reason shown."""
    settings = RunnerConfig(shell="/nonexistent/sh")
    runner = make_runner(reactor, settings, emitted, kills)

    ended = runner.start(make_dispatch("echo hi", "echo again"))

    assert reactor.spawned == []
    reason = "cannot start: shell '/nonexistent/sh' is not an executable file"
    assert ended.result.state == "failed"
    assert ended.result.reason == f"command 0: {reason}"
    [exit] = emitted.of(wire.Exit)
    assert (exit.code, exit.reason) == (None, reason)
    assert emitted.lines("stderr") == [f"barto: {reason}"]


def test_bad_workdir_is_a_failed_run(
    reactor: Any, emitted: Any, kills: Any, make_dispatch: Any, tmp_path: Path
) -> None:
    """A working directory that does not exist fails the run."""
    missing = str(tmp_path / "missing")
    settings = RunnerConfig(workdir=missing)
    runner = make_runner(reactor, settings, emitted, kills)

    ended = runner.start(make_dispatch("pwd"))

    assert reactor.spawned == []
    assert ended.result.state == "failed"
    assert "does not exist" in emitted.of(wire.Exit)[0].reason


def test_workdir_is_passed(
    reactor: Any, emitted: Any, kills: Any, make_dispatch: Any, tmp_path: Path
) -> None:
    """Commands start in the configured working directory."""
    runner = make_runner(reactor, RunnerConfig(workdir=str(tmp_path)), emitted, kills)

    runner.start(make_dispatch("pwd"))

    assert reactor.spawned[0].path == str(tmp_path)


def test_caps_apply_to_process_output(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """The line cap applies to what a process prints."""
    runner = make_runner(reactor, settings, emitted, kills)
    runner.start(make_dispatch("yes"))

    reactor.spawned[0].out(b"y" * 250 + b"\nend")
    reactor.spawned[0].exit(0)

    assert emitted.lines() == [
        "y" * 50 + " [... 150 bytes cut ...] " + "y" * 50,
        "end",
    ]
    assert sum(r.cut for r in emitted.of(wire.Output)) == 150


def test_same_run_cannot_start_twice(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """Starting a run that is going on is refused."""
    runner = make_runner(reactor, settings, emitted, kills)
    runner.start(make_dispatch("sleep 1"))

    with pytest.raises(ValueError):
        runner.start(make_dispatch("sleep 1"))
    assert runner.running == ("00000000-0000-4000-8000-000000000001",)


def test_shutdown_gives_grace_then_stops(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """On shutdown runs get the grace, then TERM; then no run starts."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("sleep 100"))

    stopped = runner.shutdown()
    reactor.advance(settings.shutdown_grace - 0.1)
    assert kills.calls == []
    assert not stopped.called
    reactor.advance(0.1)
    assert kills.calls == [(4000, signal.SIGTERM)]

    reactor.spawned[0].exit(None, signal.SIGTERM)

    assert stopped.called
    assert ended.result.state == "cancelled"
    assert ended.result.reason == "the worker shut down"
    with pytest.raises(ValueError):
        runner.start(make_dispatch("true", run="00000000-0000-4000-8000-000000000009"))
    assert reactor.getDelayedCalls() == []


def test_shutdown_waits_no_longer_than_the_runs(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A run that ends within the grace is not signalled at all."""
    runner = make_runner(reactor, settings, emitted, kills)
    ended = runner.start(make_dispatch("sleep 1"))

    stopped = runner.shutdown()
    reactor.advance(1)
    reactor.spawned[0].exit(0)

    assert stopped.called
    assert ended.result.state == "succeeded"
    assert kills.calls == []
    assert reactor.getDelayedCalls() == []


def test_gone_group_is_not_an_error(
    reactor: Any, settings: RunnerConfig, emitted: Any, make_dispatch: Any
) -> None:
    """Signalling a group that already vanished is ignored."""

    def gone(group: int, number: int) -> None:
        raise ProcessLookupError()

    runner = make_runner(reactor, settings, emitted, gone)
    ended = runner.start(make_dispatch("sleep 1", timeout=1))

    reactor.advance(1)
    reactor.spawned[0].exit(None, signal.SIGTERM)

    assert ended.result.state == "timed_out"


def test_runs_beyond_the_cap_wait_in_order(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """Past the cap runs are queued, count as going on, and start in order."""
    runner = make_runner(reactor, settings, emitted, kills, max_concurrent=2)
    ended = [runner.start(make_dispatch(f"cmd{n}", run=run_id(n))) for n in range(4)]

    assert [p.args[-1] for p in reactor.spawned] == ["cmd0", "cmd1"]
    assert runner.running == tuple(run_id(n) for n in range(4))
    assert runner.queued == (run_id(2), run_id(3))
    assert all(runner.is_running(run_id(n)) for n in range(4))
    assert [r.run for r in emitted.of(wire.Started)] == [run_id(0), run_id(1)]

    reactor.spawned[1].exit(0)
    assert ended[1].result.state == "succeeded"
    assert [p.args[-1] for p in reactor.spawned] == ["cmd0", "cmd1", "cmd2"]
    assert runner.queued == (run_id(3),)

    reactor.spawned[0].exit(0)
    reactor.spawned[2].exit(0)
    reactor.spawned[3].exit(0)
    assert [d.result.state for d in ended] == ["succeeded"] * 4
    assert runner.running == ()
    assert runner.queued == ()


def test_cancelled_queued_run_ends_without_starting(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """A queued run that is cancelled ends at once and never runs."""
    runner = make_runner(reactor, settings, emitted, kills, max_concurrent=1)
    first = runner.start(make_dispatch("sleep 100", run=run_id(1)))
    queued = runner.start(make_dispatch("never", run=run_id(2), timeout=5))
    last = runner.start(make_dispatch("later", run=run_id(3)))

    assert runner.cancel(run_id(2), "operator said so")

    finished = queued.result
    assert finished.state == "cancelled"
    assert finished.reason == "cancelled: operator said so"
    assert finished.code is None
    assert [r.TYPE for r in emitted.records if r.run == run_id(2)] == ["finished"]
    assert runner.running == (run_id(1), run_id(3))
    assert not runner.cancel(run_id(2), "again")

    reactor.spawned[0].exit(0)
    assert [p.args[-1] for p in reactor.spawned] == ["sleep 100", "later"]
    reactor.spawned[1].exit(0)
    assert first.result.state == "succeeded"
    assert last.result.state == "succeeded"
    assert kills.calls == []
    assert reactor.getDelayedCalls() == []


def test_timeout_counts_from_the_start_of_execution(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """Time spent queued does not count against a run's timeout."""
    runner = make_runner(reactor, settings, emitted, kills, max_concurrent=1)
    runner.start(make_dispatch("sleep 100", run=run_id(1)))
    queued = runner.start(make_dispatch("sleep 100", run=run_id(2), timeout=5))

    reactor.advance(60)
    assert not queued.called
    reactor.spawned[0].exit(0)
    assert len(reactor.spawned) == 2

    reactor.advance(4.9)
    assert kills.calls == []
    reactor.advance(0.1)
    assert kills.calls == [(4001, signal.SIGTERM)]
    reactor.spawned[1].exit(None, signal.SIGTERM)

    assert queued.result.state == "timed_out"
    assert queued.result.reason == "timed out after 5 s"


def test_shutdown_cancels_queued_runs_at_once(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """Queued runs end cancelled at shutdown; executing ones get the grace."""
    runner = make_runner(reactor, settings, emitted, kills, max_concurrent=1)
    executing = runner.start(make_dispatch("sleep 1", run=run_id(1)))
    queued = [
        runner.start(make_dispatch("true", run=run_id(n), timeout=1)) for n in (2, 3)
    ]

    stopped = runner.shutdown()

    for ended in queued:
        assert ended.result.state == "cancelled"
        assert ended.result.reason == NOT_STARTED_AT_SHUTDOWN
    assert runner.running == (run_id(1),)
    assert not stopped.called

    reactor.advance(1)
    reactor.spawned[0].exit(0)

    assert stopped.called
    assert executing.result.state == "succeeded"
    assert len(reactor.spawned) == 1
    assert runner.running == ()
    finished = {r.run: r.state for r in emitted.of(wire.Finished)}
    assert finished == {
        run_id(1): "succeeded",
        run_id(2): "cancelled",
        run_id(3): "cancelled",
    }
    assert kills.calls == []
    assert reactor.getDelayedCalls() == []


def test_many_queued_runs_that_cannot_start(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any, make_dispatch: Any
) -> None:
    """Thousands of queued runs failing at once do not recurse."""
    spawn = reactor.spawnProcess

    def failing(
        protocol: Any, executable: str, args: Any, *rest: Any, **kw: Any
    ) -> Any:
        if args[-1] == "fail":
            raise OSError("no such luck")
        return spawn(protocol, executable, args, *rest, **kw)

    reactor.spawnProcess = failing
    runner = make_runner(reactor, settings, emitted, kills, max_concurrent=1)
    first = runner.start(make_dispatch("sleep 1", run=run_id(0)))
    ended = [runner.start(make_dispatch("fail", run=run_id(n))) for n in range(1, 3001)]

    reactor.spawned[0].exit(0)

    assert first.result.state == "succeeded"
    assert {d.result.state for d in ended} == {"failed"}
    assert {d.result.reason for d in ended} == {"command 0: cannot start: no such luck"}
    assert runner.running == ()


def test_cap_must_be_positive(
    reactor: Any, settings: RunnerConfig, emitted: Any, kills: Any
) -> None:
    """A cap below one is refused."""
    with pytest.raises(ValueError):
        make_runner(reactor, settings, emitted, kills, max_concurrent=0)


def test_records_made_in_one_go_are_emitted_together(
    reactor: Any, settings: RunnerConfig, kills: Any, make_dispatch: Any
) -> None:
    """
    A command's start is emitted before it is spawned; its output and
    exit go out with the next command's start, or with the run's end.
    """
    calls: list[list[tuple[str, int | None]]] = []

    def emit(records: Any) -> None:
        calls.append([(r.TYPE, getattr(r, "cmd", None)) for r in records])

    runner = make_runner(reactor, settings, emit, kills)
    ended = runner.start(make_dispatch("first", "second"))
    assert calls == [[("started", 0)]]

    reactor.spawned[0].out(b"one\n")
    reactor.spawned[0].exit(0)
    assert calls[1:] == [[("output", 0), ("exit", 0), ("started", 1)]]

    reactor.spawned[1].exit(3)
    assert calls[2:] == [[("exit", 1), ("finished", None)]]
    assert ended.result.state == "failed"
