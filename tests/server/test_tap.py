"""
Tests for C{twistd bartos}: options, the service tree, --migrate and the
SIGHUP reload.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application import internet

from barto.server import clicommands, tap
from barto.server.scheduler import Scheduler
from barto.server.store import Store


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    """
    A valid config with one schedule and a SQLite store in tmp_path.
    """
    return write(
        tmp_path / "bartos.toml",
        f"""
[listen]
ip = "127.0.0.1"
port = 28999
[sqlite]
path = "{tmp_path / "store.sqlite3"}"
[schedules.w1]
schedules = [{{ name = "a", on_calendar = "daily", cmds = ["true"] }}]
""",
    )


def test_options(config_file: str) -> None:
    """The original's flags parse: -v/-q repeat, -e, -c, -t, --migrate."""
    options = tap.Options()
    options.parseOptions(
        ["-vv", "-q", "-e", "-c", config_file, "-t", "/tmp/log", "--migrate"]
    )

    config = options["config"]
    assert dict(options) == {
        "verbose": 2,
        "quiet": 1,
        "enable-std-output": 1,
        "migrate": 1,
        "config-absolute-path": config_file,
        "tracing-absolute-path": "/tmp/log",
        "config": config,
    }
    assert config.listen.port == 28999


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config exits 2 with one line on standard error."""
    path = write(tmp_path / "bad.toml", "[listen]\nport = 70000\n")

    with pytest.raises(SystemExit) as caught:
        tap.Options().parseOptions(["-c", path])

    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "listen.port" in error


def test_migrate_only(config_file: str, tmp_path: Path) -> None:
    """--migrate applies the schema and exits 0 without a service."""
    options = tap.Options()
    options.parseOptions(["-c", config_file, "--migrate"])

    with pytest.raises(SystemExit) as caught:
        tap.makeService(options)

    assert caught.value.code == 0
    with sqlite3.connect(tmp_path / "store.sqlite3") as connection:
        versions = connection.execute("SELECT version FROM schema_version")
        assert versions.fetchall() == [(1,), (2,)]


def test_store_that_cannot_open_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that cannot be opened stops the start with status 1."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = write(tmp_path / "b.toml", f'[sqlite]\npath = "{blocker / "x.sqlite3"}"\n')
    options = tap.Options()
    options.parseOptions(["-c", path])

    with pytest.raises(SystemExit) as caught:
        tap.makeService(options)

    assert caught.value.code == 1
    assert capsys.readouterr().err.startswith("bartos: cannot open")


@pytest_twisted.ensureDeferred
async def test_service_tree(config_file: str) -> None:
    """makeService builds store, scheduler, listener, farewell."""
    options = tap.Options()
    options.parseOptions(["-c", config_file])

    top = tap.makeService(options)

    kinds = [type(child) for child in top]  # type: ignore[attr-defined]
    assert kinds == [Store, Scheduler, internet.TCPServer, tap.Farewell]
    assert clicommands.__name__ == "barto.server.clicommands"
    await top.state.store.stopService()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_reload_keeps_schedules_on_bad_config(config_file: str) -> None:
    """A bad reload changes nothing; a good one swaps the schedules."""
    options = tap.Options()
    options.parseOptions(["-c", config_file])
    top: Any = tap.makeService(options)
    scheduler = top.state.scheduler
    text = Path(config_file).read_text()

    Path(config_file).write_text(text + "\n[listen\n")
    assert top.reload() is False
    assert [item.name for item in scheduler.schedules()] == ["a"]

    Path(config_file).write_text(text.replace('name = "a"', 'name = "b"'))
    assert top.reload() is True
    assert [item.name for item in scheduler.schedules()] == ["b"]
    assert top.state.config.schedules["w1"][0].name == "b"
    await top.state.store.stopService()
