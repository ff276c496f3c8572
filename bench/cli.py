"""
How long barto-cli takes to answer from a big store.

Fills a store (SQLite, MariaDB or both) with C{--runs} runs and
C{--lines} output lines spread over C{--workers} workers with
C{--schedules} schedules each, starts C{twistd -n bartos} on it, and
times, from process start to exit, C{barto-cli failed}, C{runs --limit
50}, C{list -n NAME -c SCHEDULE} and C{cmd SCHEDULE}: C{--repeat} runs
each, min / median / max of the wall time and of the CPU time (user +
system) the process used, in milliseconds; on a busy machine the wall
time also holds the time spent waiting for a processor.  It also prints
the time the server takes to answer each request over one open
connection (the rest is the CLI's start-up) and the start-up floor of
the interpreter with Twisted's reactor, for scale.  Target: 300 ms each.

Usage::

    python bench/cli.py                # 1,000,000 runs, 10,000,000 lines
    python bench/cli.py --runs 100000 --lines 1000000 --dialect both
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The script's own folder holds bench/calendar.py, which would shadow the
# standard library's calendar module: put the project root there instead.
sys.path[0] = str(ROOT)

from barto.config import ServerConfig, load_server_config  # noqa: E402
from barto.server.store import slot_run_id  # noqa: E402
from barto.server.tap import prepare_store  # noqa: E402

TARGET_MS = 300.0

NAME_POOL = 100
"""Schedule names are shared: each is on C{workers * schedules / 100}
workers, as an updater or a backup is on many machines."""

REASONS = {"missed": "worker offline (Skip)", "timed_out": "timed out"}
"""The reasons of the runs that have one."""

STATES = ("failed",) * 4 + ("timed_out",) + ("missed",) + ("succeeded",) * 94
"""One run in twenty ends badly; missed runs have no output."""

PHRASES = (
    "Reading package lists... Done",
    "Building dependency tree... Done",
    "copying /var/lib/data/archive-{n}.tar to backup host",
    "checked {n} files, 0 errors",
    "Get:{n} http://deb.debian.org/debian bookworm/main amd64",
    "error: could not lock /var/lib/dpkg/lock-frontend ({n})",
)


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 nothing listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def schedule_names(worker: int, count: int) -> list[str]:
    """
    The schedules of worker number C{worker}.
    """
    return [f"s{(worker * 7 + k * 10) % NAME_POOL}" for k in range(count)]


def layout(args: argparse.Namespace) -> list[tuple[str, str]]:
    """
    Every (worker, schedule) pair the store holds.
    """
    pairs = []
    for worker in range(args.workers):
        for name in schedule_names(worker, args.schedules):
            pairs.append((f"w{worker}", name))
    return pairs


def generate(
    args: argparse.Namespace, now: int
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """
    Each run's row and its output rows, oldest slots first.

    Runs of a schedule are an hour apart, ending an hour ago; output
    lines go to the runs that did run, as evenly as C{--lines} allows.
    """
    pairs = layout(args)
    per_pair = max(1, args.runs // len(pairs))
    ran = args.runs * sum(s != "missed" for s in STATES) / len(STATES)
    lines_per_run = args.lines / max(ran, 1)
    carry = 0.0
    produced = 0
    for step in range(per_pair, 0, -1):
        slot = now - step * 3600
        for index, (worker, schedule) in enumerate(pairs):
            if produced >= args.runs:
                return
            produced += 1
            state = STATES[(index * 31 + step * 17) % len(STATES)]
            run_id = slot_run_id(worker, schedule, slot)
            at = slot * 1_000_000
            missed = state == "missed"
            carry += 0.0 if missed else lines_per_run
            count = int(carry)
            carry -= count
            code = {"succeeded": 0, "failed": 1}.get(state)
            reason = REASONS
            run = (
                run_id,
                worker,
                schedule,
                slot,
                "schedule",
                state,
                reason.get(state, ""),
                code,
                at,
                None if missed else at + 1000,
                None if missed else at + 2000,
                None if missed else at + 1_500_000,
                count,
            )
            output = [
                (
                    run_id,
                    0,
                    line,
                    0,
                    "stdout",
                    at + 3000 + line,
                    PHRASES[(line + index) % len(PHRASES)].format(n=line),
                    0,
                )
                for line in range(count)
            ]
            yield run, output


RUN_COLUMNS = (
    "id, worker, schedule, slot, `trigger`, state, reason, exit_code,"
    " created_at, dispatched_at, started_at, ended_at, output_lines"
)
OUTPUT_COLUMNS = "run_id, seq, line, cmd, stream, at, data, cut"


def marks(count: int) -> str:
    """
    C{count} SQLite placeholders.
    """
    return ", ".join("?" * count)


def fill_sqlite(path: str, args: argparse.Namespace, now: int) -> None:
    """
    Bulk-load the SQLite store: large transactions of executemany.
    """
    import sqlite3

    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("PRAGMA cache_size = -500000")
    runs: list[tuple[Any, ...]] = []
    output: list[tuple[Any, ...]] = []
    run_sql = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({marks(13)})"
    out_sql = f"INSERT INTO output ({OUTPUT_COLUMNS}) VALUES ({marks(8)})"

    def flush() -> None:
        connection.executemany(run_sql, runs)
        connection.executemany(out_sql, output)
        connection.commit()
        runs.clear()
        output.clear()

    for run, lines in generate(args, now):
        runs.append(run)
        output.extend(lines)
        if len(output) >= 500_000 or len(runs) >= 100_000:
            flush()
    flush()
    fill_marks(connection, "?", args, now)
    connection.close()


def fill_marks(
    connection: Any,
    mark: str,
    args: argparse.Namespace,
    now: int,
) -> None:
    """
    The schedules' last slots, as the scheduler would have left them.
    """
    cursor = connection.cursor()
    cursor.executemany(
        "INSERT INTO schedule_marks (worker, schedule, last_slot)"
        f" VALUES ({mark}, {mark}, {mark})",
        [(worker, schedule, now - 3600) for worker, schedule in layout(args)],
    )
    connection.commit()
    cursor.close()


def _tsv(value: Any) -> str:
    return "\\N" if value is None else str(value)


def in_key_order(path: Path) -> None:
    """
    Sort a tab-separated file by its primary key (the run id, then the
    numbers after it), so InnoDB appends to its clustered index instead
    of splitting pages all over it.
    """
    env = dict(os.environ, LC_ALL="C")
    keys = ["-k1,1", "-k2,2n", "-k3,3n"]
    subprocess.run(
        ["sort", "-t", "\t", *keys, "-S", "2G", "-o", str(path), str(path)],
        env=env,
        check=True,
    )


def fill_mariadb(
    db: dict[str, Any],
    args: argparse.Namespace,
    now: int,
) -> None:
    """
    Bulk-load the MariaDB store with C{LOAD DATA LOCAL INFILE} from
    tab-separated files.
    """
    import mysql.connector

    folder = Path(tempfile.mkdtemp(prefix="barto-bench-tsv-"))
    runs_file = folder / "runs.tsv"
    output_file = folder / "output.tsv"
    with runs_file.open("w") as runs, output_file.open("w") as output:
        for run, lines in generate(args, now):
            runs.write("\t".join(map(_tsv, run)) + "\n")
            for line in lines:
                output.write("\t".join(map(_tsv, line)) + "\n")

    for path in (runs_file, output_file):
        in_key_order(path)

    connection = mysql.connector.connect(
        **db, use_pure=True, allow_local_infile=True, autocommit=False
    )
    cursor = connection.cursor()
    cursor.execute("SET unique_checks = 0")
    for table, columns, path in (
        ("runs", RUN_COLUMNS, runs_file),
        ("output", OUTPUT_COLUMNS, output_file),
    ):
        cursor.execute(
            f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table}"
            f" CHARACTER SET utf8mb4 ({columns})"
        )
        connection.commit()
    cursor.close()
    fill_marks(connection, "%s", args, now)
    connection.close()
    shutil.rmtree(folder)


def server_config(
    folder: Path, dialect: str, db: dict[str, Any] | None, port: int
) -> Path:
    """
    The bartos config of the benchmark; schedules never fire.
    """
    if dialect == "sqlite":
        store = f'[sqlite]\npath = "{folder / "store.sqlite3"}"\n'
    else:
        assert db is not None
        store = textwrap.dedent(
            f"""\
            [mariadb]
            host = "{db["host"]}"
            port = {db["port"]}
            username = "{db["user"]}"
            password = "{db["password"]}"
            database = "{db["database"]}"
            """
        )
    path = folder / "bartos.toml"
    path.write_text(
        f'[listen]\nip = "127.0.0.1"\nport = {port}\n'
        + store
        + '[schedules.w1]\nschedules = [{ name = "s7", on_calendar ='
        ' "2099-01-01", cmds = ["true"] }]\n'
    )
    return path


def wait_for_port(
    port: int,
    process: subprocess.Popen[bytes],
    timeout: float,
) -> None:
    """
    Wait until bartos listens; fail if it exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bartos exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("bartos did not start listening in time")


def clean_environment() -> dict[str, str]:
    """
    The environment of the timed processes: bytecode caching on, as in
    an installed package.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def time_process(
    argv: Sequence[str],
    repeat: int,
) -> tuple[list[float], list[float]]:
    """
    Wall and CPU (user + system) times in milliseconds of C{argv}, from
    start to exit.

    The CPU time is what the process itself needs; on a busy machine the
    wall time is longer by however long it waited for a processor.

    @raise SystemExit: the command failed.
    """
    env = clean_environment()
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, check=False)
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime
        used -= before.ru_utime + before.ru_stime
        cpus.append(used * 1000)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv)} exited {done.returncode}:"
                + f" {done.stderr.decode()}"
            )
    return walls, cpus


def time_answers(
    port: int, requests: Sequence[tuple[str, dict[str, Any]]], repeat: int
) -> list[list[float]]:
    """
    Milliseconds from request to answer over one open CLI connection.
    """
    code = textwrap.dedent(
        f"""\
        import json, sys, time
        from twisted.internet import defer, task
        from barto.cli import client
        from barto.config import EndpointConfig

        requests = json.loads(sys.argv[1])

        async def main(reactor):
            session = await client.connect(
                reactor, EndpointConfig(port={port}), "bench", 60
            )
            found = []
            for method, params in requests:
                times = []
                for _ in range({repeat}):
                    start = time.perf_counter()
                    await session.request(method, params)
                    times.append((time.perf_counter() - start) * 1000)
                found.append(times)
            session.close()
            print(json.dumps(found))

        task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))
        """
    )
    import json

    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(requests)],
        capture_output=True,
        env=clean_environment(),
        check=True,
    )
    found: list[list[float]] = json.loads(done.stdout)
    return found


def summary(times: Sequence[float]) -> str:
    """
    min / median / max of some milliseconds.
    """
    middle = statistics.median(times)
    return f"{min(times):7.0f} {middle:7.0f} {max(times):7.0f}"


def bench(dialect: str, args: argparse.Namespace) -> None:
    """
    Fill one store, start bartos on it and time the four commands.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"barto-bench-cli-{dialect}-"))
    port = free_port()
    db = None
    if dialect == "mariadb":
        db = create_database(args)
    config_path = server_config(folder, dialect, db, port)
    config: ServerConfig = load_server_config(str(config_path), environ={})
    now = int(time.time())
    prepare_store(config, now)

    print(
        f"\n== {dialect}: {args.runs:,} runs, {args.lines:,} output lines,"
        f" {args.workers:,} workers x {args.schedules} schedules"
    )
    start = time.perf_counter()
    if dialect == "sqlite":
        fill_sqlite(config.sqlite_path, args, now)
    else:
        assert db is not None
        fill_mariadb(db, args, now)
    print(f"fill: {time.perf_counter() - start:.0f} s")

    env = clean_environment()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "bartos",
            "-q",
            "-c",
            str(config_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "bartos.log", "w"),
        env=env,
    )
    try:
        wait_for_port(port, server, 600)
        run_timings(port, folder, args)
    finally:
        server.terminate()
        server.wait(60)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            if db is not None:
                drop_database(db)


def run_timings(port: int, folder: Path, args: argparse.Namespace) -> None:
    """
    Time the commands against the running server and print the table.
    """
    config = folder / "barto-cli.toml"
    config.write_text(f'[bartos]\nhost = "127.0.0.1"\nport = {port}\n')
    repeat = args.repeat
    worker, schedule = "w17", schedule_names(17, args.schedules)[3]
    commands: list[tuple[list[str], tuple[str, dict[str, Any]]]] = [
        (["failed"], ("failed", {})),
        (["runs", "--limit", "50"], ("runs", {"limit": 50})),
        (
            ["list", "-n", worker, "-c", schedule],
            ("list", {"worker": worker, "schedule": schedule}),
        ),
        (["cmd", schedule], ("cmd", {"schedule": schedule})),
    ]
    cli = [sys.executable, "-c", "from barto.cli.main import run; run()"]
    time_process([*cli, "-c", str(config), "runs", "--limit", "1"], 1)
    floor = time_process(
        [sys.executable, "-c", "import twisted.internet.reactor"], args.repeat
    )
    helps = time_process([*cli, "--help"], args.repeat)
    requests = [request for _, request in commands]
    answers = time_answers(port, requests, args.repeat)

    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    columns = "min  median     max"
    print(f"{'':<28} {'wall, ms':>23}   {'CPU, ms':>23}   {'server, ms':>23}")
    print(f"{'command':<28} {columns:>23}   {columns:>23}   {columns:>23}")
    for (argv, _), answer in zip(commands, answers, strict=True):
        walls, cpus = time_process([*cli, "-c", str(config), *argv], repeat)
        verdict = "ok" if statistics.median(walls) <= TARGET_MS else "OVER"
        name = " ".join(argv)
        figures = f"{summary(walls)}   {summary(cpus)}   {summary(answer)}"
        print(f"{name:<28} {figures}  {verdict}")
    for name, (walls, cpus) in (
        ("(python + reactor import)", floor),
        ("(barto-cli --help)", helps),
    ):
        print(f"{name:<28} {summary(walls)}   {summary(cpus)}")


def create_database(args: argparse.Namespace) -> dict[str, Any]:
    """
    A fresh MariaDB database for the benchmark.
    """
    import mysql.connector

    db = {
        "host": args.mariadb_host,
        "port": args.mariadb_port,
        "user": args.mariadb_user,
        "password": args.mariadb_password,
        "database": f"barto_bench_{uuid.uuid4().hex[:8]}",
    }
    connection = mysql.connector.connect(
        host=db["host"],
        port=db["port"],
        user=db["user"],
        password=db["password"],
        use_pure=True,
    )
    connection.cursor().execute(
        f"CREATE DATABASE `{db['database']}` CHARACTER SET utf8mb4"
    )
    connection.close()
    return db


def drop_database(db: dict[str, Any]) -> None:
    """
    Drop the benchmark's database.
    """
    import mysql.connector

    connection = mysql.connector.connect(
        host=db["host"],
        port=db["port"],
        user=db["user"],
        password=db["password"],
        use_pure=True,
    )
    connection.cursor().execute(f"DROP DATABASE IF EXISTS `{db['database']}`")
    connection.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The benchmark's command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--schedules", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--dialect", choices=["sqlite", "mariadb", "both"], default="sqlite"
    )
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--mariadb-host", default="127.0.0.1")
    parser.add_argument("--mariadb-port", type=int, default=3306)
    parser.add_argument("--mariadb-user", default="root")
    parser.add_argument("--mariadb-password", default="")
    return parser.parse_args(argv)


def main() -> None:
    """
    Run the benchmark for the chosen dialects.
    """
    args = parse_args()
    both = ["sqlite", "mariadb"]
    dialects = both if args.dialect == "both" else [args.dialect]
    for dialect in dialects:
        bench(dialect, args)


if __name__ == "__main__":
    main()
