"""
The process group guard stops the groups it was told of when the worker's
end of its pipe closes, and leaves released ones alone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from barto.config import RunnerConfig
from barto.worker.guard import GroupGuard
from barto.worker.runner import Runner


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    """
    A process leading a session and process group of its own.
    """
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_watched_group_stopped_when_worker_goes(
    group: subprocess.Popen[bytes],
) -> None:
    """A watched group gets TERM once the guard's pipe closes."""
    guard = GroupGuard(kill_grace=0.5)
    guard.start()
    guard.watch(group.pid)

    guard.close()

    assert group.wait(10) == -15


def test_released_group_left_alone(group: subprocess.Popen[bytes]) -> None:
    """A group released before the pipe closes keeps running."""
    guard = GroupGuard(kill_grace=0.5)
    guard.start()
    guard.watch(group.pid)
    guard.release(group.pid)

    guard.close()
    time.sleep(0.3)

    assert group.poll() is None


def test_unstarted_guard_does_nothing(group: subprocess.Popen[bytes]) -> None:
    """Before start, watch, release and close are harmless no-ops."""
    guard = GroupGuard(kill_grace=0.5)
    guard.watch(group.pid)
    guard.release(group.pid)
    guard.close()

    assert group.poll() is None


class Recorder:
    """
    A guard that remembers what it was told.
    """

    def __init__(self) -> None:
        self.watched: list[int] = []
        self.released: list[int] = []

    def watch(self, group: int) -> None:
        self.watched.append(group)

    def release(self, group: int) -> None:
        self.released.append(group)


@pytest_twisted.ensureDeferred
async def test_runner_tells_the_guard(emitted: Any, make_dispatch: Any) -> None:
    """The runner watches each command's group and releases it when it ends."""
    recorder = Recorder()
    runner = Runner(
        reactor,
        RunnerConfig(),
        emitted,
        environ=dict(os.environ),
        guard=recorder,  # type: ignore[arg-type]
    )

    finished = await runner.start(make_dispatch("true", "echo $$; sleep 0.2"))

    assert finished.state == "succeeded"
    shell = int(emitted.lines("stdout")[-1])
    assert shell in recorder.watched
    assert recorder.released == recorder.watched
