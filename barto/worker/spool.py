"""
The spool: every record a worker makes, kept on disk until C{bartos} has
stored it.

A record (C{started}, C{output}, C{exit}, C{finished}) gets its C{rec}
number here, is committed, and only then may be sent; it is deleted when
the server's C{ack} names it. The numbers come from an C{AUTOINCREMENT}
key, so they grow across restarts even when the spool was emptied.

The spool also remembers which runs it has begun and finished, so that a
re-sent C{dispatch} does not run a slot twice, and so that a run that was
going on when the worker died can be closed after a restart.

SQLite is called synchronously, in the reactor thread. The database is in
WAL mode with C{synchronous=NORMAL}: a commit appends to the write-ahead
log without an C{fsync}, which costs tens of microseconds for a record,
and survives the worker being killed (only a crash of the machine can lose
the last commits). Records are written in batches (one transaction per
output flush, at most one per run every 100 ms or per 128 KiB), so a
thread pool would add ordering work and latency and save nothing.

The spool is bounded by C{max_bytes} of record frames. Past it, C{output}
records of finished runs are dropped first, oldest first, then the oldest
C{output} records of running runs; C{started}, C{exit} and C{finished}
records are never dropped. Each trim is logged as a warning.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from twisted.logger import Logger

from barto import wire

log = Logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rec INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    frame BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, rec);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished, at);
"""

# How many finished runs are remembered for refusing a repeated dispatch.
KEEP_FINISHED_RUNS = 10_000

# A trim frees space down to this share of the bound, so that a full
# spool is not trimmed again at every record.
TRIM_TARGET = 0.9

# SQLite's default limit of host parameters in one statement is 32766;
# acks are deleted in slices well below it.
_SLICE = 500


def record_frame(record: wire.Record) -> bytes:
    """
    The frame of a record: the bytes of L{wire.encode}, made faster.

    L{wire.encode} goes through C{dataclasses.asdict}, which deep-copies
    every line of an output record one by one. Records hold only plain
    values and tuples of strings, so a shallow dictionary gives the same
    JSON at a fraction of the cost.
    """
    body: dict[str, object] = {"type": record.TYPE}
    for spec in dataclasses.fields(record):
        body[spec.name] = getattr(record, spec.name)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class Spool:
    """
    A SQLite file of records not yet acknowledged by the server.

    @ivar path: the database file.
    @ivar max_bytes: the bound on the frames held.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        keep_finished: int = KEEP_FINISHED_RUNS,
    ) -> None:
        """
        Open (and create, with its directory) the spool at C{path}.

        @param max_bytes: the bound on the frames held.
        @param keep_finished: how many finished runs to remember.
        @raise sqlite3.Error: the file cannot be opened as a spool.
        @raise OSError: its directory cannot be created.
        """
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._keep_finished = keep_finished
        self._finished_since_prune = 0

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

        row = self._db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
        ).fetchone()
        self._next = (row[0] if row else 0) + 1
        total = self._db.execute("SELECT sum(size) FROM records").fetchone()
        self._bytes = int(total[0] or 0)
        self._prune_runs()

    @property
    def size(self) -> int:
        """
        The bytes of the frames held.
        """
        return self._bytes

    def count(self) -> int:
        """
        How many records are held.
        """
        (count,) = self._db.execute("SELECT count(*) FROM records").fetchone()
        return int(count)

    def add(self, records: Sequence[wire.Record]) -> list[tuple[int, bytes]]:
        """
        Number and commit records, in one transaction.

        Each record's C{rec} is replaced by the next spool number. A
        L{wire.Finished} also marks its run finished.

        @param records: the records, with any C{rec} (it is replaced).
        @return: each record's C{rec} and frame, in order, to be sent.
        @raise sqlite3.Error: nothing was committed.
        """
        added = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                added.append(self._insert(record))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._next = added[0][0] if added else self._next
            raise

        self._bytes += sum(len(frame) for _, frame in added)
        if self._bytes > self.max_bytes:
            self._trim()
        if self._finished_since_prune > self._keep_finished // 10:
            self._prune_runs()
        return added

    def _insert(self, record: wire.Record) -> tuple[int, bytes]:
        """
        Insert one record inside the open transaction.
        """
        rec = self._next
        frame = record_frame(dataclasses.replace(record, rec=rec))
        self._db.execute(
            "INSERT INTO records (rec, run, kind, size, frame) VALUES (?, ?, ?, ?, ?)",
            (rec, record.run, record.TYPE, len(frame), frame),
        )
        if isinstance(record, wire.Finished):
            self._db.execute(
                "UPDATE runs SET finished = 1 WHERE run = ?", (record.run,)
            )
            self._finished_since_prune += 1
        self._next = rec + 1
        return rec, frame

    def pending(self, after: int = 0, limit: int = 100) -> list[tuple[int, bytes]]:
        """
        Held records numbered above C{after}, in order.

        @param after: the last C{rec} already sent.
        @param limit: at most this many.
        @return: each record's C{rec} and frame.
        """
        rows = self._db.execute(
            "SELECT rec, frame FROM records WHERE rec > ? ORDER BY rec LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(int(rec), bytes(frame)) for rec, frame in rows]

    def ack(self, recs: Iterable[int]) -> int:
        """
        Delete the records the server has stored.

        Numbers the spool does not hold (already deleted, or trimmed) are
        ignored.

        @return: how many records were deleted.
        """
        numbers = sorted(set(recs))
        deleted = 0
        freed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(numbers), _SLICE):
                part = numbers[start : start + _SLICE]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"DELETE FROM records WHERE rec IN ({marks}) RETURNING size",
                    part,
                ).fetchall()
                deleted += len(rows)
                freed += sum(size for (size,) in rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

        self._bytes -= freed
        return deleted

    def begin_run(self, run: str, schedule: str, at: float) -> bool:
        """
        Remember that a run begins, unless the spool knows it already.

        @param at: the time, in seconds since the epoch.
        @return: C{True} if the run is new; C{False} if it was begun
            before (it is running, finished, or was cut off by a crash).
        """
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO runs (run, schedule, finished, at)"
            " VALUES (?, ?, 0, ?)",
            (run, schedule, at),
        )
        return cursor.rowcount == 1

    def interrupted_runs(self) -> list[tuple[str, str]]:
        """
        Runs begun and never finished: the worker stopped during them.

        @return: each run's id and schedule, oldest first.
        """
        rows = self._db.execute(
            "SELECT run, schedule FROM runs WHERE finished = 0 ORDER BY at"
        ).fetchall()
        return [(str(run), str(schedule)) for run, schedule in rows]

    def close(self) -> None:
        """
        Close the database; the spool cannot be used afterwards.
        """
        self._db.close()

    def _trim(self) -> None:
        """
        Drop C{output} records until the spool is below its bound again.
        """
        excess = self._bytes - int(self.max_bytes * TRIM_TARGET)
        finished = (
            "SELECT rec, size FROM records WHERE kind = 'output' AND run IN"
            " (SELECT run FROM runs WHERE finished = 1) ORDER BY rec"
        )
        running = "SELECT rec, size FROM records WHERE kind = 'output' ORDER BY rec"

        for query, whose in ((finished, "finished"), (running, "running")):
            chosen, freed = self._choose(query, excess)
            if not chosen:
                continue

            self.ack(chosen)
            excess -= freed
            log.warn(
                "spool full: dropped {count} output records ({size} bytes)"
                " of {whose} runs",
                count=len(chosen),
                size=freed,
                whose=whose,
            )
            if excess <= 0:
                return

        log.warn(
            "spool holds {size} bytes, over its bound of {bound}, and has"
            " no output left to drop",
            size=self._bytes,
            bound=self.max_bytes,
        )

    def _choose(self, query: str, excess: int) -> tuple[list[int], int]:
        """
        The first records of C{query} whose sizes add up to C{excess}.
        """
        chosen = []
        freed = 0
        for rec, size in self._db.execute(query):
            if freed >= excess:
                break
            chosen.append(int(rec))
            freed += int(size)
        return chosen, freed

    def _prune_runs(self) -> None:
        """
        Forget finished runs beyond the newest C{keep_finished}.
        """
        self._db.execute(
            "DELETE FROM runs WHERE finished = 1 AND run NOT IN"
            " (SELECT run FROM runs WHERE finished = 1"
            " ORDER BY at DESC LIMIT ?)",
            (self._keep_finished,),
        )
        self._finished_since_prune = 0
