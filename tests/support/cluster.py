"""
A real barto deployment for end-to-end tests: config files written to a
test's folder, C{twistd -n bartos} and C{twistd -n bartoc} processes,
C{barto-cli} runs, and a reader of the server's store.

Everything runs on loopback ports with its files under the test's folder;
the fixtures in C{tests/integration/conftest.py} make sure no process
outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.processes import Program, free_port, port_open, test_environment

FINAL_STATES = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "lost", "missed", "skipped"}
)

NEVER = "2099-01-01 00:00:00"
"""A calendar that never fires during a test: its runs are fired by hand."""


def toml_string(text: str) -> str:
    """
    C{text} as a TOML basic string (JSON's escapes are TOML's too).
    """
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class Schedule:
    """
    One schedule of C{[schedules.<worker>]}.
    """

    name: str
    cmds: Sequence[str]
    on_calendar: str = NEVER
    timeout: int | None = None

    def toml(self) -> str:
        """
        The schedule as a TOML inline table.
        """
        cmds = ", ".join(toml_string(cmd) for cmd in self.cmds)
        parts = [
            f"name = {toml_string(self.name)}",
            f"on_calendar = {toml_string(self.on_calendar)}",
            f"cmds = [{cmds}]",
        ]
        if self.timeout is not None:
            parts.append(f"timeout = {self.timeout}")
        return "{ " + ", ".join(parts) + " }"


@dataclass(frozen=True)
class Database:
    """
    Where a MariaDB database is (the C{mariadb} fixture's or a throwaway
    server's).
    """

    host: str
    port: int
    username: str
    password: str
    database: str


def server_config(
    port: int,
    *,
    store: Path | Database,
    schedules: Mapping[str, Sequence[Schedule]],
    lost_grace: float = 3,
    top: str = "",
    tables: str = "",
    plain: bool = True,
) -> str:
    """
    A C{bartos.toml} with short timeouts so that tests stay fast.

    @param store: an SQLite file, or a MariaDB database.
    @param top: top-level keys (C{api_key = ...}); they go first.
    @param tables: more tables (C{[listen.tls]}, C{[[tokens]]}, ...).
    """
    text = [top, "[listen]", 'ip = "127.0.0.1"', f"port = {port}"]
    if not plain:
        text.append("plain = false")
    if isinstance(store, Database):
        text += [
            "[mariadb]",
            f"host = {toml_string(store.host)}",
            f"port = {store.port}",
            f"username = {toml_string(store.username)}",
            f"password = {toml_string(store.password)}",
            f"database = {toml_string(store.database)}",
        ]
    else:
        text += ["[sqlite]", f"path = {toml_string(str(store))}"]
    text += [
        "[runs]",
        f"lost_grace = {lost_grace}",
        "dispatch_retry = 2",
        "[websocket]",
        "ping_interval = 1",
        "ping_timeout = 3",
        "[store]",
        "flush_interval = 0.05",
    ]
    for worker, items in schedules.items():
        text.append(f"[schedules.{toml_string(worker)}]")
        text.append("schedules = [")
        text += [f"  {item.toml()}," for item in items]
        text.append("]")
    text.append(tables)
    return "\n".join(text) + "\n"


def endpoint_table(port: int, *, prefix: str = "ws", extra: str = "") -> str:
    """
    The C{[bartos]} table of a worker's or the CLI's config.
    """
    return (
        f'[bartos]\nprefix = "{prefix}"\nhost = "127.0.0.1"\nport = {port}\n{extra}\n'
    )


def worker_config(name: str, port: int, *, top: str = "", bartos: str = "") -> str:
    """
    A C{bartoc.toml} that reconnects for ever and notices a dead link fast.

    @param top: more top-level keys.
    @param bartos: more keys of its C{[bartos]} table.
    """
    return (
        f"name = {toml_string(name)}\n"
        "retry_count = 0\n"
        "client_timeout = 4\n"
        "kill_grace = 1\n"
        "shutdown_grace = 2\n"
        f"{top}\n" + endpoint_table(port, extra=bartos)
    )


def cli_config(port: int, *, name: str = "barto-cli", bartos: str = "") -> str:
    """
    A C{barto-cli.toml}.
    """
    return f"name = {toml_string(name)}\n" + endpoint_table(port, extra=bartos)


def twistd(name: str, directory: Path, args: Sequence[str]) -> Program:
    """
    A C{twistd -n NAME} program whose files stay in C{directory}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    return Program(name, args, directory)


def bartos(directory: Path, config: Path) -> Program:
    """
    C{twistd -n bartos -c CONFIG}.
    """
    return twistd("bartos", directory, ["-c", str(config)])


def bartoc(directory: Path, config: Path) -> Program:
    """
    C{twistd -n bartoc -c CONFIG -r SPOOL}, the spool beside the config.
    """
    spool = directory / "spool.sqlite3"
    return twistd("bartoc", directory, ["-c", str(config), "-r", str(spool)])


def wait(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """
    Poll C{condition} until it returns something true; that value.

    @raise AssertionError: it never did within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def sigkill(program: Program) -> None:
    """
    SIGKILL the program's own process (not its group, as a crash would
    end it) and reap it.
    """
    assert program.process is not None
    program.process.send_signal(signal.SIGKILL)
    program.process.wait(10)


def pid_alive(pid: int) -> bool:
    """
    Whether a process with this id exists (and is not a zombie we own).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class Cli:
    """
    How to run C{barto-cli} against a deployment.

    @ivar config: its config file.
    @ivar home: its HOME and XDG folders.
    @ivar env: more environment variables.
    """

    config: Path | None
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{barto-cli [-c CONFIG] --timeout T ARGS}; its completed process.
        """
        environ = test_environment(self.home)
        environ.update(self.env)
        command = [sys.executable, "-m", "barto.cli.main"]
        if self.config is not None:
            command += ["-c", str(self.config)]
        return subprocess.run(
            [*command, "--timeout", str(timeout), *args],
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            env=environ,
            cwd=self.home,
            check=False,
        )

    def json(self, *args: str, timeout: float = 10.0) -> Any:
        """
        Run C{barto-cli --json ARGS}, which must succeed; its document.
        """
        done = self(*args, "--json", timeout=timeout)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        return json.loads(done.stdout)

    def fire(self, worker: str, schedule: str) -> str:
        """
        C{barto-cli run -n WORKER -c SCHEDULE}: the new run's id.
        """
        return str(self.json("run", "-n", worker, "-c", schedule)["run"])

    def state(self, run: str) -> str | None:
        """
        The run's state as C{barto-cli show --json} gives it, or C{None}
        while the server cannot show it (not stored yet).
        """
        done = self("show", run, "--json")
        if done.returncode != 0:
            return None
        return str(json.loads(done.stdout)["run"]["state"])

    def wait_final(self, run: str, timeout: float = 60.0) -> str:
        """
        Wait until C{show} gives the run a final state; that state.
        """
        found: list[str | None] = [None]

        def ended() -> bool:
            found[0] = self.state(run)
            return found[0] in FINAL_STATES

        wait(ended, f"run {run} to end", timeout)
        return str(found[0])

    def clients(self) -> list[str]:
        """
        The names C{barto-cli clients --json} lists.
        """
        return [item["name"] for item in self.json("clients")["clients"]]


class Store:
    """
    Read the server's store (SQLite or MariaDB) from the test process.
    """

    def __init__(self, where: Path | Database) -> None:
        self.where = where

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]] | None:
        """
        The rows of a query, or C{None} when the store cannot be read now.
        """
        if isinstance(self.where, Database):
            return self._mariadb(sql, args)
        return self._sqlite(sql, args)

    def _sqlite(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]] | None:
        if not self.where.exists():  # type: ignore[union-attr]
            return None
        db = sqlite3.connect(f"file:{self.where}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()

    def _mariadb(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]] | None:
        import mysql.connector

        where = self.where
        assert isinstance(where, Database)
        try:
            db = mysql.connector.connect(
                host=where.host,
                port=where.port,
                user=where.username,
                password=where.password,
                database=where.database,
                use_pure=True,
                connection_timeout=5,
            )
        except mysql.connector.Error:
            return None
        try:
            cursor = db.cursor()
            cursor.execute(sql.replace("?", "%s"), tuple(args))
            rows = [tuple(row) for row in cursor.fetchall()]
            cursor.close()
            return rows
        except mysql.connector.Error:
            return None
        finally:
            db.close()

    def state(self, run: str) -> str | None:
        """
        A run's state, or C{None} when it is not (readably) stored.
        """
        rows = self.rows("SELECT state FROM runs WHERE id = ?", run)
        return str(rows[0][0]) if rows else None

    def run(self, run: str) -> dict[str, Any] | None:
        """
        A run's row as a mapping.
        """
        columns = ("state", "reason", "exit_code", "output_lines", "trigger")
        rows = self.rows(
            "SELECT state, reason, exit_code, output_lines, `trigger`"
            " FROM runs WHERE id = ?",
            run,
        )
        return dict(zip(columns, rows[0], strict=True)) if rows else None

    def lines(self, run: str) -> list[str]:
        """
        A run's stored output lines, in order.
        """
        rows = self.rows(
            "SELECT data FROM output WHERE run_id = ? ORDER BY seq, line", run
        )
        return [str(row[0]) for row in rows or []]

    def counts(self, tables: Iterable[str] = ()) -> dict[str, int]:
        """
        The number of rows of each table.
        """
        names = tuple(tables) or (
            "runs",
            "commands",
            "output",
            "workers",
            "schedule_marks",
            "schema_version",
        )
        found = {}
        for name in names:
            rows = self.rows(f"SELECT COUNT(*) FROM {name}")
            assert rows is not None, f"cannot count {name}"
            found[name] = int(rows[0][0])
        return found

    def wait_final(self, run: str, timeout: float = 60.0) -> str:
        """
        Wait until the run is in a final state; that state.
        """
        return str(
            wait(
                lambda: (self.state(run) in FINAL_STATES) and self.state(run),
                f"run {run} to end",
                timeout,
            )
        )


class Deployment:
    """
    One bartos, one bartoc and a CLI, with their files under C{directory}.

    @ivar server: the C{bartos} program.
    @ivar worker: the C{bartoc} program.
    @ivar cli: C{barto-cli} with a config for the plain listener.
    @ivar store: a reader of the server's store.
    """

    def __init__(
        self,
        directory: Path,
        *,
        schedules: Sequence[Schedule],
        worker_name: str = "w1",
        store: Database | None = None,
        lost_grace: float = 3,
        worker_top: str = "",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.worker_name = worker_name
        where: Path | Database = store or directory / "store.sqlite3"
        self.store = Store(where)
        server_dir = directory / "bartos"
        worker_dir = directory / "bartoc"
        server_dir.mkdir(parents=True, exist_ok=True)
        worker_dir.mkdir(parents=True, exist_ok=True)
        self.server_config = server_dir / "bartos.toml"
        self.server_config.write_text(
            server_config(
                self.port,
                store=where,
                schedules={worker_name: schedules},
                lost_grace=lost_grace,
            )
        )
        self.worker_config = worker_dir / "bartoc.toml"
        self.worker_config.write_text(
            worker_config(worker_name, self.port, top=worker_top)
        )
        cli_file = directory / "barto-cli.toml"
        cli_file.write_text(cli_config(self.port))
        self.server = bartos(server_dir, self.server_config)
        self.worker = bartoc(worker_dir, self.worker_config)
        self.cli = Cli(cli_file, directory)

    def start_server(self) -> None:
        """
        Start bartos and wait until it listens.
        """
        self.server.start()
        wait(
            lambda: port_open(self.port) or self.server.process.poll() is not None,
            "bartos to listen",
        )
        assert self.server.process is not None
        assert self.server.process.poll() is None, self.server.output()

    def start_worker(self) -> None:
        """
        Start bartoc and wait until the server welcomed it.
        """
        welcomed = self.worker.output().count("welcomed by bartos")
        self.worker.start()
        self.wait_welcomed(welcomed + 1)

    def wait_welcomed(self, count: int, timeout: float = 60.0) -> None:
        """
        Wait until the worker's log shows C{count} welcomes in all.
        """
        wait(
            lambda: self.worker.output().count("welcomed by bartos") >= count,
            f"welcome number {count}",
            timeout,
        )

    def start(self) -> Deployment:
        """
        Start both programs.
        """
        self.start_server()
        self.start_worker()
        return self

    def stop(self) -> None:
        """
        Stop both programs (TERM, then KILL); nothing survives.
        """
        for program in (self.worker, self.server):
            program.stop(15)
            program.kill()

    def tracebacks(self) -> str:
        """
        Both logs if either holds a traceback, else C{""}.
        """
        both = self.server.output() + self.worker.output()
        return self.logs() if "Traceback" in both else ""

    def logs(self) -> str:
        """
        Both programs' logs, for assertion messages.
        """
        return (
            f"--- bartos ---\n{self.server.output()[-6000:]}\n"
            f"--- bartoc ---\n{self.worker.output()[-6000:]}"
        )
