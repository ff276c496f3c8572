"""
Fakes for the server tests: a synchronous store on SQLite in memory and a
worker link that records what is sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from barto import wire
from barto.server.store import Store, run_direct, thdMigrate

START = 1_800_000_000.0
"""A whole second the clocks of these tests start at."""


class SyncStore(Store):
    """
    A L{Store} whose writes and reads run at once on an in-memory SQLite
    connection, so ledger and endpoint tests need no threads.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(None, "sqlite", clock=clock)  # type: ignore[arg-type]
        self.connection = sqlite3.connect(":memory:")
        run_direct(self.connection, thdMigrate, "sqlite", 0)
        self.writes: list[str] = []
        self.fail_next: Exception | None = None

    def write(self, thd: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        self.writes.append(thd.__name__)
        return self.run_interaction(thd, *args)

    def run_interaction(
        self, thd: Callable[..., Any], *args: Any
    ) -> defer.Deferred[Any]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            return defer.fail(error)
        return defer.succeed(run_direct(self.connection, thd, "sqlite", *args))

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """
        The rows of a query on the store.
        """
        return list(self.connection.execute(sql, args).fetchall())

    def run(self, run_id: str) -> dict[str, Any]:
        """
        One run's row as a dict.
        """
        cursor = self.connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
        names = [column[0] for column in cursor.description]
        row = cursor.fetchone()
        assert row is not None, f"no run {run_id}"
        return dict(zip(names, row, strict=True))


class FakeLink:
    """
    A stand-in for the worker registry: records what is sent.
    """

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.sent: list[tuple[str, wire.Message]] = []

    def send(self, worker: str, message: wire.Message) -> bool:
        if worker not in self.connected:
            return False
        self.sent.append((worker, message))
        return True

    def is_connected(self, worker: str) -> bool:
        return worker in self.connected

    def of_type(self, kind: type[wire.Message]) -> list[Any]:
        """
        The messages of one type sent so far.
        """
        return [message for _, message in self.sent if isinstance(message, kind)]
