"""
Real processes for integration tests: twistd programs, barto-cli, and a
throwaway MariaDB server that a test may stop and start at will.

Every helper here cleans up after itself: a test that fails half way still
leaves no process running and no port bound.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    condition: Callable[[], bool], timeout: float = 30.0, what: str = ""
) -> None:
    """
    Poll C{condition} until it holds; fail the test after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def port_open(port: int) -> bool:
    """
    Whether something accepts connections on 127.0.0.1:C{port}.
    """
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_environment(home: Path) -> dict[str, str]:
    """
    An environment that keeps a program's files under C{home}.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BARTOS_", "BARTOC_", "BARTO_CLI_"))
    }
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["HOME"] = str(home)
    return env


class Program:
    """
    A twistd program (C{bartos} or C{bartoc}) run in the foreground.
    """

    def __init__(self, name: str, args: Sequence[str], directory: Path) -> None:
        """
        Describe the program; L{start} runs it.
        """
        self.name = name
        self.args = list(args)
        self.directory = directory
        self.log = directory / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = test_environment(directory)

    def start(self) -> Program:
        """
        Start the process, its output going to C{self.log}.
        """
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            f"--pidfile={self.directory / (self.name + '.pid')}",
            self.name,
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self.env,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        """
        Everything the program has printed so far.
        """
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, number: int) -> None:
        """
        Send C{number} to the process.
        """
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        """
        Wait for the process to exit; its status.
        """
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """
        TERM, then KILL the whole process group if it does not exit.
        """
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """
        SIGKILL the process and its whole group, and reap it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


@contextmanager
def running(*programs: Program) -> Iterator[tuple[Program, ...]]:
    """
    Start C{programs}; whatever happens, none survives the block.
    """
    try:
        for program in programs:
            program.start()
        yield programs
    finally:
        for program in reversed(programs):
            program.stop(10)
            program.kill()


def barto_cli(
    args: Sequence[str], home: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """
    Run C{barto-cli} with C{args}; its completed process.
    """
    return subprocess.run(
        [sys.executable, "-m", "barto.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=test_environment(home),
        cwd=home,
        check=False,
    )


class ThrowawayMariaDB:
    """
    A MariaDB server of a test's own, in a temp folder, on a free port.

    Tests that stop or break MariaDB use this, never the shared server.
    """

    def __init__(self, directory: Path) -> None:
        """
        Prepare the data folder; L{start} runs the server.
        """
        self.directory = directory
        self.datadir = directory / "data"
        self.socket = directory / "mariadb.sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        """
        Whether this machine can run a throwaway server.
        """
        return bool(
            shutil.which("mariadb-install-db")
            and (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists())
        )

    def install(self) -> None:
        """
        Create the system tables.
        """
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        """
        Start the server and wait until it accepts connections.
        """
        if not self.datadir.exists():
            self.install()
        daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        with (self.directory / "mariadbd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    daemon,
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={self.directory / 'mariadbd.pid'}",
                    "--innodb-buffer-pool-size=32M",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: port_open(self.port), 60, "throwaway mariadbd")

    def stop(self) -> None:
        """
        Stop the server (TERM, then KILL) and wait for it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def execute(self, sql: str) -> None:
        """
        Run SQL as root through the server's socket.
        """
        subprocess.run(
            ["mariadb", f"--socket={self.socket}", "-uroot", "-e", sql],
            check=True,
            capture_output=True,
        )
