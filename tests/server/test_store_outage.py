"""
MariaDB going away and coming back, on a throwaway server of this test's
own: writes are held (with back-pressure past C{max_pending}), nothing is
acknowledged meanwhile, reads answer unavailable, and everything is
written once the server is back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.processes import ThrowawayMariaDB
from twisted.internet import reactor, task

from barto.server.store import NewRun, Store, StoreUnavailable, thdAddRun
from barto.server.tap import prepare_store

pytestmark = pytest.mark.mariadb

SLOT = 1_800_000_000


async def until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


def run(n: int) -> NewRun:
    return NewRun("w1", "job", SLOT + n, "schedule", "missed", "", ("true",), 0)


@pytest_twisted.ensureDeferred
async def test_outage_survived(tmp_path: Path, write_config: Any) -> None:
    """Writes wait out a MariaDB outage, under back-pressure, then commit."""
    if not ThrowawayMariaDB.available():
        pytest.skip("mariadb-install-db or mariadbd missing")
    server = ThrowawayMariaDB(tmp_path / "db")
    (tmp_path / "db").mkdir()
    server.start()
    store: Store | None = None
    try:
        server.execute("CREATE DATABASE barto CHARACTER SET utf8mb4")
        config = write_config(
            f"""
            [mariadb]
            host = "127.0.0.1"
            port = {server.port}
            username = "root"
            password = ""
            database = "barto"
            [store]
            flush_interval = 0.01
            max_pending = 5
            """
        )
        prepare_store(config, 0)
        store = Store.from_config(config, reactor)  # type: ignore[arg-type]
        pressure: list[bool] = []
        store.on_pressure(pressure.append)
        store.startService()
        assert await store.write(thdAddRun, run(0)) is True

        server.stop()
        held = [store.write(thdAddRun, run(n)) for n in range(1, 11)]
        await until(lambda: not store.available, "the outage to be noticed")

        assert pressure == [True]
        assert not any(item.called for item in held)
        with pytest.raises(StoreUnavailable):
            await store.counts()

        server.start()
        results = [await item for item in held]

        assert results == [True] * 10
        assert store.available and pressure == [True, False]
        assert (await store.counts())["runs"] == 11
    finally:
        if store is not None:
            await store.stopService()
        server.stop()
