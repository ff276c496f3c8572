"""
Parts dying while runs stream output, with real processes: bartos killed
and restarted, bartoc killed and restarted, MariaDB stopped and started,
and links that stop answering. Nothing is lost, nothing is doubled, and
every run ends in the state the docs promise.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.cluster import (
    Database,
    Deployment,
    Schedule,
    pid_alive,
    sigkill,
    wait,
)
from support.processes import ThrowawayMariaDB

pytestmark = pytest.mark.integration


class Stream:
    """
    A command that prints 1, 2, 3, ..., a line every 50 ms, until the test
    says stop; then it writes how many lines it printed to a file.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stop_file = folder / "stop"
        self.count_file = folder / "count"

    @property
    def command(self) -> str:
        """
        The shell command (it gives up by itself after 3000 lines).
        """
        return (
            f"i=0; while [ ! -e {self.stop_file} ] && [ $i -lt 3000 ];"
            " do i=$((i+1)); echo $i; sleep 0.05; done;"
            f" echo $i > {self.count_file}"
        )

    def stop(self) -> None:
        """
        Let the command end.
        """
        self.stop_file.touch()

    def printed(self) -> list[str]:
        """
        Every line the command printed, once it has ended.
        """
        count = int(wait(self.count_file.read_text, "the command's count"))
        return [str(number) for number in range(1, count + 1)]


def test_bartos_killed_repeatedly_loses_and_doubles_nothing(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    """SIGKILL bartos three times mid-stream: every line stored once, in order."""
    stream = Stream(tmp_path / "stream")
    site = deploy(schedules=[Schedule("stream", [stream.command])], lost_grace=60)
    site.start()
    run = site.cli.fire("w1", "stream")

    stored = 0
    for kill in range(1, 5):
        floor = stored + 10
        wait(
            lambda floor=floor: len(site.store.lines(run)) >= floor,
            f"{floor} lines stored",
        )
        if kill == 4:
            break
        sigkill(site.server)
        stored = len(site.store.lines(run))
        site.start_server()
        site.wait_welcomed(kill + 1)
    stream.stop()

    assert site.store.wait_final(run) == "succeeded", site.logs()
    printed = stream.printed()
    shown = site.cli.json("show", run)
    assert [line["data"] for line in shown["output"]] == printed
    assert shown["run"]["output_lines"] == len(printed)
    assert site.store.lines(run) == printed
    assert site.tracebacks() == ""


def spooled_lines(spool: Path, run: str) -> list[str]:
    """
    The output lines of C{run} that the worker's spool still holds.
    """
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT frame FROM records WHERE run = ? AND kind = 'output' ORDER BY rec",
            (run,),
        ).fetchall()
    finally:
        db.close()
    return [line for (frame,) in rows for line in json.loads(frame)["lines"]]


def still_alive(pids: list[int], timeout: float) -> list[int]:
    """
    The processes among C{pids} still alive after C{timeout} seconds (or
    none as soon as all are gone).
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.fixture
def pid_files(tmp_path: Path) -> Iterator[Path]:
    """
    A folder for the pids a command writes; those processes are killed
    afterwards, whatever the test found (if the pid is still theirs).
    """
    folder = tmp_path / "pids"
    folder.mkdir()
    try:
        yield folder
    finally:
        for file in folder.glob("*.pid"):
            try:
                pid = int(file.read_text())
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"sleep" in command or str(folder).encode() in command:
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass


def test_bartoc_killed_mid_run(
    deploy: Callable[..., Deployment], pid_files: Path
) -> None:
    """SIGKILL bartoc mid-run: lost after the grace, no child left, spool resent."""
    command = (
        f"echo $$ > {pid_files}/shell.pid; "
        f"sleep 300 & echo $! > {pid_files}/grandchild.pid; "
        "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.05; done"
    )
    site = deploy(schedules=[Schedule("forever", [command])])
    site.start()
    run = site.cli.fire("w1", "forever")
    wait(lambda: len(site.store.lines(run)) >= 5, "lines to be stored")
    pids = [
        int((pid_files / f"{name}.pid").read_text()) for name in ("shell", "grandchild")
    ]

    # Hold the server still for a moment so that the worker has records it
    # spooled and the server never acknowledged when it dies.
    site.server.signal(signal.SIGSTOP)
    time.sleep(0.5)
    sigkill(site.worker)
    site.server.signal(signal.SIGCONT)
    pending = spooled_lines(site.worker.directory / "spool.sqlite3", run)

    assert site.store.wait_final(run) == "lost", site.logs()
    assert site.store.run(run)["reason"] == "worker vanished"  # type: ignore[index]
    survivors = still_alive(pids, 10)

    site.start_worker()
    wait(lambda: site.store.state(run) != "lost", "the restarted worker's report")
    stored = site.store.lines(run)
    assert pending, "the spool held nothing unacknowledged"
    assert set(pending) <= set(stored)
    assert stored == [f"line {n}" for n in range(1, len(stored) + 1)]
    # docs/worker.md: a restarted worker reports the cut-off run failed,
    # and docs/server.md: a late report wins over lost.
    ended = site.store.run(run)
    assert ended is not None
    assert ended["state"] == "failed"
    assert ended["reason"] == "the worker stopped during the run"
    assert survivors == [], "processes of the run outlived the worker"
    assert site.tracebacks() == ""


@pytest.mark.mariadb
def test_mariadb_outage_mid_stream(
    throwaway_mariadb: ThrowawayMariaDB,
    deploy: Callable[..., Deployment],
    tmp_path: Path,
) -> None:
    """Stop MariaDB mid-stream and start it again: nothing lost, nothing doubled."""
    stream = Stream(tmp_path / "stream")
    database = Database("127.0.0.1", throwaway_mariadb.port, "root", "", "barto")
    site = deploy(
        schedules=[Schedule("stream", [stream.command])],
        store=database,
        lost_grace=60,
    )
    site.start()
    run = site.cli.fire("w1", "stream")
    wait(lambda: len(site.store.lines(run)) >= 10, "lines to be stored")

    throwaway_mariadb.stop()
    refused = site.cli("runs", "--json")
    time.sleep(1.5)
    throwaway_mariadb.start()
    during = len(site.store.lines(run))
    wait(lambda: len(site.store.lines(run)) >= during + 10, "lines after the outage")
    stream.stop()

    assert site.store.wait_final(run) == "succeeded", site.logs()
    assert refused.returncode == 1, refused
    assert "(unavailable)" in refused.stderr
    printed = stream.printed()
    assert site.store.lines(run) == printed
    shown = site.cli.json("show", run)
    assert [line["data"] for line in shown["output"]] == printed
    assert shown["run"]["output_lines"] == len(printed)
    # Twisted's adbapi logs a traceback itself ("Cursor creation failed")
    # when a pooled connection went stale; any other one is a failure.
    server_log = site.server.output()
    assert server_log.count("Traceback") == server_log.count("Cursor creation failed")
    assert "Traceback" not in site.worker.output()


def test_half_open_links_are_noticed(deploy: Callable[..., Deployment]) -> None:
    """A stopped worker is dropped by the server, a stopped server by the worker."""
    site = deploy(schedules=[Schedule("idle", ["true"])])
    site.start()
    assert site.cli.clients() == ["w1"]

    site.worker.signal(signal.SIGSTOP)
    try:
        wait(
            lambda: "worker w1 disconnected" in site.server.output(),
            "the server to notice",
        )
        assert site.cli.clients() == []
        assert "ping timeout" in site.server.output()
    finally:
        site.worker.signal(signal.SIGCONT)
    site.wait_welcomed(2)
    assert site.cli.clients() == ["w1"]

    closed = site.worker.output().count("connection to bartos closed")
    site.server.signal(signal.SIGSTOP)
    try:
        wait(
            lambda: site.worker.output().count("connection to bartos closed") > closed,
            "the worker to notice",
        )
    finally:
        site.server.signal(signal.SIGCONT)
    assert "ping timeout" in site.worker.output()
    site.wait_welcomed(3)
    assert site.cli.clients() == ["w1"]
    assert site.tracebacks() == ""
