"""
Benchmark of bartoc against a real bartos on MariaDB.

Two phases, each with a fresh bartos and bartoc on loopback:

1. one run of C{head -c 150000000 /dev/urandom | base64} (about 200 MB
   of output): MB/s from the slot to the run stored, and bartoc's peak
   RSS;
2. 1,000 schedules of C{true} due at the same second: runs/s from the
   slot to the last run stored, and bartoc's peak RSS.

Usage: C{python bench/worker.py [--only big|short]}. MariaDB is reached
as the tests reach it (C{BARTO_TEST_MARIADB_HOST}, C{_PORT}, C{_USER},
C{_PASSWORD}; root on 127.0.0.1:3306 by default); a throwaway database
is created and dropped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mysql.connector

HOST = os.environ.get("BARTO_TEST_MARIADB_HOST", "127.0.0.1")
PORT = int(os.environ.get("BARTO_TEST_MARIADB_PORT", "3306"))
USER = os.environ.get("BARTO_TEST_MARIADB_USER", "root")
PASSWORD = os.environ.get("BARTO_TEST_MARIADB_PASSWORD", "")

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
BIG = "head -c 150000000 /dev/urandom | base64"
SHORT_RUNS = 1000


def free_port() -> int:
    """
    A free TCP port on 127.0.0.1.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connect(database: str | None = None) -> Any:
    """
    A connection to the benchmark's MariaDB server.
    """
    return mysql.connector.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        database=database,
        use_pure=True,
        autocommit=True,
    )


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """
    Poll C{condition}; the time it first held.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def peak_rss_mb(pid: int) -> float:
    """
    The peak resident set size of process C{pid}, in MB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def calendar_at(moment: datetime) -> str:
    """
    An on_calendar expression for exactly C{moment} (UTC).
    """
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class Phase:
    """
    One bartos and one bartoc with the given schedules.
    """

    def __init__(self, directory: Path, database: str, schedules: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        port = free_port()
        (directory / "bartos.toml").write_text(
            'timezone = "UTC"\n'
            "[listen]\n"
            f'ip = "127.0.0.1"\nport = {port}\n'
            "[mariadb]\n"
            f'host = "{HOST}"\nport = {PORT}\nusername = "{USER}"\n'
            f'password = "{PASSWORD}"\ndatabase = "{database}"\n'
            "[schedules.bench]\n"
            f"schedules = [\n{schedules}]\n"
        )
        (directory / "bartoc.toml").write_text(
            'name = "bench"\n'
            "retry_count = 0\n"
            f"max_output_bytes = {512 * 1024 * 1024}\n"
            f"spool_max_bytes = {1024 * 1024 * 1024}\n"
            f'[bartos]\nhost = "127.0.0.1"\nport = {port}\n'
        )
        self.port = port
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> int:
        """
        Start both programs; bartoc's pid.
        """
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BARTOS_", "BARTOC_"))
        }
        env["XDG_DATA_HOME"] = str(self.directory / "data")
        for name, extra in (
            ("bartos", []),
            ("bartoc", ["-r", str(self.directory / "spool.sqlite3")]),
        ):
            config = str(self.directory / f"{name}.toml")
            with (self.directory / f"{name}.out").open("ab") as out:
                process = subprocess.Popen(
                    [*TWISTD, "--nodaemon", "--pidfile=", name, "-c", config, *extra],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    env=env,
                    start_new_session=True,
                )
            self.processes.append(process)
            if name == "bartos":
                wait(self._listening, 60, "bartos to listen")
        wait(self._welcomed, 60, "bartoc to connect")
        return self.processes[-1].pid

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def _welcomed(self) -> bool:
        log = (self.directory / "bartoc.out").read_text(errors="replace")
        return "welcomed by bartos" in log

    def finished_at(self) -> float:
        """
        When bartoc logged the last run finishing, in seconds since the epoch.
        """
        log = (self.directory / "bartoc.out").read_text(errors="replace")
        stamps = [line[:24] for line in log.splitlines() if " finished: " in line]
        return datetime.fromisoformat(stamps[-1]).timestamp()

    def stop(self) -> None:
        """
        Stop both programs, whatever happens.
        """
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


def one_value(database: str, sql: str) -> Any:
    """
    The single value a query returns.
    """
    db = connect(database)
    try:
        cursor = db.cursor()
        cursor.execute(sql)
        row = cursor.fetchone()
        return row[0] if row else None
    finally:
        db.close()


def big_output(root: Path, database: str) -> None:
    """
    Phase 1: one run writing about 200 MB.
    """
    slot = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=8)
    phase = Phase(
        root / "big",
        database,
        f'  {{ name = "big", on_calendar = "{calendar_at(slot)}",'
        f' cmds = ["{BIG}"] }},\n',
    )
    try:
        pid = phase.start()
        done = wait(
            lambda: (
                one_value(
                    database,
                    "SELECT count(*) FROM runs WHERE schedule = 'big'"
                    " AND state NOT IN ('pending', 'dispatched', 'running')",
                )
                == 1
            ),
            600,
            "the big run to be stored",
        )
        rss = peak_rss_mb(pid)
        ran = phase.finished_at() - slot.timestamp()
    finally:
        phase.stop()

    state = one_value(database, "SELECT state FROM runs WHERE schedule = 'big'")
    stored = one_value(
        database,
        "SELECT SUM(LENGTH(data) + 1) FROM output o JOIN runs r"
        " ON o.run_id = r.id WHERE r.schedule = 'big'",
    )
    seconds = done - slot.timestamp()
    megabytes = int(stored or 0) / 1e6
    print(f"big run: state {state}, {megabytes:.1f} MB stored in {seconds:.1f} s")
    print(f"  throughput end to end: {megabytes / seconds:.1f} MB/s")
    print(f"  the run ended on the worker after {ran:.1f} s")
    print(f"  bartoc peak RSS: {rss:.1f} MB")


def short_runs(root: Path, database: str) -> None:
    """
    Phase 2: many runs of C{true} due at once.
    """
    slot = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=12)
    schedules = "".join(
        f'  {{ name = "t{n}", on_calendar = "{calendar_at(slot)}",'
        ' cmds = ["true"] },\n'
        for n in range(SHORT_RUNS)
    )
    phase = Phase(root / "short", database, schedules)
    try:
        pid = phase.start()
        done = wait(
            lambda: (
                one_value(
                    database,
                    "SELECT count(*) FROM runs WHERE schedule LIKE 't%'"
                    " AND state = 'succeeded'",
                )
                == SHORT_RUNS
            ),
            600,
            "the short runs to be stored",
        )
        rss = peak_rss_mb(pid)
        ran = phase.finished_at() - slot.timestamp()
    finally:
        phase.stop()

    seconds = done - slot.timestamp()
    print(f"{SHORT_RUNS} runs of true stored in {seconds:.1f} s")
    print(f"  short runs: {SHORT_RUNS / seconds:.1f} runs/s")
    print(f"  the last run ended on the worker after {ran:.1f} s")
    print(f"  bartoc peak RSS: {rss:.1f} MB")


def main() -> None:
    """
    Run both phases (or the one C{--only} names) on a throwaway database.
    """
    parser = argparse.ArgumentParser(description="Benchmark bartoc.")
    parser.add_argument("--only", choices=("big", "short"), help="run one phase")
    only = parser.parse_args().only
    database = f"barto_bench_{uuid.uuid4().hex[:12]}"
    admin = connect()
    admin.cursor().execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    try:
        with tempfile.TemporaryDirectory(prefix="barto-bench-") as root:
            if only in (None, "big"):
                big_output(Path(root), database)
            if only is None:
                admin.cursor().execute(f"DROP DATABASE `{database}`")
                admin.cursor().execute(
                    f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
                )
            if only in (None, "short"):
                short_runs(Path(root), database)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


if __name__ == "__main__":
    main()
