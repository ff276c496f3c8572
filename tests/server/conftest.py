"""
Fixtures for the server tests: configs, a synchronous store on SQLite in
memory, a fake worker link and a ledger wired to them on a L{Clock}.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from barto.config import ServerConfig, load_server_config
from barto.server import cliapi
from barto.server.runs import EventBus, RunLedger

# Lets the tests here import their fakes as "server_fakes".
sys.path.insert(0, os.path.dirname(__file__))

from server_fakes import START, FakeLink, SyncStore


@pytest.fixture
def clock() -> Clock:
    """
    A clock at L{START}.
    """
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def sync_store(clock: Clock) -> SyncStore:
    """
    A synchronous store on SQLite in memory.
    """
    return SyncStore(clock)


@pytest.fixture
def link() -> FakeLink:
    """
    A fake worker registry.
    """
    return FakeLink()


@pytest.fixture
def events() -> EventBus:
    """
    An event bus.
    """
    return EventBus()


@pytest.fixture
def ledger(
    sync_store: SyncStore, clock: Clock, link: FakeLink, events: EventBus
) -> RunLedger:
    """
    A ledger on the synchronous store and the fake link.
    """
    ledger = RunLedger(
        sync_store, clock=clock, events=events, lost_grace=300, dispatch_retry=30
    )
    ledger.attach(link)
    return ledger


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., ServerConfig]:
    """
    Write a C{bartos.toml} from TOML text (dedented) and load it; the
    SQLite store goes in C{tmp_path} unless the text names one.
    """

    def write(text: str = "", name: str = "bartos.toml") -> ServerConfig:
        body = textwrap.dedent(text)
        if "[sqlite]" not in body and "[mariadb]" not in body:
            body += f'\n[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return load_server_config(str(path), environ={})

    return write


@pytest.fixture
def schedules(write_config: Callable[..., ServerConfig]) -> Callable[..., Any]:
    """
    Build a schedules mapping from C{(worker, name, on_calendar, extra)}
    tuples through the real config loader.
    """

    def build(*items: tuple[str, str, str] | tuple[str, str, str, str]) -> Any:
        lines = []
        by_worker: dict[str, list[str]] = {}
        for item in items:
            worker, name, calendar = item[:3]
            extra = f", {item[3]}" if len(item) > 3 else ""
            by_worker.setdefault(worker, []).append(
                f'{{ name = "{name}", on_calendar = "{calendar}",'
                f' cmds = ["echo {name}"]{extra} }}'
            )
        for worker, entries in by_worker.items():
            lines.append(f"[schedules.{worker}]")
            lines.append("schedules = [" + ", ".join(entries) + "]")
        return write_config("\n".join(lines), name="schedules.toml").schedules

    return build


@pytest.fixture
def isolated_handlers() -> Iterator[dict[str, cliapi.Handler]]:
    """
    The handler registry, restored after the test.
    """
    saved = dict(cliapi.HANDLERS)
    try:
        yield cliapi.HANDLERS
    finally:
        cliapi.HANDLERS.clear()
        cliapi.HANDLERS.update(saved)
