"""
Handlers behind the CLI commands other than C{info}.

Each handler is one function registered with L{barto.server.cliapi}'s
registry; it reads the store through C{thd*} functions that run in a
database thread.  Every query is bounded (C{LIMIT}) and uses an index of
the schema in C{docs/architecture.md}: runs by C{(worker, schedule,
slot)}, C{(worker, slot)}, C{(schedule, slot)}, C{(state, slot)} or
C{(slot)}, output and commands by their run.  The shapes of the results
are documented in C{docs/cli.md}.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred

from barto import calendar, wire
from barto.cli import updates
from barto.config import ScheduleConfig
from barto.server.cliapi import (
    BadRequest,
    CliContext,
    NotFound,
    get_param,
    handler,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

RUN_STATES = wire.RUN_STATES

FAILED_STATES = ("failed", "timed_out", "lost")
"""The states C{failed} lists."""

FINAL_STATES = frozenset(RUN_STATES[3:])
"""The states a run ends in."""

MAX_LIMIT = 10_000
"""The most runs one request may ask for."""

QUERY_ROW_LIMIT = 1000
"""The default, and C{QUERY_MAX_ROWS} the largest, row limit of C{query}."""

QUERY_MAX_ROWS = 10_000

QUERY_SECONDS = 5.0
"""The time limit of one C{query}."""

_RUN_COLUMNS = (
    "id",
    "worker",
    "schedule",
    "slot",
    "trigger",
    "state",
    "reason",
    "exit_code",
    "created_at",
    "dispatched_at",
    "started_at",
    "ended_at",
    "output_lines",
)

_RUN_SELECT = (
    "SELECT id, worker, schedule, slot, `trigger`, state, reason, "
    "exit_code, created_at, dispatched_at, started_at, ended_at, "
    "output_lines FROM runs"
)

_OUTPUT_SELECT = (
    "SELECT seq, line, cmd, stream, at, data, cut FROM output WHERE run_id = ?"
)


# Conversions between store rows and the JSON the CLI gets.


def time_from_micros(micros: int | None) -> str | None:
    """
    A store time (unix microseconds) as a wire timestamp; C{None} stays.
    """
    if micros is None:
        return None
    return wire.format_time(EPOCH + timedelta(microseconds=int(micros)))


def time_from_slot(slot: int) -> str:
    """
    A slot (unix seconds) as a wire timestamp.
    """
    return wire.format_time(EPOCH + timedelta(seconds=int(slot)))


def slot_from_time(text: str) -> int:
    """
    A wire timestamp as unix seconds, rounded down.

    @raise ValueError: C{text} is not a timestamp.
    """
    return int((wire.parse_time(text) - EPOCH).total_seconds() // 1)


def run_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """
    One row of L{_RUN_SELECT} as the JSON of a run.

    C{duration} is the seconds from start to end, C{None} until both are
    known.
    """
    run = dict(zip(_RUN_COLUMNS, row, strict=True))
    started, ended = run["started_at"], run["ended_at"]
    duration = None
    if started is not None and ended is not None:
        duration = (int(ended) - int(started)) / 1_000_000
    for key in ("created_at", "dispatched_at", "started_at", "ended_at"):
        run[key] = time_from_micros(run[key])
    run["slot"] = time_from_slot(run["slot"])
    run["duration"] = duration
    return run


def line_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """
    One row of L{_OUTPUT_SELECT} as the JSON of an output line.
    """
    seq, line, cmd, stream, at, data, cut = row
    return {
        "seq": seq,
        "line": line,
        "cmd": cmd,
        "stream": stream,
        "at": time_from_micros(at),
        "data": data,
        "cut": cut,
    }


def placeholders(sql: str, dialect: str) -> str:
    """
    C{sql} written with C{?} parameters, in the paramstyle of C{dialect}.
    """
    return sql.replace("?", "%s") if dialect == "mariadb" else sql


# Reads, each run in a database thread with a cursor of the store.


def thd_runs(
    cursor: Any,
    dialect: str,
    *,
    worker: str | None = None,
    schedule: str | None = None,
    states: Sequence[str] = (),
    since: int | None = None,
    until: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """
    The latest runs that match every filter given, newest slot first.

    With several states, each is read on its own through the C{(state,
    slot)} index and the results merged, so no state's rows are sorted
    as a whole.

    @param since: only slots at or after this unix second.
    @param until: only slots before this unix second.
    """
    if len(states) > 1:
        runs: list[dict[str, Any]] = []
        for state in states:
            runs.extend(
                thd_runs(
                    cursor,
                    dialect,
                    worker=worker,
                    schedule=schedule,
                    states=(state,),
                    since=since,
                    until=until,
                    limit=limit,
                )
            )
        runs.sort(key=lambda run: (run["slot"], run["id"]), reverse=True)
        return runs[:limit]

    where: list[str] = []
    params: list[Any] = []
    filters = (
        ("worker = ?", worker),
        ("schedule = ?", schedule),
        ("state = ?", states[0] if states else None),
        ("slot >= ?", since),
        ("slot < ?", until),
    )
    for clause, value in filters:
        if value is not None:
            where.append(clause)
            params.append(value)

    sql = _RUN_SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY slot DESC LIMIT ?"
    params.append(limit)
    cursor.execute(placeholders(sql, dialect), params)
    return [run_from_row(row) for row in cursor.fetchall()]


def thd_run(cursor: Any, dialect: str, run_id: str) -> dict[str, Any] | None:
    """
    One run by its id, or C{None}.
    """
    sql = placeholders(_RUN_SELECT + " WHERE id = ?", dialect)
    cursor.execute(sql, (run_id,))
    row = cursor.fetchone()
    return None if row is None else run_from_row(row)


def thd_commands(
    cursor: Any,
    dialect: str,
    run_id: str,
) -> list[dict[str, Any]]:
    """
    The commands of a run, in order, with their exit statuses.
    """
    sql = (
        "SELECT idx, cmd, started_at, ended_at, exit_code, `signal`, reason "
        "FROM commands WHERE run_id = ? ORDER BY idx"
    )
    cursor.execute(placeholders(sql, dialect), (run_id,))
    commands = []
    for idx, cmd, started, ended, code, signal, reason in cursor.fetchall():
        commands.append(
            {
                "index": idx,
                "cmd": cmd,
                "started_at": time_from_micros(started),
                "ended_at": time_from_micros(ended),
                "exit_code": code,
                "signal": signal,
                "reason": reason,
            }
        )
    return commands


def thd_output_tail(
    cursor: Any, dialect: str, run_id: str, limit: int
) -> list[dict[str, Any]]:
    """
    The last C{limit} output lines of a run, in order.
    """
    sql = _OUTPUT_SELECT + " ORDER BY seq DESC, line DESC LIMIT ?"
    cursor.execute(placeholders(sql, dialect), (run_id, limit))
    lines = [line_from_row(row) for row in cursor.fetchall()]
    lines.reverse()
    return lines


def thd_output_page(
    cursor: Any,
    dialect: str,
    run_id: str,
    after: tuple[int, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """
    Up to C{limit} output lines of a run, in order, after the line
    C{(seq, line)} (from the start when C{None}).
    """
    sql = _OUTPUT_SELECT
    params: list[Any] = [run_id]
    if after is not None:
        sql += " AND (seq > ? OR (seq = ? AND line > ?))"
        params.extend((after[0], after[0], after[1]))
    sql += " ORDER BY seq, line LIMIT ?"
    params.append(limit)
    cursor.execute(placeholders(sql, dialect), params)
    return [line_from_row(row) for row in cursor.fetchall()]


def thd_output_texts(
    cursor: Any,
    dialect: str,
    run_id: str,
    limit: int,
) -> list[str]:
    """
    The text of the first C{limit} output lines of a run, in order.
    """
    sql = "SELECT data FROM output WHERE run_id = ? ORDER BY seq, line LIMIT ?"
    cursor.execute(placeholders(sql, dialect), (run_id, limit))
    return [data for (data,) in cursor.fetchall()]


def thd_marked_schedules(
    cursor: Any,
    dialect: str,
    worker: str,
) -> dict[str, str]:
    """
    The schedules the server has handled for a worker, with the last slot
    of each (from C{schedule_marks}, keyed by worker).
    """
    sql = (
        "SELECT schedule, last_slot FROM schedule_marks WHERE worker = ? "
        "ORDER BY schedule LIMIT ?"
    )
    cursor.execute(placeholders(sql, dialect), (worker, MAX_LIMIT))
    return {name: time_from_slot(slot) for name, slot in cursor.fetchall()}


def thd_marked_workers(cursor: Any, dialect: str, schedule: str) -> list[str]:
    """
    The workers the server has handled a schedule of this name for.
    """
    sql = "SELECT worker FROM schedule_marks WHERE schedule = ?"
    sql += " ORDER BY worker LIMIT ?"
    cursor.execute(placeholders(sql, dialect), (schedule, MAX_LIMIT))
    return [worker for (worker,) in cursor.fetchall()]


# query: one read-only SELECT.


class QueryRefused(ValueError):
    """
    A C{query} that is not one read-only SELECT; the message says why.
    """


_FORBIDDEN_WORDS = frozenset(
    """
    alter analyze attach begin call commit create deallocate delete detach
    do drop dumpfile execute flush get_lock grant handler insert install
    into kill load load_extension load_file lock merge next nextval optimize
    outfile pragma prepare procedure purge reindex release
    release_all_locks release_lock rename repair replace reset revoke
    rollback savepoint set setval shutdown start truncate uninstall unlock
    update upsert use vacuum
    """.split()
)

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")

_ONLY_SELECT = "only SELECT (or WITH ... SELECT) queries are allowed"


def check_select(sql: str, dialect: str) -> str:
    """
    The one SELECT (or C{WITH ... SELECT}) in C{sql}, or L{QueryRefused}.

    This is the first of the guards of C{query} (the others are a
    read-only transaction and, on SQLite, an authorizer): it refuses
    comments, a second statement, any statement but a SELECT, and, outside
    quotes, every word that writes, locks, reads files or changes the
    session (C{INTO OUTFILE}, C{ATTACH}, C{PRAGMA}, C{FOR UPDATE},
    C{LOAD_FILE}, ...).

    @param dialect: C{"sqlite"} or C{"mariadb"}: MariaDB strings take
        backslash escapes, SQLite's do not, and only SQLite quotes names
        in brackets.
    @return: the statement without a trailing semicolon.
    """
    words: list[str] = []
    end = _scan(sql, dialect, words)
    statement = sql[:end].strip()
    if not statement:
        raise QueryRefused("the query is empty")

    first = words[0].lower() if words else ""
    if first not in ("select", "with"):
        raise QueryRefused(_ONLY_SELECT)

    for word in words:
        if word.lower() in _FORBIDDEN_WORDS:
            raise QueryRefused(f"{word.upper()} is not allowed in a query")
    return statement


def _scan(sql: str, dialect: str, words: list[str]) -> int:
    """
    Walk C{sql}, collecting its unquoted words; return where the
    statement ends (its semicolon, or the end).
    """
    closers = {"'": "'", '"': '"', "`": "`"}
    if dialect == "sqlite":
        closers["["] = "]"
    index = 0
    while index < len(sql):
        char = sql[index]
        pair = sql[index : index + 2]
        if pair in ("--", "/*") or char == "#":
            raise QueryRefused("comments are not allowed in a query")
        if char == ";":
            if sql[index + 1 :].strip():
                raise QueryRefused("only one statement is allowed")
            return index
        if pair == ":=":
            raise QueryRefused("assignments (:=) are not allowed in a query")
        if char in closers:
            escapes = dialect == "mariadb" and char in "'\""
            index = _skip_quoted(sql, index, closers[char], escapes)
            continue
        match = _WORD.match(sql, index)
        if match is not None:
            words.append(match.group())
            index = match.end()
            continue
        index += 1
    return len(sql)


def _skip_quoted(sql: str, start: int, closer: str, escapes: bool) -> int:
    """
    The index just past the quoted text that starts at C{start}.
    """
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if escapes and char == "\\":
            index += 2
            continue
        if char == closer:
            doubled = sql[index + 1 : index + 2] == closer
            if doubled and closer != "]":
                index += 2
                continue
            return index + 1
        index += 1
    raise QueryRefused("a quoted string or name is not closed")


def json_value(value: Any) -> Any:
    """
    A database value as JSON: numbers and text stay, bytes become text
    (UTF-8 with replacement), anything else its string form.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return wire.format_time(value)
    return str(value)


_MARIADB_STATEMENT_TIMEOUT = 1969


def _too_long(seconds: float) -> str:
    """
    Why a query that ran out of time was stopped.
    """
    return f"the query took longer than {seconds:g} s"


_SQLITE_ALLOWED = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
)

_SQLITE_FUNCTIONS_REFUSED = frozenset(
    {
        "load_extension",
        "readfile",
        "writefile",
    }
)


def _sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, *rest: Any
) -> int:
    """
    Allow reading and pure functions only.
    """
    if action not in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        if name in _SQLITE_FUNCTIONS_REFUSED:
            return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def thd_query(
    connection: Any,
    dialect: str,
    statement: str,
    max_rows: int,
    seconds: float,
) -> dict[str, Any]:
    """
    Run one SELECT that L{check_select} allowed, read-only, with a row
    and a time limit, and roll back.

    On SQLite the connection is switched to C{query_only} and given an
    authorizer that allows reads only; on MariaDB the statement runs in
    C{START TRANSACTION READ ONLY} with C{max_statement_time} and
    C{sql_select_limit}.

    @param connection: a DB-API connection of the store's pool.
    @return: C{{"columns": [...], "rows": [[...]], "truncated": bool}}.
    """
    if dialect == "sqlite":
        run = _thd_query_sqlite
    else:
        run = _thd_query_mariadb
    columns, rows = run(connection, statement, max_rows, seconds)
    kept = rows[:max_rows]
    return {
        "columns": columns,
        "rows": [[json_value(value) for value in row] for row in kept],
        "truncated": len(rows) > max_rows,
    }


def _thd_query_sqlite(
    connection: Any, statement: str, max_rows: int, seconds: float
) -> tuple[list[str], list[Sequence[Any]]]:
    """
    L{thd_query} on SQLite.
    """
    # FIXME: the store's SQLite pool has one connection, so writes wait
    # while a query runs (up to its time limit).
    deadline = time.monotonic() + seconds

    def too_late() -> int:
        return 1 if time.monotonic() > deadline else 0

    cursor = connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    connection.set_authorizer(_sqlite_authorizer)
    connection.set_progress_handler(too_late, 10_000)
    try:
        cursor.execute(statement)
        columns = [column[0] for column in cursor.description or ()]
        rows = cursor.fetchmany(max_rows + 1)
    except sqlite3.OperationalError as error:
        if "interrupted" in str(error):
            raise QueryRefused(_too_long(seconds)) from None
        raise
    finally:
        cursor.close()
        connection.set_progress_handler(None, 0)
        connection.set_authorizer(None)
        connection.rollback()
        connection.execute("PRAGMA query_only = OFF")
    return columns, rows


def _thd_query_mariadb(
    connection: Any, statement: str, max_rows: int, seconds: float
) -> tuple[list[str], list[Sequence[Any]]]:
    """
    L{thd_query} on MariaDB.
    """
    # FIXME: the query may read all that the server's database user may,
    # other schemas too; a read-only account of its own would not.
    cursor = connection.cursor()
    try:
        cursor.execute(
            "SET SESSION max_statement_time = %s, sql_select_limit = %s",
            (seconds, max_rows + 1),
        )
        cursor.execute("START TRANSACTION READ ONLY")
        cursor.execute(statement)
        columns = [column[0] for column in cursor.description or ()]
        rows = cursor.fetchall()
    except Exception as error:
        if getattr(error, "errno", None) == _MARIADB_STATEMENT_TIMEOUT:
            raise QueryRefused(_too_long(seconds)) from None
        raise
    finally:
        cursor.close()
        connection.rollback()
        reset = connection.cursor()
        reset.execute("SET SESSION max_statement_time = DEFAULT")
        reset.execute("SET SESSION sql_select_limit = DEFAULT")
        reset.close()
    return columns, rows


def _thd_query_pooled(
    cursor: Any,
    dialect: str,
    statement: str,
    max_rows: int,
    seconds: float,
) -> dict[str, Any]:
    """
    L{thd_query} on the connection of an adbapi transaction.

    The database's complaints about the statement come back as
    C{{"refused": message}} rather than raised: the store would take any
    exception for the database being unavailable.
    """
    # adbapi hands interactions a Transaction; the raw DB-API connection
    # under it is needed for the SQLite authorizer and for a rollback
    # without adbapi's reconnect probe.
    connection = cursor._connection._connection
    try:
        return thd_query(connection, dialect, statement, max_rows, seconds)
    except QueryRefused as error:
        return {"refused": str(error)}
    except sqlite3.Error as error:
        return {"refused": str(error)}
    except Exception as error:
        errno = getattr(error, "errno", None)
        if isinstance(errno, int) and 0 < errno < _MARIADB_CLIENT_ERRORS:
            return {"refused": getattr(error, "msg", None) or str(error)}
        raise


_MARIADB_CLIENT_ERRORS = 2000
"""MariaDB error numbers from here on are the client's (connection)."""


# Parameters.


def _name(params: Mapping[str, Any], key: str) -> str:
    """
    A required worker or schedule name parameter.
    """
    return _checked_name(key, get_param(params, key, str))


def _optional_name(params: Mapping[str, Any], key: str) -> str | None:
    """
    A worker or schedule name parameter that may be left out.
    """
    value = get_param(params, key, str, None)
    return None if value is None else _checked_name(key, value)


def _checked_name(key: str, value: str) -> str:
    """
    C{value}, if it follows the name rule of the wire protocol.
    """
    if not wire.is_valid_name(value):
        raise BadRequest(f"{key} {value[:80]!r} is not a valid name")
    return value


def _count_param(
    params: Mapping[str, Any], key: str, default: int, high: int = MAX_LIMIT
) -> int:
    """
    A positive count parameter, at most C{high}.
    """
    value = get_param(params, key, int, default)
    if not 1 <= value <= high:
        raise BadRequest(f"{key} must be between 1 and {high}")
    return value


def _time_param(params: Mapping[str, Any], key: str) -> int | None:
    """
    A timestamp parameter as a unix second, or C{None} when absent.
    """
    value = get_param(params, key, str, None)
    if value is None:
        return None
    try:
        return slot_from_time(value)
    except ValueError:
        raise BadRequest(f"{key} {value[:40]!r} is not a timestamp") from None


def _states_param(params: Mapping[str, Any]) -> tuple[str, ...]:
    """
    The C{state} parameter: one state or a list of them.
    """
    value = params.get("state")
    if value is None:
        return ()
    states = (value,) if isinstance(value, str) else value
    if not isinstance(states, (list, tuple)) or not states:
        raise BadRequest("state must be a state or a list of states")
    for state in states:
        if state not in RUN_STATES:
            raise BadRequest(
                f"unknown state {str(state)[:40]!r} (expected one of "
                f"{', '.join(RUN_STATES)})"
            )
    return tuple(dict.fromkeys(states))


# Schedules from the config in force.


def _configured(
    ctx: CliContext, worker: str | None = None, name: str | None = None
) -> list[ScheduleConfig]:
    """
    The schedules in force, of one worker and/or one name if given.
    """
    return [
        schedule
        for schedule in ctx.scheduler.schedules()
        if worker in (None, schedule.worker) and name in (None, schedule.name)
    ]


_RANDOM_FIELDS = ("month", "day", "hour", "minute", "second")

_RANDOM_SALTS = ("a", "b", "c", "d")

_RANDOM = re.compile(r"(?<![A-Za-z])R(?![A-Za-z])")


def random_values(schedule: ScheduleConfig) -> dict[str, int]:
    """
    The values the C{R} fields of a schedule's calendar stand for.

    A field is C{R} when parsing the expression under another key gives
    another value for it (tried with L{_RANDOM_SALTS} keys, so a chance
    match hides a field once in 24**4 at worst); its value is the one
    under the schedule's own key (C{worker/name}), which the server uses.
    """
    if _RANDOM.search(schedule.on_calendar) is None:
        return {}

    spec = schedule.spec
    others = [
        calendar.parse(
            schedule.on_calendar,
            key=f"{schedule.worker}/{schedule.name}/{salt}",
            default_zone=spec.zone,
        )
        for salt in _RANDOM_SALTS
    ]
    found = {}
    for name in _RANDOM_FIELDS:
        chain = getattr(spec, name)
        if any(getattr(other, name) != chain for other in others):
            value = chain[0][0]
            found[name] = value // calendar.USEC if name == "second" else value
    return found


def schedule_json(
    ctx: CliContext, schedule: ScheduleConfig, now: datetime
) -> dict[str, Any]:
    """
    A schedule in force as JSON: its calendar as written and normalized,
    its C{R} values, zone and next elapse.
    """
    spec = schedule.spec
    elapse = ctx.scheduler.next_elapse(schedule.worker, schedule.name)
    if elapse is None:
        elapse = spec.next_elapse(now)
    zone = spec.zone_name or schedule.timezone or ctx.config.timezone
    return {
        "worker": schedule.worker,
        "name": schedule.name,
        "on_calendar": schedule.on_calendar,
        "normalized": str(spec),
        "random": random_values(schedule),
        "timezone": zone,
        "next_elapse": None if elapse is None else wire.format_time(elapse),
        "cmds": list(schedule.cmds),
        "timeout": schedule.timeout,
        "overlap": schedule.overlap,
    }


def _now(ctx: CliContext) -> datetime:
    """
    The server clock's time as an aware datetime.
    """
    return datetime.fromtimestamp(ctx.clock.seconds(), timezone.utc)


# Handlers.


@handler("schedules")
async def schedules(
    ctx: CliContext,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The schedules in force, of one worker if C{worker} is given.
    """
    worker = _optional_name(params, "worker")
    found = _configured(ctx, worker)
    if worker is not None and not found:
        raise NotFound(f"no schedules for worker {worker!r}")

    now = _now(ctx)
    return {"schedules": [schedule_json(ctx, each, now) for each in found]}


@handler("runs")
async def runs(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    The latest runs, newest first, filtered by C{worker}, C{schedule},
    C{state}, C{since} and C{until}; at most C{limit}.
    """
    found = await ctx.store.run_interaction(
        partial(
            thd_runs,
            worker=_optional_name(params, "worker"),
            schedule=_optional_name(params, "schedule"),
            states=_states_param(params),
            since=_time_param(params, "since"),
            until=_time_param(params, "until"),
            limit=_count_param(params, "limit", 50),
        )
    )
    return {"runs": found}


def thd_failed(
    cursor: Any,
    dialect: str,
    since: int | None,
    limit: int,
    lines: int,
) -> list[dict[str, Any]]:
    """
    The latest runs that failed, timed out or were lost, each with its
    last C{lines} output lines.
    """
    found = thd_runs(
        cursor,
        dialect,
        states=FAILED_STATES,
        since=since,
        limit=limit,
    )
    for run in found:
        tail = thd_output_tail(cursor, dialect, run["id"], lines)
        run["last_lines"] = [line["data"] for line in tail]
    return found


@handler("failed")
async def failed(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    The latest failed runs (states C{failed}, C{timed_out}, C{lost}) with
    their last output lines.
    """
    found = await ctx.store.run_interaction(
        thd_failed,
        _time_param(params, "since"),
        _count_param(params, "limit", 50),
        _count_param(params, "lines", 3, 100),
    )
    return {"runs": found}


def thd_runs_with_output(
    cursor: Any,
    dialect: str,
    worker: str,
    schedule: str,
    limit: int,
    lines: int,
) -> list[dict[str, Any]]:
    """
    The latest C{limit} runs of one worker's schedule, oldest first, each
    with its last C{lines} output lines.
    """
    found = thd_runs(
        cursor,
        dialect,
        worker=worker,
        schedule=schedule,
        limit=limit,
    )
    found.reverse()
    for run in found:
        run["output"] = thd_output_tail(cursor, dialect, run["id"], lines)
    return found


def thd_worker_overview(
    cursor: Any, dialect: str, worker: str, names: Sequence[str]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """
    For C{list -n}: the schedules the store knows for a worker, and the
    latest run of each of them and of C{names}.
    """
    marked = thd_marked_schedules(cursor, dialect, worker)
    latest = {}
    for name in sorted(set(marked) | set(names)):
        found = thd_runs(
            cursor,
            dialect,
            worker=worker,
            schedule=name,
            limit=1,
        )
        if found:
            latest[name] = found[0]
    return marked, latest


@handler("list")
async def list_(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    Without C{schedule}: the worker's schedules with their latest run.
    With it: that schedule's latest runs, oldest first, with output.
    """
    worker = _name(params, "worker")
    schedule = _optional_name(params, "schedule")
    if schedule is not None:
        found = await ctx.store.run_interaction(
            thd_runs_with_output,
            worker,
            schedule,
            _count_param(params, "runs", 10, 1000),
            _count_param(params, "lines", 1000, 100_000),
        )
        if not found and not _configured(ctx, worker, schedule):
            raise NotFound(f"no schedule {schedule!r} on worker {worker!r}")
        return {"worker": worker, "schedule": schedule, "runs": found}

    configured = {each.name: each for each in _configured(ctx, worker)}
    marked, latest = await ctx.store.run_interaction(
        thd_worker_overview, worker, sorted(configured)
    )
    if not configured and not marked:
        raise NotFound(f"no schedules for worker {worker!r}")

    now = _now(ctx)
    listed = []
    for name in sorted(set(configured) | set(marked)):
        each = configured.get(name)
        item = {
            "name": name,
            "configured": each is not None,
            "on_calendar": each.on_calendar if each else None,
            "next_elapse": None,
            "last_slot": marked.get(name),
            "last_run": latest.get(name),
        }
        if each is not None:
            item["next_elapse"] = schedule_json(ctx, each, now)["next_elapse"]
        listed.append(item)
    return {"worker": worker, "schedules": listed}


def thd_schedule_overview(
    cursor: Any,
    dialect: str,
    schedule: str,
    workers: Sequence[str],
    limit: int,
    lines: int,
) -> dict[str, list[dict[str, Any]]]:
    """
    For C{cmd}: the latest runs of a schedule on each worker that has it
    (in C{workers} or in the schedule marks), with output.
    """
    names = set(workers) | set(thd_marked_workers(cursor, dialect, schedule))
    found = {}
    for worker in sorted(names):
        latest = thd_runs_with_output(
            cursor,
            dialect,
            worker,
            schedule,
            limit,
            lines,
        )
        if latest or worker in workers:
            found[worker] = latest
    return found


@handler("cmd")
async def cmd(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    One schedule's latest runs on every worker, with output.
    """
    schedule = _name(params, "schedule")
    workers = [each.worker for each in _configured(ctx, name=schedule)]
    found = await ctx.store.run_interaction(
        thd_schedule_overview,
        schedule,
        workers,
        _count_param(params, "runs", 1, 100),
        _count_param(params, "lines", 100, 100_000),
    )
    if not found:
        raise NotFound(f"no schedule {schedule!r} on any worker")
    # FIXME: lines are capped per run, not per answer; a schedule on
    # thousands of workers makes a large answer.
    listed = [{"worker": each, "runs": runs} for each, runs in found.items()]
    return {"schedule": schedule, "workers": listed}


SHORT_ID = re.compile(r"[0-9a-f-]{6,36}")


def thd_find_run(
    cursor: Any,
    dialect: str,
    prefix: str,
) -> list[dict[str, Any]]:
    """
    The runs whose id starts with C{prefix} (at most two: enough to tell
    a unique prefix from an ambiguous one).
    """
    sql = _RUN_SELECT + " WHERE id >= ? AND id < ? ORDER BY id LIMIT 2"
    cursor.execute(placeholders(sql, dialect), (prefix, prefix + "g"))
    return [run_from_row(row) for row in cursor.fetchall()]


async def _find_run(ctx: CliContext, text: str) -> dict[str, Any]:
    """
    The run a full id or a unique id prefix (6 characters or more) names.
    """
    text = text.strip().lower()
    if SHORT_ID.fullmatch(text) is None:
        raise BadRequest(f"{text[:40]!r} is not a run id (or its start)")

    found = await ctx.store.run_interaction(thd_find_run, text)
    if not found:
        raise NotFound(f"no run {text!r}")
    if len(found) > 1 and found[0]["id"] != text:
        raise BadRequest(f"{text!r} is the start of more than one run id")
    return found[0]


SHOW_PAGE = 2000
"""Output lines per event of C{show}."""


@handler("show")
async def show(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    One run and its commands; its whole output goes before the answer as
    C{output} events of up to L{SHOW_PAGE} lines.
    """
    run = await _find_run(ctx, get_param(params, "run", str))
    commands = await ctx.store.run_interaction(thd_commands, run["id"])
    after = None
    sent = 0
    while True:
        page = await ctx.store.run_interaction(
            thd_output_page, run["id"], after, SHOW_PAGE
        )
        if page:
            ctx.send_event({"kind": "output", "lines": page})
            sent += len(page)
            after = (page[-1]["seq"], page[-1]["line"])
        if len(page) < SHOW_PAGE or ctx.closed.called:
            break
    return {"run": run, "commands": commands, "lines": sent}


UPDATE_CANDIDATES = 20
"""Successful runs of a worker C{updates} tries, newest first."""

UPDATE_MAX_LINES = 100_000
"""Output lines of one run C{updates} reads."""


def thd_updates(
    cursor: Any,
    dialect: str,
    worker: str,
    schedule: str | None,
    kind: str,
) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """
    The newest successful run whose output is C{kind}'s, and its summary.

    With C{schedule}, only that schedule's latest successful run is
    read; without, the worker's latest L{UPDATE_CANDIDATES} are tried in
    turn.

    @return: C{(run, summary)}; the summary is C{None} when the run
        named by C{schedule} is not that tool's output; C{None} when
        there is no run.
    """
    limit = 1 if schedule is not None else UPDATE_CANDIDATES
    candidates = thd_runs(
        cursor,
        dialect,
        worker=worker,
        schedule=schedule,
        states=("succeeded",),
        limit=limit,
    )
    for run in candidates:
        lines = thd_output_texts(cursor, dialect, run["id"], UPDATE_MAX_LINES)
        summary = updates.summarize(kind, lines)
        if summary is not None or schedule is not None:
            return run, summary
    return None


@handler("updates")
async def updates_(
    ctx: CliContext,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The update summary of C{kind} from the worker's newest successful run
    that holds that tool's output (of C{schedule}, when given).
    """
    worker = _name(params, "worker")
    schedule = _optional_name(params, "schedule")
    kind = get_param(params, "kind", str).lower()
    if kind not in updates.KINDS:
        raise BadRequest(
            f"invalid update kind: {kind[:20]!r} (expected one of "
            f"{', '.join(updates.KINDS)})"
        )

    store = ctx.store
    found = await store.run_interaction(thd_updates, worker, schedule, kind)
    where = f"{worker}/{schedule}" if schedule else f"worker {worker}"
    if found is None:
        raise NotFound(f"no successful run with {kind} output for {where}")
    run, summary = found
    if summary is None:
        latest = f"the latest successful run of {where} ({run['id']})"
        raise NotFound(f"{latest} has no {kind} output")
    return {"worker": worker, "kind": kind, "run": run, "summary": summary}


@handler("cleanup", admin=True)
async def cleanup(
    ctx: CliContext,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """
    Apply retention now and report the rows removed.
    """
    removed = await ctx.store.cleanup()
    return {"removed": removed}


@handler("clients")
async def clients(
    ctx: CliContext,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The connected workers with their host facts and versions.
    """
    return {"clients": ctx.workers.connected()}


@handler("query", admin=True)
async def query(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    The rows of one read-only SELECT, at most C{max_rows}, stopped after
    L{QUERY_SECONDS}.
    """
    sql = get_param(params, "sql", str)
    limits = (QUERY_ROW_LIMIT, QUERY_MAX_ROWS)
    max_rows = _count_param(params, "max_rows", *limits)
    try:
        statement = check_select(sql, ctx.store.dialect)
    except QueryRefused as error:
        raise BadRequest(f"query refused: {error}") from None

    result: dict[str, Any] = await ctx.store.run_interaction(
        _thd_query_pooled, statement, max_rows, QUERY_SECONDS
    )
    if "refused" in result:
        raise BadRequest(f"query refused: {result['refused']}")
    return result


class _RunFollower:
    """
    Relays the events of one run to a CLI until the run ends.

    It subscribes before the run is fired, so that no event is missed;
    events that come before the run id is known wait in a backlog.
    """

    def __init__(self, ctx: CliContext, worker: str, schedule: str) -> None:
        self.run_id: str | None = None
        self.ended: Deferred[Mapping[str, Any] | None] = Deferred()
        self._ctx = ctx
        self._backlog: list[Mapping[str, Any]] = []
        self._relaying = False
        key = (worker, schedule)
        self.unsubscribe = ctx.events.subscribe(
            lambda event: (event.get("worker"), event.get("schedule")) == key,
            self._received,
        )

    def start(self, run_id: str) -> None:
        """
        Relay the events of C{run_id}, the backlog first.
        """
        self.run_id = run_id
        self._relaying = True
        backlog, self._backlog = self._backlog, []
        for event in backlog:
            self._received(event)
        self._ctx.closed.addCallback(lambda _: self._end(None))

    def _received(self, event: Mapping[str, Any]) -> None:
        if not self._relaying:
            self._backlog.append(event)
            return
        if event.get("run") != self.run_id:
            return
        self._ctx.send_event(event)
        state = event.get("state") if event.get("kind") == "state" else None
        if state in FINAL_STATES:
            self._end(event)

    def _end(self, event: Mapping[str, Any] | None) -> None:
        if not self.ended.called:
            self.ended.callback(event)


@handler("run", admin=True)
async def run(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    Fire a schedule now (trigger C{manual}).

    With C{follow}, a C{fired} event gives the run id at once, the run's
    events (C{state}, C{output}, C{exit}) follow, and the answer, with
    the run as stored, comes when the run has ended.
    """
    worker = _name(params, "worker")
    schedule = _name(params, "schedule")
    follow = get_param(params, "follow", bool, False)
    if not _configured(ctx, worker, schedule):
        raise NotFound(f"no schedule {schedule!r} on worker {worker!r}")

    follower = _RunFollower(ctx, worker, schedule)
    try:
        run_id = ctx.scheduler.fire_now(worker, schedule)
        fired = {"run": run_id, "worker": worker, "schedule": schedule}
        if not follow:
            return {**fired, "stored": None}

        ctx.send_event({"kind": "fired", **fired})
        follower.start(run_id)
        await follower.ended
    finally:
        follower.unsubscribe()

    await ctx.store.drained()
    stored = await ctx.store.run_interaction(thd_run, run_id)
    return {**fired, "stored": stored}


@handler("watch")
async def watch(ctx: CliContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """
    Relay every run event (C{state}, C{output}, C{exit}) of the matching
    worker and schedule until the CLI goes away.

    A C{watching} event comes first, so the CLI knows the stream is on.
    """
    worker = _optional_name(params, "worker")
    schedule = _optional_name(params, "schedule")

    def wanted(event: Mapping[str, Any]) -> bool:
        return worker in (None, event.get("worker")) and schedule in (
            None,
            event.get("schedule"),
        )

    # FIXME: events for a CLI that reads slowly pile up in its transport;
    # a bound with a "dropped N events" notice would cap the memory.
    unsubscribe = ctx.events.subscribe(wanted, ctx.send_event)
    try:
        watching = {"worker": worker, "schedule": schedule}
        ctx.send_event({"kind": "watching", **watching})
        await ctx.closed
    finally:
        unsubscribe()
    return {}
