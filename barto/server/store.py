"""
The run store: an adbapi pool over SQLite or MariaDB, its schema, batched
writes and retention.

Every write goes through one in-memory queue, drained in order, many
writes per transaction (C{[store] batch_size}, C{flush_interval}). A
write's L{Deferred} fires only once its transaction has committed, so the
worker endpoint acknowledges records only when they are durable. When the
database goes away the queue is held and retried with backoff; past
C{max_pending} queued writes the store asks its listeners to stop reading
(back-pressure), and nothing is ever dropped.

Functions whose names start with C{thd} run in a pool thread (or, at
start-up, on a direct connection) and take a DB-API cursor.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from twisted.application import service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from barto import wire
from barto.config import MariaDBConfig, RetentionConfig, ServerConfig

Dialect = Literal["sqlite", "mariadb"]

T = TypeVar("T")

ACTIVE_STATES = ("pending", "dispatched", "running")
"""States of a run that is not over yet."""

FINAL_STATES = (
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "missed",
    "skipped",
)
"""States a run ends in, exactly one per slot."""

FAILED_STATES = ("failed", "timed_out", "cancelled", "lost", "missed")
"""Final states kept for C{retention.failed_days}."""

UNDECIDED_REASONS = ("worker offline", "server down", "clock jump")
"""Reasons of a missed slot whose catch-up is not decided yet."""

FAILURES = ("failed", "timed_out", "lost")
"""States L{Store.failed_runs} lists: the runs that went wrong."""

RECORD_OPEN_STATES = ("pending", "dispatched", "running", "lost", "missed")
"""States a worker's records may still move on (a late report wins)."""

SHUTDOWN_FLUSH_TIMEOUT = 10.0
"""Seconds a stopping store waits for the database to take its queue."""

MAX_BACKOFF = 30.0
"""Longest pause between two attempts to reach a database that is down."""

_FACT_LIMIT = 255

_SQLITE_TRANSIENT = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
)

log = Logger()


class Cursor(Protocol):
    """
    What a C{thd} function uses of a DB-API cursor (or adbapi transaction).
    """

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""

    @property
    def description(self) -> Any:
        """Columns of the last query."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any:
        """Run one statement."""

    def executemany(self, sql: str, args: Iterable[Sequence[Any]], /) -> Any:
        """Run one statement for many rows."""

    def fetchone(self) -> Any:
        """The next row, or C{None}."""

    def fetchall(self) -> Any:
        """Every remaining row."""


class StoreUnavailable(Exception):
    """
    The database cannot be reached right now; ask again later.
    """


class StoreStartError(Exception):
    """
    The store cannot be opened or migrated; the message says why.
    """


@dataclass(frozen=True)
class NewRun:
    """
    A run to record: one slot of one schedule on one worker.

    @ivar slot: the scheduled second, unix seconds UTC.
    @ivar trigger: C{schedule}, C{catch_up} or C{manual}.
    @ivar at: when it is recorded, unix microseconds.
    """

    worker: str
    schedule: str
    slot: int
    trigger: str
    state: str
    reason: str
    cmds: tuple[str, ...]
    at: int

    @property
    def id(self) -> str:
        """
        The run id, derived from (worker, schedule, slot).
        """
        return slot_run_id(self.worker, self.schedule, self.slot)


@dataclass(frozen=True)
class RecordResult:
    """
    What storing one worker record did.

    @ivar status: C{stored}, C{duplicate} (already stored: acknowledge it)
        or C{unknown} (no such run for this worker: refuse it).
    @ivar state: the run's new state when the record changed it.
    @ivar lines: output lines newly stored.
    """

    status: Literal["stored", "duplicate", "unknown"]
    worker: str = ""
    schedule: str = ""
    slot: int = 0
    state: str | None = None
    lines: int = 0


@dataclass
class _Write:
    """
    One queued write: a C{thd} function, its arguments and who waits.
    """

    thd: Callable[..., Any]
    args: tuple[Any, ...]
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


@functools.lru_cache(maxsize=1 << 16)
def slot_run_id(worker: str, schedule: str, slot: int) -> str:
    """
    The run id of a slot given in unix seconds (recent ones cached: the
    ledger asks for the same ids many times).
    """
    moment = datetime.fromtimestamp(slot, timezone.utc)
    return wire.run_id(worker, schedule, moment)


def micros(moment: str) -> int:
    """
    An ISO 8601 timestamp from the wire as unix microseconds.
    """
    parsed = wire.parse_time(moment)
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def is_transient(error: BaseException | None) -> bool:
    """
    Whether a database error may go away by itself (connection lost,
    server down, lock timeout) rather than being a fault in the statement.
    """
    if error is None or isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", "")
        return name.startswith(_SQLITE_TRANSIENT)
    permanent = ("IntegrityError", "ProgrammingError", "DataError", "UnicodeError")
    names = {cls.__name__ for cls in type(error).__mro__}
    return not names.intersection(permanent)


# Schema and migrations.


def schema_files(dialect: Dialect) -> list[tuple[int, str, str]]:
    """
    The versioned schema files of a dialect, in order.

    @return: C{(version, name, sql)} for each C{NNN_name.sql}.
    """
    folder = resources.files("barto.server").joinpath("sql", dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, _ = entry.name.partition("_")
            found.append(
                (int(number), entry.name, entry.read_text(encoding="utf-8")),
            )
    return sorted(found)


def split_statements(script: str) -> list[str]:
    """
    The statements of a schema file: C{--} comments dropped, split where a
    line ends with C{;}.
    """
    statements, current = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return [text for text in statements if text]


def thdSchemaVersion(cursor: Cursor, dialect: Dialect) -> int:
    """
    The newest schema version applied, 0 for an empty database.
    """
    if dialect == "sqlite":
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name = 'schema_version'"
        )
    else:
        cursor.execute("SHOW TABLES LIKE 'schema_version'")
    if cursor.fetchone() is None:
        return 0

    cursor.execute("SELECT MAX(version) FROM schema_version")
    row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def thdMigrate(cursor: Cursor, dialect: Dialect, now: int) -> list[int]:
    """
    Apply every schema file newer than the database.

    @param now: unix microseconds, recorded as C{applied_at}.
    @return: the versions applied, oldest first.
    """
    current = thdSchemaVersion(cursor, dialect)
    applied = []
    for version, name, script in schema_files(dialect):
        if version <= current:
            continue
        log.info("applying schema {name}", name=name)
        for statement in split_statements(script):
            cursor.execute(statement)
        cursor.execute(
            _sql(
                dialect,
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            ),
            (version, now),
        )
        applied.append(version)
    return applied


# Connections.


def sqlite_connect_args(path: str) -> dict[str, Any]:
    """
    The keyword arguments of C{sqlite3.connect} for the store file.
    """
    return {"database": path, "check_same_thread": False, "timeout": 30.0}


def mariadb_connect_args(config: MariaDBConfig) -> dict[str, Any]:
    """
    The keyword arguments of C{mysql.connector.connect} for C{[mariadb]}.
    """
    args: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "user": config.username,
        "password": config.password.reveal(),
        "database": config.database,
        "use_pure": True,
        "autocommit": False,
        "charset": "utf8mb4",
        "collation": "utf8mb4_bin",
        "connection_timeout": 10,
    }
    args.update(config.options_dict)
    return args


def _sqlite_open(connection: Any) -> None:
    """
    Set up a new SQLite connection: write-ahead log, relaxed fsync.
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _mariadb_open(connection: Any) -> None:
    """
    Set up a new MariaDB connection: backslash escapes on, as the
    multi-row output INSERTs are written for (see L{_mariadb_quoted}).
    """
    cursor = connection.cursor()
    cursor.execute("SELECT @@SESSION.sql_mode")
    modes = str(cursor.fetchall()[0][0] or "").split(",")
    if "NO_BACKSLASH_ESCAPES" in modes:
        modes.remove("NO_BACKSLASH_ESCAPES")
        cursor.execute("SET SESSION sql_mode = %s", (",".join(modes),))
    cursor.close()
    connection.commit()


def open_direct(config: ServerConfig) -> tuple[Any, Dialect]:
    """
    A plain DB-API connection to the configured store, for start-up work
    done before the reactor runs (migrations, loading state).

    @raise StoreStartError: the database cannot be opened.
    """
    if config.mariadb is None:
        path = Path(config.sqlite_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(**sqlite_connect_args(str(path)))
            _sqlite_open(connection)
        except (OSError, sqlite3.Error) as error:
            raise StoreStartError(f"cannot open {path}: {error}") from None
        return connection, "sqlite"

    import mysql.connector

    try:
        connection = mysql.connector.connect(
            **mariadb_connect_args(config.mariadb),
        )
    except Exception as error:
        where = f"{config.mariadb.host}:{config.mariadb.port}"
        raise StoreStartError(
            f"cannot connect to MariaDB at {where}: {error}"
        ) from None
    return connection, "mariadb"


def run_direct(connection: Any, thd: Callable[..., T], *args: Any) -> T:
    """
    Run a C{thd} function on a direct connection, in one transaction.
    """
    cursor = connection.cursor()
    try:
        result = thd(cursor, *args)
        connection.commit()
        return result
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()


def make_pool(config: ServerConfig) -> tuple[adbapi.ConnectionPool, Dialect]:
    """
    The connection pool of the configured store.
    """
    if config.mariadb is None:
        pool = adbapi.ConnectionPool(
            "sqlite3",
            cp_min=1,
            cp_max=1,
            cp_openfun=_sqlite_open,
            cp_noisy=False,
            **sqlite_connect_args(config.sqlite_path),
        )
        return pool, "sqlite"

    pool = adbapi.ConnectionPool(
        "mysql.connector",
        cp_min=1,
        cp_max=4,
        cp_reconnect=True,
        cp_noisy=False,
        cp_openfun=_mariadb_open,
        **mariadb_connect_args(config.mariadb),
    )
    return pool, "mariadb"


# SQL helpers.


def _sql(dialect: Dialect, text: str) -> str:
    """
    C{text}, written with C{?} placeholders, in the dialect's paramstyle.
    """
    return text if dialect == "sqlite" else text.replace("?", "%s")


def _insert_ignore(dialect: Dialect) -> str:
    return "INSERT OR IGNORE" if dialect == "sqlite" else "INSERT IGNORE"


def _rows(cursor: Cursor) -> list[dict[str, Any]]:
    """
    The rows of the last query as dicts keyed by column name.
    """
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _in(values: Sequence[Any]) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


def _fact(text: str) -> str:
    return text[:_FACT_LIMIT]


# Writes.


def thdAddRun(cursor: Cursor, dialect: Dialect, run: NewRun) -> bool:
    """
    Record a run with its commands and move its schedule's mark.

    @return: whether the run is new (a slot is recorded once).
    """
    (inserted,) = thdAddRuns(cursor, dialect, [run])
    return inserted


def thdSetMark(
    cursor: Cursor, dialect: Dialect, worker: str, schedule: str, slot: int
) -> None:
    """
    Remember C{slot} as the last one handled for a schedule (never going
    back).
    """
    thdSetMarks(cursor, dialect, {(worker, schedule): slot})


def thdUpdateRun(
    cursor: Cursor,
    dialect: Dialect,
    run_id: str,
    changes: Mapping[str, Any],
    from_states: Sequence[str],
) -> bool:
    """
    Change columns of a run, if it is in one of C{from_states}.

    @return: whether the run changed.
    """
    columns = ", ".join(f"`{name}` = ?" for name in changes)
    cursor.execute(
        _sql(
            dialect,
            f"UPDATE runs SET {columns} WHERE id = ? AND state IN {_in(from_states)}",
        ),
        (*changes.values(), run_id, *from_states),
    )
    return cursor.rowcount > 0


RunOwners = dict[str, tuple[str, str, int]]
"""Run id to (worker, schedule, slot), read once for a batch."""


def thdRunOwners(cursor: Cursor, dialect: Dialect, run_ids: Sequence[str]) -> RunOwners:
    """
    Who owns each of C{run_ids} (the runs that exist), in one query.
    """
    if not run_ids:
        return {}
    cursor.execute(
        _sql(
            dialect,
            f"SELECT id, worker, schedule, slot FROM runs WHERE id IN {_in(run_ids)}",
        ),
        tuple(run_ids),
    )
    return {row[0]: (row[1], row[2], int(row[3])) for row in cursor.fetchall()}


def thdStoreRecord(
    cursor: Cursor,
    dialect: Dialect,
    worker: str,
    record: wire.Record,
    owners: RunOwners | None = None,
) -> RecordResult:
    """
    Store one record of C{worker}, once whatever the resends.

    @param owners: runs already looked up for this batch; others are read
        here.
    """
    row = None if owners is None else owners.get(record.run)
    if row is None:
        row = thdRunOwners(cursor, dialect, [record.run]).get(record.run)
    if row is None or row[0] != worker:
        return RecordResult("unknown")

    result = _RECORD_WRITERS[type(record)](cursor, dialect, record)
    return RecordResult(
        result[0],
        worker=row[0],
        schedule=row[1],
        slot=int(row[2]),
        state=result[1],
        lines=result[2],
    )


_Written = tuple[Literal["stored", "duplicate"], str | None, int]


def _status(changed: bool) -> Literal["stored", "duplicate"]:
    return "stored" if changed else "duplicate"


def _thdStarted(cursor: Cursor, dialect: Dialect, record: Any) -> _Written:
    at = micros(record.at)
    cursor.execute(
        _sql(
            dialect,
            "UPDATE commands SET started_at = ? WHERE run_id = ? AND idx = ?"
            " AND started_at IS NULL",
        ),
        (at, record.run, record.cmd),
    )
    changed = cursor.rowcount > 0
    moved = thdUpdateRun(
        cursor,
        dialect,
        record.run,
        {"state": "running", "started_at": at},
        ("pending", "dispatched", "lost"),
    )
    return _status(changed), "running" if moved else None, 0


def _thdOutput(cursor: Cursor, dialect: Dialect, record: Any) -> _Written:
    at = micros(record.at)
    rows = [
        (
            record.run,
            record.seq,
            index,
            record.cmd,
            record.stream,
            at,
            line,
            record.cut if index == 0 else 0,
        )
        for index, line in enumerate(record.lines)
    ]
    if not rows and record.cut:
        rows = [
            (
                record.run,
                record.seq,
                0,
                record.cmd,
                record.stream,
                at,
                "",
                record.cut,
            )
        ]
    if not rows:
        return "duplicate", None, 0

    cursor.executemany(
        _sql(
            dialect,
            f"{_insert_ignore(dialect)} INTO output (run_id, seq, line, cmd,"
            " stream, at, data, cut) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ),
        rows,
    )
    inserted = max(cursor.rowcount, 0)
    added = inserted if record.lines else 0
    if added:
        cursor.execute(
            _sql(
                dialect,
                "UPDATE runs SET output_lines = output_lines + ? WHERE id = ?",
            ),
            (added, record.run),
        )
    return _status(inserted > 0), None, added


def _thdExit(cursor: Cursor, dialect: Dialect, record: Any) -> _Written:
    cursor.execute(
        _sql(
            dialect,
            "UPDATE commands SET ended_at = ?, exit_code = ?, `signal` = ?,"
            " reason = ? WHERE run_id = ? AND idx = ? AND ended_at IS NULL",
        ),
        (
            micros(record.at),
            record.code,
            record.signal,
            record.reason,
            record.run,
            record.cmd,
        ),
    )
    return _status(cursor.rowcount > 0), None, 0


def _thdFinished(cursor: Cursor, dialect: Dialect, record: Any) -> _Written:
    moved = thdUpdateRun(
        cursor,
        dialect,
        record.run,
        {
            "state": record.state,
            "exit_code": record.code,
            "reason": record.reason,
            "ended_at": micros(record.at),
        },
        RECORD_OPEN_STATES,
    )
    return _status(moved), record.state if moved else None, 0


_RECORD_WRITERS: Mapping[type, Callable[[Cursor, Dialect, Any], _Written]] = {
    wire.Started: _thdStarted,
    wire.Output: _thdOutput,
    wire.Exit: _thdExit,
    wire.Finished: _thdFinished,
}


# Batched writes: one statement per table for many writes.

_ID_CHUNK = 500
"""Ids per C{IN (...)} list (SQLite allows 32,766 parameters in all)."""

_STATEMENT_BYTES = 4 * 1024 * 1024
"""Longest multi-row output INSERT sent to MariaDB (max_allowed_packet is
16 MiB by default; escaping at most doubles a line)."""

_OUTPUT_COLUMNS = "(run_id, seq, cmd, stream, at, cut, line, data)"

_MARIADB_ESCAPES = (
    ("\\", "\\\\"),
    ("'", "\\'"),
    ("\0", "\\0"),
    ("\r", "\\r"),
    ("\x1a", "\\Z"),
)


def _mariadb_escaped(text: str) -> str:
    """
    C{text} escaped for a single-quoted MariaDB string literal, except
    for C{\\n} (the session runs without C{NO_BACKSLASH_ESCAPES}, see
    L{_mariadb_open}).
    """
    for raw, escaped in _MARIADB_ESCAPES:
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def _mariadb_quoted(lines: Sequence[str]) -> list[str]:
    """
    C{lines} escaped for single-quoted MariaDB string literals.

    The lines are escaped at once, joined by C{\\n}, which no escape
    produces, and split again; if a line holds a C{\\n} itself, each is
    escaped alone.
    """
    parts = _mariadb_escaped("\n".join(lines)).split("\n")
    if len(parts) == len(lines):
        return parts
    return [_mariadb_escaped(line).replace("\n", "\\n") for line in lines]


def _chunks(values: Sequence[T], size: int = _ID_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def thdAddRuns(cursor: Cursor, dialect: Dialect, runs: Sequence[NewRun]) -> list[bool]:
    """
    L{thdAddRun} for many runs: one statement per table.

    @return: for each run, whether it is new (the first of the same slot
        in C{runs} counts, a later one is not new).
    """
    ids = [run.id for run in runs]
    existing: set[str] = set()
    for chunk in _chunks(sorted(set(ids))):
        cursor.execute(
            _sql(dialect, f"SELECT id FROM runs WHERE id IN {_in(chunk)}"),
            tuple(chunk),
        )
        existing.update(row[0] for row in cursor.fetchall())

    new: list[bool] = []
    for run_id in ids:
        new.append(run_id not in existing)
        existing.add(run_id)
    added = [run for run, is_new in zip(runs, new, strict=True) if is_new]
    if added:
        cursor.executemany(
            _sql(
                dialect,
                f"{_insert_ignore(dialect)} INTO runs (id, worker, schedule,"
                " slot, `trigger`, state, reason, created_at, dispatched_at,"
                " output_lines) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            ),
            [
                (
                    run.id,
                    run.worker,
                    run.schedule,
                    run.slot,
                    run.trigger,
                    run.state,
                    run.reason,
                    run.at,
                    run.at if run.state == "dispatched" else None,
                )
                for run in added
            ],
        )
    commands = [
        (run.id, index, cmd) for run in added for index, cmd in enumerate(run.cmds)
    ]
    if commands:
        cursor.executemany(
            _sql(
                dialect,
                f"{_insert_ignore(dialect)} INTO commands (run_id, idx, cmd,"
                " reason) VALUES (?, ?, ?, '')",
            ),
            commands,
        )
    marks: dict[tuple[str, str], int] = {}
    for run in runs:
        if run.trigger != "manual":
            key = (run.worker, run.schedule)
            marks[key] = max(run.slot, marks.get(key, run.slot))
    if marks:
        thdSetMarks(cursor, dialect, marks)
    return new


def thdSetMarks(
    cursor: Cursor, dialect: Dialect, marks: Mapping[tuple[str, str], int]
) -> None:
    """
    L{thdSetMark} for many schedules in one statement.
    """
    if dialect == "sqlite":
        tail = (
            "ON CONFLICT (worker, schedule) DO UPDATE"
            " SET last_slot = MAX(last_slot, excluded.last_slot)"
        )
    else:
        tail = (
            "ON DUPLICATE KEY UPDATE last_slot = GREATEST(last_slot, VALUES(last_slot))"
        )
    rows = [(worker, schedule, slot) for (worker, schedule), slot in marks.items()]
    for chunk in _chunks(rows):
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        cursor.execute(
            _sql(
                dialect,
                "INSERT INTO schedule_marks (worker, schedule, last_slot)"
                f" VALUES {values} {tail}",
            ),
            tuple(value for row in chunk for value in row),
        )


def thdStoreOutputs(
    cursor: Cursor, dialect: Dialect, records: Sequence[wire.Output]
) -> list[_Written]:
    """
    Store many output records of runs known to exist: the lines of all of
    them in as few statements as the database takes, and each run's
    C{output_lines} moved once.

    A record is stored whole or not at all (one transaction), so one whose
    line 0 is in the table is a duplicate, as is a second copy of a record
    in C{records}.
    """
    stored = _thdStoredChunks(cursor, dialect, records)
    results: list[_Written] = []
    fresh: list[wire.Output] = []
    added: dict[str, int] = {}
    for record in records:
        key = (record.run, record.seq)
        if key in stored or not (record.lines or record.cut):
            results.append(("duplicate", None, 0))
            continue
        stored.add(key)
        fresh.append(record)
        lines = len(record.lines)
        results.append(("stored", None, lines))
        if lines:
            added[record.run] = added.get(record.run, 0) + lines

    if dialect == "sqlite":
        _thdInsertOutputSqlite(cursor, fresh)
    else:
        _thdInsertOutputMariaDB(cursor, fresh)
    _thdAddOutputLines(cursor, dialect, added)
    return results


def _thdStoredChunks(
    cursor: Cursor, dialect: Dialect, records: Sequence[wire.Output]
) -> set[tuple[str, int]]:
    """
    The (run, seq) of C{records} already in the output table.
    """
    seqs: dict[str, set[int]] = {}
    for record in records:
        seqs.setdefault(record.run, set()).add(record.seq)
    found: set[tuple[str, int]] = set()
    for run_id, numbers in seqs.items():
        for chunk in _chunks(sorted(numbers)):
            cursor.execute(
                _sql(
                    dialect,
                    "SELECT seq FROM output WHERE run_id = ? AND line = 0"
                    f" AND seq IN {_in(chunk)}",
                ),
                (run_id, *chunk),
            )
            found.update((run_id, int(row[0])) for row in cursor.fetchall())
    return found


def _output_rows(record: wire.Output) -> list[tuple[Any, ...]]:
    """
    The rows of one record, in L{_OUTPUT_COLUMNS} order; the cut is on
    line 0.
    """
    head = (record.run, record.seq, record.cmd, record.stream, micros(record.at))
    lines = record.lines or ("",)
    rows = [(*head, 0, index, line) for index, line in enumerate(lines)]
    rows[0] = (*head, record.cut, 0, lines[0])
    return rows


def _thdInsertOutputSqlite(cursor: Cursor, records: Sequence[wire.Output]) -> None:
    rows = [row for record in records for row in _output_rows(record)]
    if rows:
        cursor.executemany(
            f"INSERT OR IGNORE INTO output {_OUTPUT_COLUMNS}"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _thdInsertOutputMariaDB(cursor: Cursor, records: Sequence[wire.Output]) -> None:
    """
    The lines of C{records} as multi-row INSERTs of at most
    L{_STATEMENT_BYTES}, the values written out here: the pure-Python
    driver's own parameter handling costs more than the database does.
    """
    start = f"INSERT IGNORE INTO output {_OUTPUT_COLUMNS} VALUES "
    values: list[str] = []
    size = 0
    for record in records:
        prefix = (
            f"('{record.run}',{int(record.seq)},{int(record.cmd)},"
            f"'{record.stream}',{micros(record.at)},"
        )
        data = _mariadb_quoted(record.lines) if record.lines else [""]
        rows = [f"{prefix}0,{index},'{line}')" for index, line in enumerate(data)]
        rows[0] = f"{prefix}{int(record.cut)},0,'{data[0]}')"
        for row in rows:
            values.append(row)
            size += len(row) + 1
            if size >= _STATEMENT_BYTES:
                _thdQuery(cursor, start + ",".join(values))
                values, size = [], 0
    if values:
        _thdQuery(cursor, start + ",".join(values))


def _thdQuery(cursor: Cursor, statement: str) -> None:
    """
    Send a statement without parameters to MariaDB as it is.

    C{cursor.execute} of the pure-Python driver scans every statement for
    C{DELIMITER} with a regular expression, about 30 ns a byte; its
    connection's C{cmd_query} does not. C{cursor} is an adbapi
    transaction or a driver cursor; both keep their connection as
    C{_connection}.
    """
    cmd_query = getattr(getattr(cursor, "_connection", None), "cmd_query", None)
    if cmd_query is None:
        cursor.execute(statement)
    else:
        cmd_query(statement.encode("utf-8"))


def _thdAddOutputLines(
    cursor: Cursor, dialect: Dialect, added: Mapping[str, int]
) -> None:
    """
    Add C{added[run]} to each run's C{output_lines}, in one statement.
    """
    items = list(added.items())
    for chunk in _chunks(items):
        cases = " ".join("WHEN ? THEN ?" for _ in chunk)
        cursor.execute(
            _sql(
                dialect,
                f"UPDATE runs SET output_lines = output_lines + CASE id {cases}"
                f" ELSE 0 END WHERE id IN {_in(chunk)}",
            ),
            (
                *(value for item in chunk for value in item),
                *(run_id for run_id, _ in chunk),
            ),
        )


_RUN_FIELDS = ("state", "started_at", "exit_code", "reason", "ended_at")
"""Columns of a run that records change, as L{_Records} holds them."""

_COMMAND_FIELDS = ("started_at", "ended_at", "exit_code", "signal", "reason")
"""Columns of a command that records change, as L{_Records} holds them."""


class _Records:
    """
    The started, exit and finished records of a batch, applied in memory
    to the rows they touch (read once) and written back together.

    Each record gets the result its own C{UPDATE} would have had:
    the same conditions, and on MariaDB (whose C{rowcount} counts changed
    rows, not matched ones) a row set to the values it has is unchanged.
    """

    def __init__(self, cursor: Cursor, dialect: Dialect, owners: RunOwners) -> None:
        self.cursor = cursor
        self.dialect: Dialect = dialect
        self.owners = owners
        self.runs: dict[str, dict[str, Any]] = {}
        self.commands: dict[tuple[str, int], dict[str, Any]] = {}
        self.loaded: set[str] = set()
        self.dirty_runs: dict[str, set[str]] = {}
        self.dirty_commands: dict[tuple[str, int], set[str]] = {}

    def load(self, run_ids: Iterable[str]) -> None:
        """
        Read the runs and commands of C{run_ids} not held yet (locking
        them on MariaDB, as the UPDATEs they stand for would).
        """
        wanted = sorted(set(run_ids) - self.loaded)
        lock = " FOR UPDATE" if self.dialect == "mariadb" else ""
        for chunk in _chunks(wanted):
            self.cursor.execute(
                _sql(
                    self.dialect,
                    "SELECT id, worker, schedule, slot, state, started_at,"
                    f" exit_code, reason, ended_at FROM runs WHERE id IN {_in(chunk)}"
                    f"{lock}",
                ),
                tuple(chunk),
            )
            for row in self.cursor.fetchall():
                self.owners[row[0]] = (row[1], row[2], int(row[3]))
                self.runs[row[0]] = dict(zip(_RUN_FIELDS, row[4:], strict=True))
            self.cursor.execute(
                _sql(
                    self.dialect,
                    "SELECT run_id, idx, started_at, ended_at, exit_code, `signal`,"
                    f" reason FROM commands WHERE run_id IN {_in(chunk)}{lock}",
                ),
                tuple(chunk),
            )
            for row in self.cursor.fetchall():
                self.commands[(row[0], int(row[1]))] = dict(
                    zip(_COMMAND_FIELDS, row[2:], strict=True)
                )
        self.loaded.update(wanted)

    def added(self, run: NewRun) -> None:
        """
        Hold the rows of a run just inserted.
        """
        self.loaded.add(run.id)
        self.runs[run.id] = {
            "state": run.state,
            "started_at": None,
            "exit_code": None,
            "reason": run.reason,
            "ended_at": None,
        }
        for index in range(len(run.cmds)):
            self.commands[(run.id, index)] = dict.fromkeys(_COMMAND_FIELDS)
            self.commands[(run.id, index)]["reason"] = ""

    def forget(self, run_id: str | None = None) -> None:
        """
        Write what is held back, and drop C{run_id} (or everything) so
        that it is read again: another write is about to change it.
        """
        self.flush()
        if run_id is None:
            self.runs.clear()
            self.commands.clear()
            self.loaded.clear()
            return
        self.loaded.discard(run_id)
        self.runs.pop(run_id, None)
        for key in [key for key in self.commands if key[0] == run_id]:
            del self.commands[key]

    def _set(
        self,
        row: dict[str, Any] | None,
        changes: Mapping[str, Any],
        dirty: set[str],
    ) -> bool:
        if row is None:
            return False
        differs = [name for name, value in changes.items() if row[name] != value]
        row.update(changes)
        dirty.update(differs)
        return bool(differs) or self.dialect == "sqlite"

    def _run(self, run_id: str, changes: Mapping[str, Any], states: Any) -> bool:
        row = self.runs.get(run_id)
        if row is None or row["state"] not in states:
            return False
        return self._set(row, changes, self.dirty_runs.setdefault(run_id, set()))

    def _command(self, key: tuple[str, int], column: str, changes: Any) -> bool:
        row = self.commands.get(key)
        if row is None or row[column] is not None:
            return False
        return self._set(row, changes, self.dirty_commands.setdefault(key, set()))

    def store(self, record: wire.Record) -> _Written:
        """
        Apply one record of a run that is held and belongs to its worker.
        """
        if isinstance(record, wire.Started):
            at = micros(record.at)
            changed = self._command(
                (record.run, record.cmd), "started_at", {"started_at": at}
            )
            moved = self._run(
                record.run,
                {"state": "running", "started_at": at},
                ("pending", "dispatched", "lost"),
            )
            return _status(changed), "running" if moved else None, 0
        if isinstance(record, wire.Exit):
            changes = {
                "ended_at": micros(record.at),
                "exit_code": record.code,
                "signal": record.signal,
                "reason": record.reason,
            }
            changed = self._command((record.run, record.cmd), "ended_at", changes)
            return _status(changed), None, 0
        assert isinstance(record, wire.Finished)
        moved = self._run(
            record.run,
            {
                "state": record.state,
                "exit_code": record.code,
                "reason": record.reason,
                "ended_at": micros(record.at),
            },
            RECORD_OPEN_STATES,
        )
        return _status(moved), record.state if moved else None, 0

    def flush(self) -> None:
        """
        Write the rows changed so far: one UPDATE per table (and chunk).
        """
        runs = [(run_id, self.runs[run_id]) for run_id in sorted(self.dirty_runs)]
        columns = sorted(set().union(*self.dirty_runs.values()))
        self._update("runs", "id = ?", runs, columns, lambda key: (key,))
        commands = [(key, self.commands[key]) for key in sorted(self.dirty_commands)]
        columns = sorted(set().union(*self.dirty_commands.values()))
        self._update("commands", "run_id = ? AND idx = ?", commands, columns, tuple)
        self.dirty_runs.clear()
        self.dirty_commands.clear()

    def _update(
        self,
        table: str,
        match: str,
        rows: Sequence[tuple[Any, dict[str, Any]]],
        columns: Sequence[str],
        key_args: Callable[[Any], tuple[Any, ...]],
    ) -> None:
        if not rows or not columns:
            return
        for chunk in _chunks(rows, 100):
            keys = [key_args(key) for key, _ in chunk]
            sets: list[str] = []
            args: list[Any] = []
            for column in columns:
                whens = " ".join(f"WHEN {match} THEN ?" for _ in chunk)
                sets.append(f"`{column}` = CASE {whens} ELSE `{column}` END")
                for key, (_, row) in zip(keys, chunk, strict=True):
                    args.extend((*key, row[column]))
            where = " OR ".join(f"({match})" for _ in chunk)
            self.cursor.execute(
                _sql(
                    self.dialect,
                    f"UPDATE {table} SET {', '.join(sets)} WHERE {where}",
                ),
                (*args, *(value for key in keys for value in key)),
            )


def thdWriteBatch(
    cursor: Cursor,
    dialect: Dialect,
    batch: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[Any]:
    """
    Run queued writes C{(thd, args)} in one transaction, with the result
    each would have had alone, in as few statements as their order allows.

    New runs and output lines are gathered and written together: new runs
    before any later write that names one of them, output (which no other
    write reads) at the end. Started, exit and finished records are
    applied to the rows they touch, read once, and written back together
    (before any other write that may read or change those rows). Every
    other write runs in its place.
    """
    results: list[Any] = [None] * len(batch)
    runs: dict[int, NewRun] = {}
    outputs: dict[int, tuple[wire.Output, tuple[str, str, int]]] = {}
    owners: RunOwners = {}
    held = _Records(cursor, dialect, owners)
    held.load(
        {
            args[1].run
            for thd, args in batch
            if thd is thdStoreRecord and not isinstance(args[1], wire.Output)
        }
    )
    outputs_only = {
        args[1].run
        for thd, args in batch
        if thd is thdStoreRecord and isinstance(args[1], wire.Output)
    }
    owners.update(thdRunOwners(cursor, dialect, sorted(outputs_only - set(owners))))

    def add_runs() -> None:
        for index, new in zip(
            runs, thdAddRuns(cursor, dialect, list(runs.values())), strict=True
        ):
            results[index] = new
            if new:
                held.added(runs[index])
        for run in runs.values():
            owners[run.id] = (run.worker, run.schedule, run.slot)
        runs.clear()

    def new_run(run_id: str) -> bool:
        return run_id in {run.id for run in runs.values()}

    for index, (thd, args) in enumerate(batch):
        if thd is thdAddRun:
            runs[index] = args[0]
        elif thd is thdStoreRecord:
            worker, record = args
            if runs and new_run(record.run):
                add_runs()
            is_output = isinstance(record, wire.Output)
            if not is_output and record.run not in held.loaded:
                held.load([record.run])
            owner = owners.get(record.run)
            if owner is None or owner[0] != worker:
                results[index] = RecordResult("unknown")
            elif is_output:
                outputs[index] = (record, owner)
            else:
                status, state, lines = held.store(record)
                results[index] = RecordResult(
                    status,
                    worker=owner[0],
                    schedule=owner[1],
                    slot=owner[2],
                    state=state,
                    lines=lines,
                )
        elif thd is thdSaveWorker or thd is thdSetMark:
            results[index] = thd(cursor, dialect, *args)
        elif thd is thdUpdateRun:
            if runs and new_run(args[0]):
                add_runs()
            if args[0] in held.loaded:
                held.forget(args[0])
            results[index] = thd(cursor, dialect, *args)
        else:
            if runs:
                add_runs()
            held.forget()
            results[index] = thd(cursor, dialect, *args)
    if runs:
        add_runs()
    held.flush()

    written = thdStoreOutputs(cursor, dialect, [item[0] for item in outputs.values()])
    for (index, (_, owner)), (status, _, lines) in zip(
        outputs.items(), written, strict=True
    ):
        worker, schedule, slot = owner
        results[index] = RecordResult(
            status, worker=worker, schedule=schedule, slot=slot, lines=lines
        )
    return results


def thdSaveWorker(
    cursor: Cursor,
    dialect: Dialect,
    name: str,
    facts: Mapping[str, Any],
) -> None:
    """
    Insert or update a worker's row with the given columns.
    """
    values = {
        key: _fact(value) if isinstance(value, str) else value
        for key, value in facts.items()
    }
    columns = ["name", *values]
    marks = ", ".join("?" for _ in columns)
    names = ", ".join(columns)
    if dialect == "sqlite":
        updates = ", ".join(f"{key} = excluded.{key}" for key in values)
        tail = f"ON CONFLICT (name) DO UPDATE SET {updates}"
    else:
        updates = ", ".join(f"{key} = VALUES({key})" for key in values)
        tail = f"ON DUPLICATE KEY UPDATE {updates}"
    cursor.execute(
        _sql(
            dialect,
            f"INSERT INTO workers ({names}) VALUES ({marks}) {tail}",
        ),
        (name, *values.values()),
    )


# Reads.


def thdMarks(cursor: Cursor, dialect: Dialect) -> dict[tuple[str, str], int]:
    """
    Every schedule's last handled slot, by (worker, schedule).
    """
    cursor.execute("SELECT worker, schedule, last_slot FROM schedule_marks")
    return {(row[0], row[1]): int(row[2]) for row in cursor.fetchall()}


def thdOpenRuns(cursor: Cursor, dialect: Dialect) -> list[dict[str, Any]]:
    """
    Runs not over yet, and missed runs whose catch-up is undecided
    (their reason is exactly one of L{UNDECIDED_REASONS}).
    """
    cursor.execute(
        _sql(
            dialect,
            "SELECT id, worker, schedule, slot, `trigger`, state, reason"
            " FROM runs WHERE state IN ('pending', 'dispatched', 'running')"
            f" OR (state = 'missed' AND reason IN {_in(UNDECIDED_REASONS)})"
            " ORDER BY slot",
        ),
        UNDECIDED_REASONS,
    )
    return _rows(cursor)


_RUN_COLUMNS = (
    "id, worker, schedule, slot, `trigger`, state, reason, exit_code,"
    " created_at, dispatched_at, started_at, ended_at, output_lines"
)


def thdGetRun(
    cursor: Cursor, dialect: Dialect, run_id: str, output_limit: int
) -> dict[str, Any] | None:
    """
    One run with its commands and (up to C{output_limit} lines of) output.
    """
    cursor.execute(
        _sql(dialect, f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?"),
        (run_id,),
    )
    found = _rows(cursor)
    if not found:
        return None

    run = found[0]
    run["commands"] = thdCommands(cursor, dialect, run_id)
    run["output"] = thdOutput(cursor, dialect, run_id, output_limit)
    return run


def thdCommands(
    cursor: Cursor,
    dialect: Dialect,
    run_id: str,
) -> list[dict[str, Any]]:
    """
    The commands of a run, in order.
    """
    cursor.execute(
        _sql(
            dialect,
            "SELECT idx, cmd, started_at, ended_at, exit_code, `signal`,"
            " reason FROM commands WHERE run_id = ? ORDER BY idx",
        ),
        (run_id,),
    )
    return _rows(cursor)


def thdOutput(
    cursor: Cursor, dialect: Dialect, run_id: str, limit: int
) -> list[dict[str, Any]]:
    """
    The output lines of a run, in order.
    """
    cursor.execute(
        _sql(
            dialect,
            "SELECT seq, line, cmd, stream, at, data, cut FROM output"
            " WHERE run_id = ? ORDER BY seq, line LIMIT ?",
        ),
        (run_id, limit),
    )
    return _rows(cursor)


def thdListRuns(
    cursor: Cursor,
    dialect: Dialect,
    filters: Mapping[str, Any],
    limit: int,
) -> list[dict[str, Any]]:
    """
    Runs matching C{filters} (C{worker}, C{schedule}, C{state} (a name or
    a list), C{since}, C{until} (slots, inclusive)), newest first.
    """
    where, args = [], []
    for column in ("worker", "schedule"):
        if filters.get(column) is not None:
            where.append(f"{column} = ?")
            args.append(filters[column])
    states = filters.get("state")
    if isinstance(states, str):
        states = [states]
    if states:
        where.append(f"state IN {_in(states)}")
        args.extend(states)
    if filters.get("since") is not None:
        where.append("slot >= ?")
        args.append(int(filters["since"]))
    if filters.get("until") is not None:
        where.append("slot <= ?")
        args.append(int(filters["until"]))

    clause = f" WHERE {' AND '.join(where)}" if where else ""
    cursor.execute(
        _sql(
            dialect,
            f"SELECT {_RUN_COLUMNS} FROM runs{clause}"
            " ORDER BY slot DESC, worker, schedule LIMIT ?",
        ),
        (*args, limit),
    )
    return _rows(cursor)


def thdLatestRuns(
    cursor: Cursor, dialect: Dialect, schedule: str
) -> list[dict[str, Any]]:
    """
    The newest run of a schedule on every worker that has one.
    """
    cursor.execute(
        _sql(
            dialect,
            f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.schedule = ? AND"
            " r.slot = (SELECT MAX(slot) FROM runs l WHERE"
            " l.worker = r.worker AND l.schedule = r.schedule)"
            " ORDER BY r.worker",
        ),
        (schedule,),
    )
    return _rows(cursor)


def thdWorkers(cursor: Cursor, dialect: Dialect) -> list[dict[str, Any]]:
    """
    Every worker the server has seen, by name.
    """
    cursor.execute(
        "SELECT name, hostname, os, os_version, kernel, version, address,"
        " connected_since, last_seen FROM workers ORDER BY name"
    )
    return _rows(cursor)


def thdCounts(cursor: Cursor, dialect: Dialect) -> dict[str, Any]:
    """
    How many runs (in total and by state) and workers the store holds.
    """
    cursor.execute("SELECT state, COUNT(*) FROM runs GROUP BY state")
    states = {row[0]: int(row[1]) for row in cursor.fetchall()}
    cursor.execute("SELECT COUNT(*) FROM workers")
    workers = int(cursor.fetchone()[0])
    return {
        "runs": sum(states.values()),
        "runs_by_state": states,
        "workers": workers,
    }


# Retention.

_CLEANUP_CHUNK = 500


def thdCleanup(
    cursor: Cursor,
    dialect: Dialect,
    now: int,
    retention: RetentionConfig,
) -> dict[str, int]:
    """
    Delete what retention no longer keeps.

    Successful (and skipped) runs go after C{days}, every other final state
    after C{failed_days}; C{max_runs} keeps only the newest final runs of
    each worker's schedule, C{max_output_lines} the first lines of each
    run. Runs not over yet are never touched.

    @param now: unix seconds.
    @return: rows removed per table.
    """
    removed = {"runs": 0, "commands": 0, "output": 0}
    kept = [s for s in FINAL_STATES if s not in FAILED_STATES]
    for states, days in (
        (kept, retention.days),
        (FAILED_STATES, retention.failed_days),
    ):
        cutoff = now - days * 86400
        while True:
            cursor.execute(
                _sql(
                    dialect,
                    f"SELECT id FROM runs WHERE state IN {_in(states)}"
                    " AND slot < ? LIMIT ?",
                ),
                (*states, cutoff, _CLEANUP_CHUNK),
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                break
            _thdDeleteRuns(cursor, dialect, ids, removed)

    if retention.max_runs is not None:
        _thdCapRuns(cursor, dialect, retention.max_runs, removed)
    if retention.max_output_lines is not None:
        _thdCapOutput(cursor, dialect, retention.max_output_lines, removed)
    return removed


def _thdDeleteRuns(
    cursor: Cursor,
    dialect: Dialect,
    ids: Sequence[str],
    removed: dict[str, int],
) -> None:
    for table, column in (
        ("output", "run_id"),
        ("commands", "run_id"),
        ("runs", "id"),
    ):
        cursor.execute(
            _sql(dialect, f"DELETE FROM {table} WHERE {column} IN {_in(ids)}"),
            tuple(ids),
        )
        removed[table] += max(cursor.rowcount, 0)


def _thdCapRuns(
    cursor: Cursor, dialect: Dialect, max_runs: int, removed: dict[str, int]
) -> None:
    finals = FINAL_STATES
    cursor.execute(
        _sql(
            dialect,
            "SELECT worker, schedule FROM runs WHERE state IN"
            f" {_in(finals)} GROUP BY worker, schedule HAVING COUNT(*) > ?",
        ),
        (*finals, max_runs),
    )
    for worker, schedule in cursor.fetchall():
        cursor.execute(
            _sql(
                dialect,
                "SELECT id FROM runs WHERE worker = ? AND schedule = ? AND"
                f" state IN {_in(finals)} ORDER BY slot DESC LIMIT ? OFFSET ?",
            ),
            (worker, schedule, *finals, 1_000_000_000, max_runs),
        )
        ids = [row[0] for row in cursor.fetchall()]
        for start in range(0, len(ids), _CLEANUP_CHUNK):
            _thdDeleteRuns(
                cursor, dialect, ids[start : start + _CLEANUP_CHUNK], removed
            )


def _thdCapOutput(
    cursor: Cursor, dialect: Dialect, max_lines: int, removed: dict[str, int]
) -> None:
    cursor.execute(
        _sql(
            dialect,
            "SELECT id FROM runs WHERE output_lines > ? AND state IN"
            f" {_in(FINAL_STATES)}",
        ),
        (max_lines, *FINAL_STATES),
    )
    for (run_id,) in cursor.fetchall():
        cursor.execute(
            _sql(
                dialect,
                "SELECT seq, line FROM output WHERE run_id = ?"
                " ORDER BY seq, line LIMIT 1 OFFSET ?",
            ),
            (run_id, max_lines),
        )
        first = cursor.fetchone()
        if first is None:
            continue
        cursor.execute(
            _sql(
                dialect,
                "DELETE FROM output WHERE run_id = ? AND (seq > ? OR"
                " (seq = ? AND line >= ?))",
            ),
            (run_id, first[0], first[0], first[1]),
        )
        removed["output"] += max(cursor.rowcount, 0)
        cursor.execute(
            _sql(dialect, "UPDATE runs SET output_lines = ? WHERE id = ?"),
            (max_lines, run_id),
        )


def next_cleanup(now: float, hour: int) -> float:
    """
    The next time, in unix seconds, that is C{hour}:00 UTC, after C{now}.
    """
    day = int(now // 86400) * 86400
    moment = day + hour * 3600
    return moment if moment > now else moment + 86400


# The service.


class Store(service.Service):
    """
    The store of runs, commands, output, workers and schedule marks.

    @ivar dialect: C{sqlite} or C{mariadb}.
    @ivar available: whether the last attempt to reach the database
        worked.
    @ivar pressure: whether too many writes are queued and readers should
        pause.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: Dialect,
        *,
        clock: IReactorTime,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
        retention: RetentionConfig | None = None,
    ) -> None:
        """
        @param pool: the connection pool; the store closes it when it stops.
        @param clock: for flush timers, backoff and the daily clean-up.
        """
        self.dialect: Dialect = dialect
        self.available = True
        self.pressure = False
        self._pool = pool
        self._clock = clock
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retention = retention or RetentionConfig()
        self._queue: deque[_Write] = deque()
        self._flushing = False
        self._flush_call: IDelayedCall | None = None
        self._cleanup_call: IDelayedCall | None = None
        self._failures = 0
        self._drained: list[defer.Deferred[None]] = []
        self._pressure_listeners: list[Callable[[bool], None]] = []

    @classmethod
    def from_config(cls, config: ServerConfig, clock: IReactorTime) -> Store:
        """
        A store for C{config}: its pool, batching and retention settings.
        """
        pool, dialect = make_pool(config)
        return cls(
            pool,
            dialect,
            clock=clock,
            batch_size=config.store.batch_size,
            flush_interval=config.store.flush_interval,
            max_pending=config.store.max_pending,
            retention=config.retention,
        )

    # Service.

    def startService(self) -> None:
        """
        Start the pool and the daily clean-up.
        """
        super().startService()
        self._pool.start()
        self._schedule_cleanup()

    def stopService(self) -> defer.Deferred[None]:
        """
        Write everything queued (waiting at most L{SHUTDOWN_FLUSH_TIMEOUT}
        while the database is down), then close the pool.
        """
        super().stopService()
        if self._cleanup_call is not None and self._cleanup_call.active():
            self._cleanup_call.cancel()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        waiting = self.drained()
        timeout = self._clock.callLater(SHUTDOWN_FLUSH_TIMEOUT, waiting.cancel)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.reset(0)
        try:
            await waiting
        except defer.CancelledError:
            log.error(
                "store stopped with {count} writes not stored; the workers"
                " resend unacknowledged records",
                count=len(self._queue),
            )
        else:
            timeout.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._pool.close()

    # Queued writes.

    def pending(self) -> int:
        """
        How many writes wait for the database.
        """
        return len(self._queue)

    def write(self, thd: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """
        Queue a write: C{thd(cursor, dialect, *args)} runs in a batch
        transaction.

        @return: fires with C{thd}'s result once the batch has committed.
        """
        item = _Write(thd, args)
        self._queue.append(item)
        self._check_pressure()
        self._schedule_flush()
        return item.done

    def drained(self) -> defer.Deferred[None]:
        """
        Fires when every write queued so far has committed.
        """
        if not self._queue and not self._flushing:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._drained.append(waiting)
        return waiting

    def on_pressure(self, listener: Callable[[bool], None]) -> None:
        """
        Call C{listener(True)} when writes pile up past C{max_pending}, and
        C{listener(False)} when they are down to half of it again.
        """
        self._pressure_listeners.append(listener)

    def _check_pressure(self) -> None:
        pending = len(self._queue)
        if not self.pressure and pending > self._max_pending:
            self._set_pressure(True)
        elif self.pressure and pending <= self._max_pending // 2:
            self._set_pressure(False)

    def _set_pressure(self, on: bool) -> None:
        self.pressure = on
        log.warn(
            "store back-pressure {state} ({count} writes queued)",
            state="on" if on else "off",
            count=len(self._queue),
        )
        for listener in list(self._pressure_listeners):
            listener(on)

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._flushing:
            return
        if delay is None:
            full = len(self._queue) >= self._batch_size
            delay = 0.0 if full else self._flush_interval
        if self._flush_call is not None and self._flush_call.active():
            if delay == 0.0 and self._failures == 0:
                self._flush_call.reset(0)
            return
        self._flush_call = self._clock.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if not self._queue:
            self._fire_drained()
            return

        batch = [
            self._queue.popleft()
            for _ in range(min(self._batch_size, len(self._queue)))
        ]
        self._flushing = True
        done = self._pool.runInteraction(self._thdBatch, batch)
        done.addCallback(self._committed, batch)
        done.addErrback(self._batch_failed, batch)

    def _thdBatch(self, cursor: Cursor, batch: Sequence[_Write]) -> list[Any]:
        log.debug("writing a batch of {count}", count=len(batch))
        return thdWriteBatch(
            cursor, self.dialect, [(item.thd, item.args) for item in batch]
        )

    def _committed(self, results: list[Any], batch: Sequence[_Write]) -> None:
        self._flushing = False
        if not self.available:
            log.info("the database is back; writing resumes")
        self.available = True
        self._failures = 0
        self._check_pressure()
        for item, result in zip(batch, results, strict=True):
            item.done.callback(result)
        self._after_flush()

    def _batch_failed(self, failure: Failure, batch: Sequence[_Write]) -> None:
        self._flushing = False
        if not is_transient(failure.value):
            if len(batch) == 1:
                batch[0].done.errback(failure)
                self._after_flush()
                return
            log.failure(
                "a batch failed; retrying its writes one by one",
                failure,
            )
            for item in reversed(batch):
                self._queue.appendleft(item)
            self._run_singly(len(batch))
            return

        self._failures += 1
        delay = min(MAX_BACKOFF, 0.25 * 2**self._failures)
        if self.available:
            log.error(
                "the database is unavailable ({error}); holding writes and retrying",
                error=str(failure.value),
            )
        else:
            log.debug(
                "the database is still unavailable: {error}",
                error=str(failure.value),
            )
        self.available = False
        for item in reversed(batch):
            self._queue.appendleft(item)
        self._check_pressure()
        self._schedule_flush(delay)

    def _run_singly(self, count: int) -> None:
        """
        Write the next C{count} queued writes one per transaction, so that
        one bad write fails alone.
        """
        if count == 0:
            self._after_flush()
            return

        item = self._queue.popleft()
        self._flushing = True
        done = self._pool.runInteraction(self._thdBatch, [item])

        def ok(results: list[Any]) -> None:
            self._flushing = False
            item.done.callback(results[0])
            self._run_singly(count - 1)

        def failed(failure: Failure) -> None:
            self._flushing = False
            if is_transient(failure.value):
                self._queue.appendleft(item)
                self._batch_failed(failure, [])
                return
            log.failure("a write failed and is dropped", failure)
            item.done.errback(failure)
            self._run_singly(count - 1)

        done.addCallbacks(ok, failed)

    def _after_flush(self) -> None:
        if self._queue:
            self._schedule_flush(0.0)
        else:
            self._fire_drained()

    def _fire_drained(self) -> None:
        if self._queue or self._flushing:
            return
        waiting, self._drained = self._drained, []
        for item in waiting:
            item.callback(None)

    # Reads and ad-hoc work.

    def run_interaction(
        self,
        thd: Callable[..., T],
        *args: Any,
    ) -> defer.Deferred[T]:
        """
        Run C{thd(cursor, dialect, *args)} in a pool thread, outside the
        write queue.

        @return: fires with C{thd}'s result; fails with L{StoreUnavailable}
            while the database is down (at once while writes wait for
            it).
        """
        if not self.available and self._queue:
            return defer.fail(StoreUnavailable("the database is unavailable"))

        done = self._pool.runInteraction(thd, self.dialect, *args)

        def worked(result: T) -> T:
            if not self._queue:
                self.available = True
            return result

        def translate(failure: Failure) -> Failure:
            if is_transient(
                failure.value,
            ) and not failure.check(StoreUnavailable):
                self.available = False
                raise StoreUnavailable(str(failure.value))
            return failure

        return done.addCallbacks(worked, translate)

    def get_run(
        self, run_id: str, *, output_limit: int = 100_000
    ) -> defer.Deferred[dict[str, Any] | None]:
        """
        One run with its C{commands} and C{output}, or C{None}.
        """
        return self.run_interaction(thdGetRun, run_id, output_limit)

    def list_runs(
        self,
        *,
        worker: str | None = None,
        schedule: str | None = None,
        state: str | Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """
        Runs matching every filter given, newest slot first.

        @param since: first slot, unix seconds, inclusive.
        @param until: last slot, unix seconds, inclusive.
        """
        filters = {
            "worker": worker,
            "schedule": schedule,
            "state": state,
            "since": since,
            "until": until,
        }
        return self.run_interaction(thdListRuns, filters, limit)

    def schedule_runs(
        self,
        worker: str,
        schedule: str,
        *,
        limit: int = 20,
        output_limit: int = 10_000,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """
        The newest runs of one worker's schedule, each with its commands
        and output.
        """
        return self.run_interaction(
            _thdScheduleRuns, worker, schedule, limit, output_limit
        )

    def failed_runs(
        self, *, since: int | None = None, limit: int = 100
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """
        Runs that went wrong (failed, timed out, lost), newest first.
        """
        return self.list_runs(state=FAILURES, since=since, limit=limit)

    def latest_runs(
        self,
        schedule: str,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """
        The newest run of C{schedule} on every worker.
        """
        return self.run_interaction(thdLatestRuns, schedule)

    def workers(self) -> defer.Deferred[list[dict[str, Any]]]:
        """
        The rows of the C{workers} table.
        """
        return self.run_interaction(thdWorkers)

    def counts(self) -> defer.Deferred[dict[str, Any]]:
        """
        C{runs}, C{runs_by_state} and C{workers} counts.
        """
        return self.run_interaction(thdCounts)

    def cleanup(
        self,
        now: float | None = None,
    ) -> defer.Deferred[dict[str, int]]:
        """
        Apply retention now.

        @param now: unix seconds; the clock's time by default.
        @return: rows removed per table (C{runs}, C{commands}, C{output}).
        """
        moment = int(self._clock.seconds() if now is None else now)
        done = self.run_interaction(thdCleanup, moment, self._retention)

        def report(removed: dict[str, int]) -> dict[str, int]:
            log.info(
                "retention removed {runs} runs, {commands} commands and"
                " {output} output lines",
                **removed,
            )
            return removed

        return done.addCallback(report)

    def _schedule_cleanup(self) -> None:
        now = self._clock.seconds()
        when = next_cleanup(now, self._retention.hour)
        self._cleanup_call = self._clock.callLater(
            when - now,
            self._daily_cleanup,
        )

    def _daily_cleanup(self) -> None:
        self._cleanup_call = None
        done = self.cleanup()
        done.addErrback(
            lambda failure: log.failure("daily clean-up failed", failure),
        )
        self._schedule_cleanup()


def _thdScheduleRuns(
    cursor: Cursor,
    dialect: Dialect,
    worker: str,
    schedule: str,
    limit: int,
    output_limit: int,
) -> list[dict[str, Any]]:
    runs = thdListRuns(
        cursor,
        dialect,
        {"worker": worker, "schedule": schedule},
        limit,
    )
    for run in runs:
        run["commands"] = thdCommands(cursor, dialect, run["id"])
        run["output"] = thdOutput(cursor, dialect, run["id"], output_limit)
    return runs
