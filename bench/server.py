"""
Benchmark a real C{bartos}: sustained runs, lags, CPU and memory.

    python bench/server.py                       # both stores, 60 s each
    python bench/server.py --store sqlite --seconds 20
    python bench/server.py --idle                # 100,000 idle schedules

The throughput mode starts C{twistd -n bartos} with C{--schedules}
schedules spread over C{--workers} workers (each schedule fires twice a
minute, at its own second), and C{--procs} processes of simulated workers
that answer every dispatch with C{started}, five output lines, C{exit}
and C{finished}. It prints runs stored per second, the lag from slot to
dispatch and from slot to the acknowledged C{finished} (p50, p99, max),
output lines stored per second, and the server's CPU and peak RSS.

The idle mode loads 100,000 schedules none of which is due within the
hour, connects no worker, and prints the server's CPU while idle.

Nothing here is part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

TWISTD = "from twisted.scripts.twistd import run; run()"
HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bartos exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("bartos did not start listening")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def store_section(store: str, folder: Path) -> tuple[str, str | None]:
    """
    The store's config text, and the MariaDB database to drop afterwards.
    """
    if store == "sqlite":
        return f'[sqlite]\npath = "{folder / "store.sqlite3"}"\n', None
    database = f"barto_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["mariadb", "-h127.0.0.1", "-uroot", "-e", f"CREATE DATABASE {database}"],
        check=True,
    )
    text = (
        '[mariadb]\nhost = "127.0.0.1"\nport = 3306\nusername = "root"\n'
        f'password = ""\ndatabase = "{database}"\n'
    )
    return text, database


def write_config(
    folder: Path, port: int, store: str, schedules: dict[str, list[str]]
) -> tuple[Path, str | None]:
    section, database = store_section(store, folder)
    lines = [
        f'[listen]\nip = "127.0.0.1"\nport = {port}\n',
        section,
        "[runs]\nlost_grace = 600\n",
    ]
    for worker, calendars in schedules.items():
        entries = ", ".join(
            f'{{ name = "s{index}", on_calendar = "{calendar}", cmds = ["true"] }}'
            for index, calendar in enumerate(calendars)
        )
        lines.append(f"[schedules.{worker}]\nschedules = [{entries}]\n")
    path = folder / "bartos.toml"
    path.write_text("\n".join(lines))
    return path, database


def profile_flags() -> list[str]:
    """
    twistd's profiler flags when C{BARTO_BENCH_PROFILE} names a file.
    """
    path = os.environ.get("BARTO_BENCH_PROFILE")
    if not path:
        return []
    return [f"--profile={path}", "--profiler=cprofile", "--savestats"]


def start_bartos(folder: Path, config: Path) -> subprocess.Popen[bytes]:
    log = (folder / "bartos.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            f"--pidfile={folder / 'bartos.pid'}",
            *profile_flags(),
            "bartos",
            "-q",
            "-c",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def dispatch_lags(
    config: Path, store: str, database: str | None, begin: float, end: float
) -> list[float]:
    """
    Slot to dispatch as the server recorded it (C{runs.dispatched_at}).
    """
    query = (
        "SELECT dispatched_at - slot * 1000000 FROM runs"
        " WHERE dispatched_at IS NOT NULL"
        f" AND slot >= {int(begin)} AND slot < {int(end)}"
    )
    if database is None:
        import sqlite3

        with sqlite3.connect(config.parent / "store.sqlite3") as db:
            rows = db.execute(query).fetchall()
    else:
        import mysql.connector

        db = mysql.connector.connect(
            host="127.0.0.1", user="root", database=database, use_pure=True
        )
        cursor = db.cursor()
        cursor.execute(query)
        rows = cursor.fetchall()
        db.close()
    return [row[0] / 1e6 for row in rows]


def throughput(args: argparse.Namespace, store: str) -> None:
    """
    Run the throughput mode once, for one store, and print its figures.
    """
    with tempfile.TemporaryDirectory(prefix="barto-bench-") as name:
        folder = Path(name)
        port = free_port()
        workers = [f"w{n}" for n in range(args.workers)]
        schedules: dict[str, list[str]] = {worker: [] for worker in workers}
        for index in range(args.schedules):
            second = index % 30
            schedules[workers[index % len(workers)]].append(
                f"*-*-* *:*:{second:02d}/30"
            )
        config, database = write_config(folder, port, store, schedules)
        server = start_bartos(folder, config)
        helpers: list[subprocess.Popen[bytes]] = []
        try:
            wait_port(port, server, 120)
            chunks = [workers[n :: args.procs] for n in range(args.procs)]
            outputs = [folder / f"worker{n}.json" for n in range(args.procs)]
            warmup = 10.0
            begin = time.time() + warmup
            end = begin + args.seconds
            for chunk, output in zip(chunks, outputs, strict=True):
                helpers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE),
                            "--worker-proc",
                            "--port",
                            str(port),
                            "--names",
                            ",".join(chunk),
                            "--begin",
                            str(begin),
                            "--end",
                            str(end),
                            "--out",
                            str(output),
                        ]
                    )
                )
            time.sleep(max(0.0, begin - time.time()))
            cpu_start = cpu_seconds(server.pid)
            time.sleep(max(0.0, end - time.time()))
            cpu_used = cpu_seconds(server.pid) - cpu_start
            for helper in helpers:
                helper.wait(120)
            rss = peak_rss_mb(server.pid)
            stop(server)
            sent = dispatch_lags(config, store, database, begin, end)
        finally:
            for helper in helpers:
                if helper.poll() is None:
                    helper.kill()
            stop(server)
            log = folder / "bartos.log"
            if log.exists():
                (Path(tempfile.gettempdir()) / f"bench-bartos-{store}.log").write_bytes(
                    log.read_bytes()
                )
            if database is not None:
                subprocess.run(
                    [
                        "mariadb",
                        "-h127.0.0.1",
                        "-uroot",
                        "-e",
                        f"DROP DATABASE IF EXISTS {database}",
                    ],
                    check=False,
                )

        stats: dict[str, Any] = {"dispatch": [], "stored": [], "runs": 0}
        for output in outputs:
            part = json.loads(output.read_text())
            stats["dispatch"] += part["dispatch"]
            stats["stored"] += part["stored"]
            stats["runs"] += part["runs"]
        stats["sent"] = sent
        report(store, args, stats, cpu_used, rss)


def report(
    store: str,
    args: argparse.Namespace,
    stats: dict[str, Any],
    cpu_used: float,
    rss: float,
) -> None:
    seconds = args.seconds
    runs = stats["runs"] / seconds

    def lags(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 0.5) * 1000:7.1f} ms"
            f"  p99 {percentile(values, 0.99) * 1000:7.1f} ms"
            f"  max {max(values, default=float('nan')) * 1000:7.1f} ms"
        )

    print(
        f"{store}: {args.schedules} schedules, {args.workers} workers, {seconds:.0f} s"
    )
    print(f"  runs stored        {runs:8.1f} /s")
    print(f"  output lines       {runs * 5:8.1f} /s")
    print(f"  slot -> sent       {lags(stats['sent'])}  (server side)")
    print(f"  slot -> dispatch   {lags(stats['dispatch'])}  (received)")
    print(f"  slot -> stored     {lags(stats['stored'])}")
    print(f"  server CPU         {cpu_used / seconds * 100:8.1f} % of a core")
    print(f"  server peak RSS    {rss:8.1f} MB")


def idle(args: argparse.Namespace) -> None:
    """
    Load 100,000 schedules none due within the hour; print idle CPU.
    """
    with tempfile.TemporaryDirectory(prefix="barto-bench-") as name:
        folder = Path(name)
        port = free_port()
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        calendar = f"*-*-* {later.hour:02d}:{later.minute:02d}:00"
        workers = [f"w{n}" for n in range(1000)]
        schedules = {worker: [calendar] * 100 for worker in workers}
        config, _ = write_config(folder, port, "sqlite", schedules)
        server = start_bartos(folder, config)
        try:
            loaded = time.monotonic()
            wait_port(port, server, 600)
            startup = time.monotonic() - loaded
            time.sleep(5)
            cpu_start = cpu_seconds(server.pid)
            time.sleep(args.seconds)
            cpu_used = cpu_seconds(server.pid) - cpu_start
            rss = peak_rss_mb(server.pid)
        finally:
            stop(server)
    print(f"idle: 100000 schedules, none due within the hour, {args.seconds:.0f} s")
    print(f"  start-up           {startup:8.1f} s")
    print(f"  server CPU         {cpu_used / args.seconds * 100:8.2f} % of a core")
    print(f"  server peak RSS    {rss:8.1f} MB")


def worker_process(args: argparse.Namespace) -> None:
    """
    Simulated workers, one WebSocket each, in this process.
    """
    # Run as a script, this folder comes first on sys.path; the other
    # benchmarks in it (calendar.py) must not hide the standard library.
    sys.path[:] = [p for p in sys.path if Path(p).resolve() != HERE.parent]
    from autobahn.twisted.websocket import (
        WebSocketClientFactory,
        WebSocketClientProtocol,
    )
    from twisted.internet import reactor

    from barto import wire

    stats: dict[str, Any] = {"dispatch": [], "stored": [], "runs": 0}
    now = time.time

    class Worker(WebSocketClientProtocol):
        def onOpen(self) -> None:
            self.rec = 0
            self.finishing: dict[int, float] = {}
            hello = wire.Hello(name=self.factory.name, version="bench")
            self.sendMessage(wire.encode(hello).encode())

        def send(self, message: wire.Message) -> None:
            self.sendMessage(wire.encode(message).encode())

        def next_rec(self) -> int:
            self.rec += 1
            return self.rec

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            frame = json.loads(payload)
            moment = now()
            if frame["type"] == "dispatch":
                slot = wire.parse_time(frame["slot"]).timestamp()
                counted = args.begin <= slot < args.end
                if counted:
                    stats["dispatch"].append(moment - slot)
                run, at = frame["run"], wire.format_time(datetime.now(timezone.utc))
                self.send(wire.Started(rec=self.next_rec(), run=run, cmd=0, at=at))
                self.send(
                    wire.Output(
                        rec=self.next_rec(),
                        run=run,
                        seq=0,
                        cmd=0,
                        at=at,
                        lines=tuple(f"line {n} of {run}" for n in range(5)),
                    )
                )
                self.send(wire.Exit(rec=self.next_rec(), run=run, cmd=0, at=at, code=0))
                rec = self.next_rec()
                if counted:
                    self.finishing[rec] = slot
                self.send(
                    wire.Finished(rec=rec, run=run, at=at, state="succeeded", code=0)
                )
            elif frame["type"] == "ack":
                for rec in frame["recs"]:
                    slot = self.finishing.pop(rec, None)
                    if slot is not None:
                        stats["stored"].append(moment - slot)
                        stats["runs"] += 1

    for name in args.names.split(","):
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{args.port}/v1/ws/worker?name={name}",
            protocols=[wire.SUBPROTOCOL],
        )
        factory.protocol = Worker
        factory.name = name
        reactor.connectTCP("127.0.0.1", args.port, factory)

    def finish() -> None:
        Path(args.out).write_text(json.dumps(stats))
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callLater(max(0.0, args.end - now()) + 5, finish)
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument(
        "--store", choices=["sqlite", "mariadb", "both"], default="both"
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--worker-proc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--begin", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker_proc:
        worker_process(args)
    elif args.idle:
        idle(args)
    else:
        stores = ["sqlite", "mariadb"] if args.store == "both" else [args.store]
        for store in stores:
            throughput(args, store)


if __name__ == "__main__":
    main()
