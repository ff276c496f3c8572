"""
The runner with real processes: /bin/sh on the real reactor.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from barto import wire
from barto.config import RunnerConfig
from barto.worker.runner import SETSID_SNIPPET, Runner, session_wrapper

PYTHON_WRAPPER = (sys.executable, "-I", "-S", "-c", SETSID_SNIPPET)


async def run(
    emitted: Any,
    make_dispatch: Any,
    *cmds: str,
    settings: RunnerConfig | None = None,
    timeout: float | None = None,
    wrapper: tuple[str, ...] | None = None,
    environ: dict[str, str] | None = None,
) -> wire.Finished:
    """
    Run C{cmds} for real; the run's finished record.
    """
    runner = Runner(
        reactor,
        settings or RunnerConfig(),
        emitted,
        environ=dict(os.environ) if environ is None else environ,
        wrapper=wrapper,
    )
    finished: wire.Finished = await runner.start(make_dispatch(*cmds, timeout=timeout))
    return finished


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until(condition: Any, tries: int = 200) -> bool:
    """
    Poll C{condition} on the reactor until it holds; whether it did.
    """
    for _ in range(tries):
        if condition():
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return bool(condition())


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_is_replaced(emitted: Any, make_dispatch: Any) -> None:
    """Bytes that are not UTF-8 become U+FFFD; the line survives."""
    finished = await run(emitted, make_dispatch, r"printf 'ok \377\376 end\n'")

    assert finished.state == "succeeded"
    assert emitted.lines("stdout") == ["ok \ufffd\ufffd end"]


@pytest_twisted.ensureDeferred
async def test_megabyte_line_is_cut(emitted: Any, make_dispatch: Any) -> None:
    """A 1 MB line keeps its head and tail; the cut counts the rest."""
    finished = await run(
        emitted,
        make_dispatch,
        "head -c 1000000 /dev/zero | tr '\\0' a; echo; echo after",
    )

    lines = emitted.lines("stdout")
    assert finished.state == "succeeded"
    assert lines[0] == (
        "a" * 32768 + f" [... {1_000_000 - 65536} bytes cut ...] " + "a" * 32768
    )
    assert lines[1:] == ["after"]
    assert sum(r.cut for r in emitted.of(wire.Output)) == 1_000_000 - 65536


@pytest_twisted.ensureDeferred
async def test_last_line_without_newline(emitted: Any, make_dispatch: Any) -> None:
    """A final line with no newline is still a line."""
    await run(emitted, make_dispatch, "printf 'one\\ntwo'")

    assert emitted.lines("stdout") == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_interleaved_stderr(emitted: Any, make_dispatch: Any) -> None:
    """Both streams are captured, each in its own order."""
    await run(
        emitted,
        make_dispatch,
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done",
    )

    assert emitted.lines("stdout") == ["out1", "out2", "out3"]
    assert emitted.lines("stderr") == ["err1", "err2", "err3"]
    seqs = [r.seq for r in emitted.of(wire.Output)]
    assert seqs == list(range(len(seqs)))


@pytest.mark.parametrize(
    ("cmd", "code", "state"),
    [
        ("exit 0", 0, "succeeded"),
        ("exit 1", 1, "failed"),
        ("no-such-command-here", 127, "failed"),
        ("exit 255", 255, "failed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_exit_codes(
    emitted: Any, make_dispatch: Any, cmd: str, code: int, state: str
) -> None:
    """Exit codes reach the exit and finished records."""
    finished = await run(emitted, make_dispatch, cmd)

    [exit] = emitted.of(wire.Exit)
    assert (exit.code, exit.signal) == (code, None)
    assert (finished.state, finished.code) == (state, code)


@pytest_twisted.ensureDeferred
async def test_death_by_signal(emitted: Any, make_dispatch: Any) -> None:
    """A command killed by a signal reports the signal."""
    finished = await run(emitted, make_dispatch, "kill -KILL $$")

    [exit] = emitted.of(wire.Exit)
    assert (exit.code, exit.signal) == (None, signal.SIGKILL)
    assert finished.state == "failed"


@pytest.mark.parametrize("wrapper", [None, PYTHON_WRAPPER], ids=["default", "python"])
@pytest_twisted.ensureDeferred
async def test_command_leads_its_own_session(
    emitted: Any, make_dispatch: Any, wrapper: tuple[str, ...] | None
) -> None:
    """The shell is the leader of a new session and process group."""
    await run(
        emitted,
        make_dispatch,
        "cut -d' ' -f1,5,6 /proc/$$/stat",
        wrapper=wrapper,
    )

    [line] = emitted.lines("stdout")
    pid, group, sid = line.split()
    assert pid == group == sid
    assert int(sid) != os.getsid(0)


def test_default_wrapper_is_setsid() -> None:
    """On Linux with util-linux, the cheap setsid program is used."""
    assert session_wrapper()[0].endswith("setsid")


@pytest_twisted.ensureDeferred
async def test_stdin_is_closed(emitted: Any, make_dispatch: Any) -> None:
    """A command reading standard input gets end-of-file at once."""
    await run(emitted, make_dispatch, "cat; echo done")

    assert emitted.lines("stdout") == ["done"]


@pytest_twisted.ensureDeferred
async def test_environment(emitted: Any, make_dispatch: Any) -> None:
    """Commands see the run's variables and not the worker's secrets."""
    environ = {
        "PATH": os.environ["PATH"],
        "BARTOC_BARTOS__API_KEY": "secret",
        "KEEP": "kept",
    }
    await run(
        emitted,
        make_dispatch,
        'echo "$BARTO_RUN_ID $BARTO_SCHEDULE $BARTO_SCHEDULED_AT $KEEP";'
        ' echo "${BARTOC_BARTOS__API_KEY:-none}"',
        environ=environ,
    )

    assert emitted.lines("stdout") == [
        "00000000-0000-4000-8000-000000000001 backup 2026-12-03T16:45:00Z kept",
        "none",
    ]


@pytest_twisted.ensureDeferred
async def test_timeout_kills_grandchildren(
    emitted: Any, make_dispatch: Any, tmp_path: Path
) -> None:
    """A timed-out run leaves no process behind, even ones ignoring TERM."""
    pids = tmp_path / "pids"
    script = (
        f"(trap '' TERM; sleep 300 & echo $! >> {pids}; wait) &"
        f" echo $! >> {pids};"
        f" sh -c 'sleep 300 & echo $! >> {pids}; wait' &"
        f" echo $! >> {pids};"
        f" sleep 300 & echo $! >> {pids};"
        f" echo $$ >> {pids};"
        " wait"
    )
    settings = RunnerConfig(kill_grace=0.5)

    finished = await run(emitted, make_dispatch, script, settings=settings, timeout=1)

    numbers = [int(n) for n in pids.read_text().split()]
    assert len(numbers) == 6
    assert finished.state == "timed_out"
    assert await until(lambda: not any(alive(pid) for pid in numbers))


@pytest_twisted.ensureDeferred
async def test_huge_output_never_blocks(emitted: Any, make_dispatch: Any) -> None:
    """Output far past the run's cap is drained; the cut adds up."""
    settings = RunnerConfig(max_output_bytes=1_000_000)

    finished = await run(
        emitted,
        make_dispatch,
        "head -c 5000000 /dev/zero | tr '\\0' x | fold -w 100; echo; echo end",
        settings=settings,
    )

    lines = emitted.lines("stdout")
    kept = sum(len(line) for line in lines)
    cut = sum(r.cut for r in emitted.of(wire.Output))
    assert finished.state == "succeeded"
    assert kept <= 1_000_000
    assert kept + cut == 5_000_000 + len("end")
    assert lines[-1] == "end"
