"""
The guard: a small process that outlives the worker to stop its runs.

A worker killed by SIGKILL (or crashing) cannot stop the commands it
started: they run in process groups of their own, so nothing reaches them.
L{GroupGuard} starts a helper, in a session of its own, that reads the
process groups of the running commands from a pipe only the worker holds.
When the pipe reaches end-of-file (the worker is gone, however it ended),
the helper sends TERM to every group still listed and, after the kill
grace, KILL. A worker that stops normally ends its runs first, so the
helper finds nothing left to stop.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.logger import Logger

log = Logger()

GUARD_SNIPPET = """\
import os, signal, sys, time
groups = set()
for line in sys.stdin.buffer:
    sign, group = line[:1], int(line[1:])
    (groups.add if sign == b"+" else groups.discard)(group)
def alive(group):
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    return True
def send(number):
    for group in groups:
        try:
            os.killpg(group, number)
        except OSError:
            pass
send(signal.SIGTERM)
deadline = time.monotonic() + float(sys.argv[1])
while any(alive(group) for group in groups) and time.monotonic() < deadline:
    time.sleep(0.05)
send(signal.SIGKILL)
"""


class GroupGuard:
    """
    Stops the process groups of a worker's commands when the worker dies.
    """

    def __init__(self, kill_grace: float) -> None:
        """
        @param kill_grace: seconds between the helper's TERM and its KILL.
        """
        self._kill_grace = kill_grace
        self._helper: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start the helper; until then (or if it cannot start) nothing is
        guarded.
        """
        try:
            self._helper = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    GUARD_SNIPPET,
                    str(self._kill_grace),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            log.warn(
                "cannot start the process group guard: commands will outlive"
                " a killed worker: {error}",
                error=error,
            )

    def watch(self, group: int) -> None:
        """
        A command started with process group C{group}.
        """
        self._tell(b"+%d\n" % group)

    def release(self, group: int) -> None:
        """
        The command of process group C{group} ended.
        """
        self._tell(b"-%d\n" % group)

    def close(self) -> None:
        """
        Let the helper go (it stops the groups still listed) and reap it.
        """
        helper, self._helper = self._helper, None
        if helper is None:
            return
        try:
            assert helper.stdin is not None
            helper.stdin.close()
        except OSError:
            pass
        try:
            helper.wait(1)
        except subprocess.TimeoutExpired:
            log.warn("the process group guard is still stopping leftover commands")

    def _tell(self, line: bytes) -> None:
        helper = self._helper
        if helper is None or helper.stdin is None:
            return
        try:
            helper.stdin.write(line)
            helper.stdin.flush()
        except OSError as error:
            log.warn("the process group guard is gone: {error}", error=error)
            self._helper = None
