"""
Tests for the store on a real pool, against SQLite and MariaDB: schema,
exactly-once records, batching, queries and retention.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from barto import wire
from barto.config import RetentionConfig, ServerConfig
from barto.server.runs import slot_time
from barto.server.store import (
    NewRun,
    RecordResult,
    Store,
    next_cleanup,
    open_direct,
    run_direct,
    schema_files,
    split_statements,
    thdAddRun,
    thdMarks,
    thdMigrate,
    thdOpenRuns,
    thdSaveWorker,
    thdSchemaVersion,
    thdStoreRecord,
    thdUpdateRun,
    thdWriteBatch,
)
from barto.server.tap import prepare_store

SLOT = 1_800_000_000
DAY = 86400


def mariadb_config(write_config: Any, db: Any) -> ServerConfig:
    """
    A config whose store is the test's own MariaDB database.
    """
    config: ServerConfig = write_config(
        f"""
        [mariadb]
        host = "{db.host}"
        port = {db.port}
        username = "{db.username}"
        password = "{db.password}"
        database = "{db.database}"
        """
    )
    return config


@pytest.fixture(params=["sqlite", "mariadb"])
def store_config(request: pytest.FixtureRequest, write_config: Any) -> ServerConfig:
    """
    A migrated store's config, once per dialect.
    """
    if request.param == "sqlite":
        config: ServerConfig = write_config("")
    else:
        config = mariadb_config(write_config, request.getfixturevalue("mariadb"))
    prepare_store(config, 0)
    return config


@pytest.fixture
def store(store_config: ServerConfig) -> Iterator[Store]:
    """
    A running store on the global reactor, flushing quickly.
    """
    store = Store.from_config(store_config, reactor)  # type: ignore[arg-type]
    store._flush_interval = 0.01
    store.startService()
    yield store
    pytest_twisted.blockon(store.stopService())


def new_run(
    slot: int = SLOT,
    schedule: str = "job",
    worker: str = "w1",
    state: str = "dispatched",
) -> NewRun:
    return NewRun(
        worker,
        schedule,
        slot,
        "schedule",
        state,
        "",
        ("echo a", "echo b"),
        slot * 10**6,
    )


def at(slot: int = SLOT) -> str:
    return wire.format_time(slot_time(slot))


async def finish(store: Store, run: NewRun, state: str, lines: int = 0) -> None:
    """
    Record a whole run: started, output, exit, finished.
    """
    await store.write(thdAddRun, run)
    records: list[wire.Record] = [
        wire.Started(rec=0, run=run.id, cmd=0, at=at(run.slot))
    ]
    if lines:
        records.append(
            wire.Output(
                rec=1,
                run=run.id,
                seq=0,
                cmd=0,
                at=at(run.slot),
                lines=tuple(f"line {n}" for n in range(lines)),
            )
        )
    records.append(wire.Finished(rec=2, run=run.id, at=at(run.slot + 1), state=state))
    for record in records:
        await store.write(thdStoreRecord, run.worker, record)


def test_split_statements() -> None:
    """Schema files split into statements at line-ending semicolons."""
    assert split_statements("-- c\nCREATE a (x);\n\nCREATE b\n (y);\n") == [
        "CREATE a (x)",
        "CREATE b\n (y)",
    ]


def test_schema_files_match() -> None:
    """Both dialects ship the same schema versions."""
    assert [v for v, _, _ in schema_files("sqlite")] == [
        v for v, _, _ in schema_files("mariadb")
    ]


def test_migrate_once(store_config: ServerConfig) -> None:
    """Migrating records the version; a second migration applies nothing."""
    connection, dialect = open_direct(store_config)
    try:
        assert run_direct(connection, thdSchemaVersion, dialect) == 2
        assert run_direct(connection, thdMigrate, dialect, 0) == []
    finally:
        connection.close()


def _thd_downgrade_to_1(cursor: Any, dialect: str) -> None:
    on = "" if dialect == "sqlite" else " ON schedule_marks"
    cursor.execute(f"DROP INDEX schedule_marks_schedule{on}")
    cursor.execute("DELETE FROM schema_version WHERE version = 2")


def _thd_has_marks_index(cursor: Any, dialect: str) -> bool:
    if dialect == "sqlite":
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            " AND name = 'schedule_marks_schedule'"
        )
    else:
        cursor.execute(
            "SHOW INDEX FROM schedule_marks WHERE Key_name = 'schedule_marks_schedule'"
        )
    return bool(cursor.fetchall())


def test_upgrade_from_version_1(store_config: ServerConfig) -> None:
    """A store at schema version 1 gets version 2 and its index."""
    connection, dialect = open_direct(store_config)
    try:
        run_direct(connection, _thd_downgrade_to_1, dialect)
        assert run_direct(connection, _thd_has_marks_index, dialect) is False

        assert run_direct(connection, thdMigrate, dialect, 0) == [2]

        assert run_direct(connection, thdSchemaVersion, dialect) == 2
        assert run_direct(connection, _thd_has_marks_index, dialect) is True
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_run_recorded_once_and_mark(store: Store) -> None:
    """A slot is recorded once with its commands; the mark only moves on."""
    assert await store.write(thdAddRun, new_run()) is True
    assert await store.write(thdAddRun, new_run()) is False
    await store.write(thdAddRun, new_run(SLOT - 10))

    run = await store.get_run(new_run().id)
    assert run is not None
    assert [c["cmd"] for c in run["commands"]] == ["echo a", "echo b"]
    assert await store.run_interaction(thdMarks) == {("w1", "job"): SLOT}


@pytest_twisted.ensureDeferred
async def test_records_exactly_once(store: Store) -> None:
    """Every record kind is stored once however often it is resent."""
    run = new_run()
    await store.write(thdAddRun, run)
    records: list[wire.Record] = [
        wire.Started(rec=1, run=run.id, cmd=0, at=at()),
        wire.Output(rec=2, run=run.id, seq=0, cmd=0, at=at(), lines=("a", "b")),
        wire.Output(
            rec=3, run=run.id, seq=1, cmd=0, stream="stderr", at=at(), lines=(), cut=99
        ),
        wire.Exit(rec=4, run=run.id, cmd=0, at=at(), code=3, reason=""),
        wire.Finished(rec=5, run=run.id, at=at(SLOT + 2), state="failed", code=3),
    ]

    first = [await store.write(thdStoreRecord, "w1", r) for r in records]
    again = [await store.write(thdStoreRecord, "w1", r) for r in records]

    assert [r.status for r in first] == ["stored"] * 5
    assert [r.status for r in again] == ["duplicate"] * 5
    assert [r.state for r in first] == ["running", None, None, None, "failed"]
    stored = await store.get_run(run.id)
    assert stored is not None
    assert (stored["state"], stored["exit_code"], stored["output_lines"]) == (
        "failed",
        3,
        2,
    )
    assert [(o["data"], o["cut"]) for o in stored["output"]] == [
        ("a", 0),
        ("b", 0),
        ("", 99),
    ]
    assert stored["commands"][0]["exit_code"] == 3
    foreign = await store.write(thdStoreRecord, "w2", records[0])
    assert foreign.status == "unknown"


@pytest_twisted.ensureDeferred
async def test_open_runs(store: Store) -> None:
    """The store returns unfinished and undecided missed runs, oldest first."""
    await store.write(thdAddRun, new_run(SLOT + 2, "a", state="running"))
    await store.write(thdAddRun, new_run(SLOT + 1, "b", state="pending"))
    undecided = NewRun("w1", "c", SLOT, "schedule", "missed", "clock jump", (), 0)
    decided = NewRun(
        "w1", "d", SLOT, "schedule", "missed", "server down; not run", (), 0
    )
    await store.write(thdAddRun, undecided)
    await store.write(thdAddRun, decided)
    await finish(store, new_run(SLOT, "e"), "succeeded")

    rows = await store.run_interaction(thdOpenRuns)

    assert [(r["schedule"], r["state"]) for r in rows] == [
        ("c", "missed"),
        ("b", "pending"),
        ("a", "running"),
    ]


@pytest_twisted.ensureDeferred
async def test_writes_batched(store: Store) -> None:
    """Writes queued together commit in one transaction, in order."""
    calls: list[int] = []
    original = store._thdBatch

    def counting(cursor: Any, batch: Any) -> Any:
        calls.append(len(batch))
        return original(cursor, batch)

    store._thdBatch = counting  # type: ignore[method-assign]
    waiting = [store.write(thdAddRun, new_run(SLOT + n)) for n in range(50)]
    results = [await item for item in waiting]

    assert results == [True] * 50
    assert calls == [50]


@pytest_twisted.ensureDeferred
async def test_batch_results_as_one_by_one(store: Store) -> None:
    """
    Writes queued together (new runs, records, resends, a foreign record)
    get the results they would get one by one, and awkward lines come back
    as they went in.
    """
    awkward = ("back\\slash", "it's", 'say "hi"', "nul\0", "cr\r", "sub\x1a", "ü 😀")
    runs = [new_run(SLOT + n) for n in range(3)]
    writes: list[tuple[Any, ...]] = []
    for run in runs:
        writes.append((thdAddRun, run))
        writes.append(
            (thdStoreRecord, "w1", wire.Started(rec=1, run=run.id, cmd=0, at=at()))
        )
        output = wire.Output(rec=2, run=run.id, seq=0, cmd=0, at=at(), lines=awkward)
        writes.append((thdStoreRecord, "w1", output))
        writes.append((thdStoreRecord, "w1", output))
        writes.append((thdStoreRecord, "w2", output))
        writes.append(
            (
                thdStoreRecord,
                "w1",
                wire.Output(rec=3, run=run.id, seq=1, cmd=0, at=at(), lines=("x\ny",)),
            )
        )
        writes.append(
            (
                thdStoreRecord,
                "w1",
                wire.Finished(rec=4, run=run.id, at=at(SLOT + 5), state="succeeded"),
            )
        )
    writes.append((thdAddRun, runs[0]))

    results = [await item for item in [store.write(*write) for write in writes]]

    statuses = [
        result
        if isinstance(result, bool)
        else (result.status, result.state, result.lines)
        for result in results
    ]
    one_run = [
        True,
        ("stored", "running", 0),
        ("stored", None, len(awkward)),
        ("duplicate", None, 0),
        ("unknown", None, 0),
        ("stored", None, 1),
        ("stored", "succeeded", 0),
    ]
    assert statuses == one_run * 3 + [False]
    assert results[2].slot == SLOT and results[2].schedule == "job"
    for run in runs:
        stored = await store.get_run(run.id)
        assert stored is not None
        assert stored["state"] == "succeeded"
        assert stored["output_lines"] == len(awkward) + 1
        assert [o["data"] for o in stored["output"]] == [*awkward, "x\ny"]
    assert await store.run_interaction(thdMarks) == {("w1", "job"): SLOT + 2}


def _thdTouch(cursor: Any, dialect: Any, run_id: str) -> None:
    """A write the batch does not know: it reads and changes a run."""
    mark = "?" if dialect == "sqlite" else "%s"
    cursor.execute(
        f"UPDATE runs SET reason = {mark} WHERE id = {mark} AND state = 'running'",
        ("touched", run_id),
    )


def _snapshot(cursor: Any) -> dict[str, list[tuple[Any, ...]]]:
    tables = {
        "runs": "id",
        "commands": "run_id, idx",
        "output": "run_id, seq, line",
        "schedule_marks": "worker, schedule",
    }
    found = {}
    for table, order in tables.items():
        cursor.execute(f"SELECT * FROM {table} ORDER BY {order}")
        found[table] = [tuple(row) for row in cursor.fetchall()]
    return found


def test_mixed_records_batched_as_one_by_one(store_config: ServerConfig) -> None:
    """
    A batch mixing started, output, exit and finished records of several
    runs (new, existing, lost, unknown, foreign), with resends, records
    out of order and other writes between them, leaves the store as
    applying each write alone does, and gives each the same result.
    """
    existing, lost, fresh = new_run(SLOT), new_run(SLOT + 1), new_run(SLOT + 2)
    missing = new_run(SLOT + 3)
    setup: list[tuple[Any, ...]] = [
        (thdAddRun, existing),
        (thdAddRun, lost),
        (
            thdUpdateRun,
            lost.id,
            {"state": "lost", "reason": "worker offline"},
            ("dispatched",),
        ),
    ]

    def started(run: NewRun, cmd: int, second: int = 0) -> tuple[Any, ...]:
        record = wire.Started(rec=0, run=run.id, cmd=cmd, at=at(run.slot + second))
        return (thdStoreRecord, "w1", record)

    def exited(run: NewRun, cmd: int, code: int = 0, worker: str = "w1") -> Any:
        record = wire.Exit(
            rec=0, run=run.id, cmd=cmd, at=at(run.slot + 3), code=code, reason="r"
        )
        return (thdStoreRecord, worker, record)

    def finished(run: NewRun, state: str, code: int | None = None) -> Any:
        record = wire.Finished(
            rec=0,
            run=run.id,
            at=at(run.slot + 4),
            state=state,
            code=code,  # type: ignore[arg-type]
        )
        return (thdStoreRecord, "w1", record)

    def output(run: NewRun, seq: int, *lines: str) -> tuple[Any, ...]:
        record = wire.Output(rec=0, run=run.id, seq=seq, cmd=0, at=at(), lines=lines)
        return (thdStoreRecord, "w1", record)

    writes: list[tuple[Any, ...]] = [
        exited(existing, 1, 3),
        started(existing, 0),
        output(existing, 0, "a", "b"),
        started(existing, 0, 9),
        exited(existing, 0, 1),
        exited(existing, 0, 2),
        started(existing, 7),
        exited(existing, 0, 5, worker="w2"),
        started(lost, 1),
        finished(lost, "failed", 4),
        finished(lost, "succeeded"),
        started(lost, 0),
        (thdAddRun, fresh),
        finished(fresh, "cancelled"),
        started(fresh, 0),
        output(fresh, 1, "late"),
        output(fresh, 0, "x"),
        output(fresh, 1, "late"),
        exited(fresh, 0),
        started(missing, 0),
        finished(missing, "failed"),
        (thdUpdateRun, existing.id, {"state": "lost", "reason": "x"}, ("running",)),
        started(existing, 1, 5),
        (_thdTouch, existing.id),
        started(existing, 1, 6),
        exited(existing, 1, 0),
        finished(existing, "succeeded", 0),
        finished(existing, "failed", 1),
        (thdSaveWorker, "w1", {"hostname": "h"}),
        (thdAddRun, missing),
        exited(missing, 1, 9),
        finished(missing, "timed_out"),
        started(missing, 1),
        (thdAddRun, fresh),
        finished(fresh, "failed"),
    ]

    connection, dialect = open_direct(store_config)
    cursor = connection.cursor()

    def apply(batched: bool) -> tuple[list[Any], dict[str, Any]]:
        try:
            for thd, *args in setup:
                thd(cursor, dialect, *args)
            if batched:
                results = thdWriteBatch(
                    cursor, dialect, [(thd, tuple(args)) for thd, *args in writes]
                )
            else:
                results = [thd(cursor, dialect, *args) for thd, *args in writes]
            return results, _snapshot(cursor)
        finally:
            connection.rollback()

    try:
        alone, alone_rows = apply(batched=False)
        together, together_rows = apply(batched=True)
    finally:
        cursor.close()
        connection.close()

    assert together == alone
    assert together_rows == alone_rows
    records = [result for result in alone if isinstance(result, RecordResult)]
    assert {result.status for result in records} == {"stored", "duplicate", "unknown"}
    assert {result.state for result in records} >= {"running", "failed", None}
    assert len(together_rows["runs"]) == 4


@pytest_twisted.ensureDeferred
async def test_unencodable_output_fails_alone(store: Store) -> None:
    """A line that cannot be encoded fails its write only, not the queue."""
    run = new_run()
    added = store.write(thdAddRun, run)
    bad = wire.Output(rec=1, run=run.id, seq=0, cmd=0, at=at(), lines=("\ud800",))
    refused = store.write(thdStoreRecord, "w1", bad)
    good = wire.Output(rec=2, run=run.id, seq=1, cmd=0, at=at(), lines=("ok",))
    later = store.write(thdStoreRecord, "w1", good)

    assert await added is True
    with pytest.raises(UnicodeError):
        await refused
    assert (await later).status == "stored"
    assert store.available


@pytest_twisted.ensureDeferred
async def test_bad_write_fails_alone(store: Store) -> None:
    """A write the database refuses fails by itself; its batch commits."""
    good = store.write(thdAddRun, new_run())
    bad = store.write(thdUpdateRun, "x", {"no_such_column": 1}, ("pending",))
    later = store.write(thdAddRun, new_run(SLOT + 1))

    assert await good is True
    with pytest.raises(Exception, match="no_such_column"):
        await bad
    assert await later is True
    assert store.available


@pytest_twisted.ensureDeferred
async def test_queries(store: Store) -> None:
    """The query surface filters, orders and counts runs and workers."""
    await finish(store, new_run(SLOT, "a"), "succeeded", lines=2)
    await finish(store, new_run(SLOT + 60, "a"), "failed")
    await finish(store, new_run(SLOT + 30, "a", worker="w2"), "succeeded")
    await finish(store, new_run(SLOT + 90, "b"), "timed_out")
    await store.write(thdSaveWorker, "w1", {"hostname": "box", "version": "1"})

    listed = await store.list_runs(worker="w1", schedule="a")
    assert [r["slot"] for r in listed] == [SLOT + 60, SLOT]
    ranged = await store.list_runs(since=SLOT + 30, until=SLOT + 60, limit=10)
    assert [r["slot"] for r in ranged] == [SLOT + 60, SLOT + 30]
    assert [r["state"] for r in await store.list_runs(state="succeeded")] == [
        "succeeded",
        "succeeded",
    ]
    failed = await store.failed_runs()
    assert [(r["schedule"], r["state"]) for r in failed] == [
        ("b", "timed_out"),
        ("a", "failed"),
    ]
    latest = await store.latest_runs("a")
    assert [(r["worker"], r["slot"]) for r in latest] == [
        ("w1", SLOT + 60),
        ("w2", SLOT + 30),
    ]
    with_output = await store.schedule_runs("w1", "a")
    assert [len(r["output"]) for r in with_output] == [0, 2]
    assert [w["hostname"] for w in await store.workers()] == ["box"]
    counts = await store.counts()
    assert counts["runs"] == 4 and counts["workers"] == 1
    assert counts["runs_by_state"] == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert await store.get_run(wire.run_id("x", "y", slot_time(1))) is None


@pytest_twisted.ensureDeferred
async def test_cleanup_by_age(store: Store) -> None:
    """Retention deletes old finished runs by state; unfinished stay."""
    now = SLOT + 100 * DAY
    await finish(store, new_run(now - 40 * DAY, "old_ok"), "succeeded", lines=3)
    await finish(store, new_run(now - 40 * DAY, "old_bad"), "failed")
    await finish(store, new_run(now - 100 * DAY, "ancient_bad"), "failed")
    await finish(store, new_run(now - DAY, "new_ok"), "succeeded")
    await store.write(thdAddRun, new_run(now - 200 * DAY, "stuck", state="running"))

    removed = await store.cleanup(now)

    assert removed == {"runs": 2, "commands": 4, "output": 3}
    left = sorted(r["schedule"] for r in await store.list_runs(limit=100))
    assert left == ["new_ok", "old_bad", "stuck"]


@pytest_twisted.ensureDeferred
async def test_cleanup_caps(store: Store) -> None:
    """max_runs and max_output_lines cap runs per schedule and lines."""
    store._retention = RetentionConfig(max_runs=2, max_output_lines=2)
    for n in range(4):
        await finish(store, new_run(SLOT + n), "succeeded", lines=5)

    removed = await store.cleanup(SLOT + 10)

    assert removed["runs"] == 2
    runs = await store.schedule_runs("w1", "job")
    assert [r["slot"] for r in runs] == [SLOT + 3, SLOT + 2]
    assert [[o["data"] for o in r["output"]] for r in runs] == [
        ["line 0", "line 1"]
    ] * 2
    assert [r["output_lines"] for r in runs] == [2, 2]


@pytest_twisted.ensureDeferred
async def test_reads_find_the_database_back(store: Store) -> None:
    """A read with no writes waiting finds the database back."""
    store.available = False

    counts = await store.counts()

    assert counts["runs"] == 0
    assert store.available


def test_next_cleanup() -> None:
    """The daily clean-up is at the next retention hour, UTC."""
    midnight = SLOT - SLOT % DAY
    assert next_cleanup(midnight + 3600, 3) == midnight + 3 * 3600
    assert next_cleanup(midnight + 3 * 3600, 3) == midnight + DAY + 3 * 3600


def test_sqlite_file_and_parent_created(write_config: Any, tmp_path: Path) -> None:
    """The SQLite file and its folder are created on first start, in WAL."""
    path = tmp_path / "deep" / "er" / "store.sqlite3"
    config = write_config(f'[sqlite]\npath = "{path}"\n')

    prepare_store(config, 0)

    assert path.exists()
    connection, _ = open_direct(config)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
