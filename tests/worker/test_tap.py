"""
Tests for L{barto.worker.tap}: the options, and C{twistd bartoc} as a real
process against a fake bartos.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from barto import wire
from barto.worker.tap import Options

RUN = "00000000-0000-4000-8000-000000000001"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

# twistd, stopped by a signal, ends by raising that signal again.
STOPPED_BY_TERM = -signal.SIGTERM


def write_config(path: Path, port: int, **extra: Any) -> Path:
    """
    A bartoc config file for a worker named worker1 on C{port}.
    """
    lines = [
        'name = "worker1"',
        "client_timeout = 5",
        "kill_grace = 0.5",
        "shutdown_grace = 0.5",
    ]
    lines += [f"{key} = {value!r}" for key, value in extra.items()]
    lines += ["[bartos]", 'host = "127.0.0.1"', f"port = {port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_options(tmp_path: Path) -> None:
    """The original's flags parse into the options."""
    config = write_config(tmp_path / "bartoc.toml", 9)
    options = Options()

    options.parseOptions(
        ["-v", "-v", "-q", "-e", "-c", str(config), "-t", "/l", "-r", "/s"]
    )

    assert dict(options) == {
        "enable-std-output": 1,
        "config-absolute-path": str(config),
        "tracing-absolute-path": "/l",
        "redb-absolute-path": "/s",
        "verbose": 2,
        "quiet": 1,
    }
    assert options.config.name == "worker1"
    assert options.config.spool_path == "/s"


def test_long_options(tmp_path: Path) -> None:
    """The long spellings work too."""
    config = write_config(tmp_path / "bartoc.toml", 9)
    options = Options()

    options.parseOptions(
        [
            "--verbose",
            "--quiet",
            "--quiet",
            "--enable-std-output",
            f"--config-absolute-path={config}",
            "--redb-absolute-path=/s",
        ]
    )

    assert (options["verbose"], options["quiet"]) == (1, 2)
    assert options.config.spool_file() == Path("/s")


def test_bad_config_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unusable config exits 2 with one line on standard error."""
    config = tmp_path / "bartoc.toml"
    config.write_text('name = "worker1"\nretry_count = -1\n')

    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["-c", str(config)])

    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "retry_count" in error


class Bartoc:
    """
    C{twistd bartoc} run in the foreground in a test directory.
    """

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.spool = directory / "spool" / "bartoc.sqlite3"
        self.log = directory / "bartoc.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Bartoc:
        """
        Start the process.
        """
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BARTOC_", "BARTOS_", "BARTO_CLI_"))
        }
        env["XDG_DATA_HOME"] = str(self.directory / "data")
        env["XDG_CONFIG_HOME"] = str(self.directory / "config")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *TWISTD,
                    "--nodaemon",
                    "--pidfile=",
                    "bartoc",
                    "-c",
                    str(self.config),
                    "-r",
                    str(self.spool),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                start_new_session=True,
            )
        return self

    def exited(self) -> bool:
        """
        Whether the process has ended.
        """
        return self.process is not None and self.process.poll() is not None

    def status(self) -> int | None:
        """
        The exit status, once ended.
        """
        assert self.process is not None
        return self.process.poll()

    def signal(self, number: int) -> None:
        """
        Send a signal to the worker.
        """
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        """
        KILL the worker's process group and reap it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def output(self) -> str:
        """
        What the worker logged.
        """
        return self.log.read_text(errors="replace")


@pytest.fixture
def bartoc_process(tmp_path: Path) -> Iterator[list[Bartoc]]:
    """
    Holds the started workers; none outlives the test.
    """
    started: list[Bartoc] = []
    yield started
    for worker in started:
        worker.kill()


def dispatch(*cmds: str, run: str = RUN) -> wire.Dispatch:
    """
    A dispatch of C{cmds}.
    """
    return wire.Dispatch(
        run=run, schedule="job", slot="2026-12-03T16:45:00Z", cmds=cmds
    )


@pytest.mark.integration
def test_bad_config_process_exits_2(tmp_path: Path) -> None:
    """twistd bartoc with a bad config prints one line and exits 2."""
    config = tmp_path / "bartoc.toml"
    config.write_text('name = "worker1"\nmissed_tick = "Never"\n')

    result = subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", "bartoc", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "missed_tick" in result.stderr


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_gives_up_with_status_1(
    tmp_path: Path, bartoc_process: list[Bartoc], wait_until: Any
) -> None:
    """With nothing to connect to, retry_count failures end the process, 1."""
    from support.processes import free_port

    config = write_config(tmp_path / "bartoc.toml", free_port(), retry_count=2)
    worker = Bartoc(tmp_path, config).start()
    bartoc_process.append(worker)

    await wait_until(worker.exited, tries=1500)

    assert worker.status() == 1
    assert "giving up after 2 failed attempts" in worker.output()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_run_delivered_then_clean_stop(
    tmp_path: Path, bartoc_process: list[Bartoc], bartos: Any, wait_until: Any
) -> None:
    """A dispatched run reaches the server; TERM then ends the worker."""
    config = write_config(tmp_path / "bartoc.toml", bartos.port)
    worker = Bartoc(tmp_path, config).start()
    bartoc_process.append(worker)
    await wait_until(lambda: bool(bartos.of("hello")), tries=1500)

    bartos.open[0].send(dispatch("echo one", "echo two >&2"))
    await wait_until(lambda: bool(bartos.of("finished")))
    worker.signal(signal.SIGTERM)
    await wait_until(worker.exited, tries=1500)

    assert worker.status() == STOPPED_BY_TERM
    hello = bartos.of("hello")[0]
    assert (hello["name"], hello["running"], hello["spooled"]) == ("worker1", [], 0)
    assert hello["host"]["kernel"].startswith(os.uname().sysname)
    lines = [(o["stream"], o["lines"]) for o in bartos.of("output")]
    assert lines == [("stdout", ["one"]), ("stderr", ["two"])]
    assert bartos.of("finished")[0]["state"] == "succeeded"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_shutdown_stops_running_commands(
    tmp_path: Path, bartoc_process: list[Bartoc], bartos: Any, wait_until: Any
) -> None:
    """TERM gives a run the grace, then stops it; its end is delivered."""
    config = write_config(tmp_path / "bartoc.toml", bartos.port)
    worker = Bartoc(tmp_path, config).start()
    bartoc_process.append(worker)
    await wait_until(lambda: bool(bartos.of("hello")), tries=1500)

    bartos.open[0].send(dispatch("echo going; sleep 300"))
    await wait_until(lambda: bool(bartos.of("output")))
    worker.signal(signal.SIGTERM)
    await wait_until(worker.exited, tries=1500)

    assert worker.status() == STOPPED_BY_TERM
    [finished] = bartos.of("finished")
    assert (finished["state"], finished["reason"]) == (
        "cancelled",
        "the worker shut down",
    )


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_sigkilled_worker_delivers_its_spool(
    tmp_path: Path, bartoc_process: list[Bartoc], bartos: Any, wait_until: Any
) -> None:
    """Records not acked before a SIGKILL are delivered after a restart."""
    bartos.ack = False
    config = write_config(tmp_path / "bartoc.toml", bartos.port)
    first = Bartoc(tmp_path, config).start()
    bartoc_process.append(first)
    await wait_until(lambda: bool(bartos.of("hello")), tries=1500)
    bartos.open[0].send(dispatch("echo kept"))
    await wait_until(lambda: bool(bartos.of("finished")))
    sent = [body for body in bartos.received if "rec" in body]

    first.kill()
    await wait_until(lambda: not bartos.open)
    bartos.ack = True
    second = Bartoc(tmp_path, config).start()
    bartoc_process.append(second)
    await wait_until(lambda: len(bartos.of("hello")) == 2, tries=1500)
    await wait_until(lambda: len(bartos.of("finished")) == 2)

    resent = [body for body in bartos.received if "rec" in body][len(sent) :]
    assert resent == sent
    assert bartos.of("hello")[1]["spooled"] == len(sent)
