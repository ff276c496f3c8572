"""
Tests of single-host mode (C{[local_worker]}): the gate's in-memory
worker token, where the local worker connects, and a whole server in
this process whose own worker runs its schedules over loopback, on the
plain listener and, with the plain listener off, on a private one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from support.certs import Authority
from support.processes import free_port
from twisted.internet import reactor, task

from barto import wire
from barto.config import ListenConfig, ServerConfig
from barto.server.local import (
    LocalWorker,
    LocalWorkerError,
    loopback_address,
    worker_config,
)
from barto.server.tap import BartosService, build_service, prepare_store
from barto.server.workers import Gate, Identity, upgrade_identity

API_KEY = "the-shared-key"


def request(token: str | None, name: str | None = None) -> ConnectionRequest:
    """
    An upgrade request with an optional bearer token and C{?name=}.
    """
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return ConnectionRequest(
        peer="tcp:127.0.0.1:1",
        headers=headers,
        host="localhost",
        path="/v1/ws/worker",
        params={"name": [name]} if name else {},
        version=13,
        origin=None,
        protocols=[wire.SUBPROTOCOL],
        extensions=[],
    )


def refusal(gate: Gate, item: ConnectionRequest, peer: str, role: str) -> int:
    """
    The HTTP status C{upgrade_identity} refuses C{item} with.
    """
    with pytest.raises(ConnectionDeny) as caught:
        upgrade_identity(gate, item, peer, role)
    return int(caught.value.code)


# The gate.


def test_admitted_token_is_for_its_worker(write_config: Any) -> None:
    """An admitted token is the role worker under its own name, only."""
    gate = Gate(write_config(f'api_key = "{API_KEY}"'))
    token = gate.admit("local")

    assert gate.check(f"Bearer {token}", "192.0.2.1") == Identity(
        "local", frozenset({"worker"})
    )
    named = upgrade_identity(gate, request(token), "192.0.2.1", "worker")
    assert named[0] == "local"
    assert refusal(gate, request(token, "other"), "192.0.2.1", "worker") == 403
    assert refusal(gate, request(token), "192.0.2.1", "cli-read") == 403
    guessed = request("guess", "local")
    assert refusal(gate, guessed, "127.0.0.1", "worker") == 401


def test_admitting_keeps_loopback_mode(write_config: Any) -> None:
    """Without credentials configured, admitting a worker adds no check."""
    gate = Gate(write_config(""))
    token = gate.admit("local")

    assert gate.check(None, "127.0.0.1") is not None
    assert gate.check(None, "192.0.2.1") is None
    assert gate.check(f"Bearer {token}", "192.0.2.1") is not None


def test_admitted_token_survives_reload(write_config: Any) -> None:
    """A reload of the config's credentials keeps the admitted token."""
    gate = Gate(write_config(""))
    token = gate.admit("local")

    gate.update(write_config(f'api_key = "{API_KEY}"', name="new.toml"))

    assert gate.check(f"Bearer {token}", "192.0.2.1") is not None
    assert gate.check(None, "127.0.0.1") is None


def test_admitted_only_gate(write_config: Any) -> None:
    """A private gate lets in its admitted worker and no one else."""
    gate = Gate(write_config(f'api_key = "{API_KEY}"'), admitted_only=True)
    token = gate.admit("local")

    assert gate.check(f"Bearer {token}", "127.0.0.1") is not None
    assert gate.check(None, "127.0.0.1") is None
    assert gate.check(f"Bearer {API_KEY}", "127.0.0.1") is None


def test_admitted_tokens_differ(write_config: Any) -> None:
    """Each admitted token is new and random."""
    config = write_config("")

    assert Gate(config).admit("local") != Gate(config).admit("local")


# Where the local worker connects.


@pytest.mark.parametrize(
    ("ip", "plain", "expected"),
    [
        ("127.0.0.1", True, ("127.0.0.1", 21526)),
        ("0.0.0.0", True, ("127.0.0.1", 21526)),
        ("::", True, ("::1", 21526)),
        ("192.0.2.5", True, ("192.0.2.5", 21526)),
        ("localhost", True, ("localhost", 21526)),
        ("127.0.0.1", False, None),
    ],
)
def test_loopback_address(
    ip: str, plain: bool, expected: tuple[str, int] | None
) -> None:
    """The plain listener's address, loopback for a wildcard, or none."""
    listen = ListenConfig(ip=ip, port=21526, plain=plain)

    assert loopback_address(listen) == expected


def test_worker_config(write_config: Any) -> None:
    """The local worker's config: retries forever, its token, its spool."""
    config = write_config(
        """
        [local_worker]
        name = "local"
        missed_tick = "Skip"
        shell = "/bin/bash"
        """
    )
    assert config.local_worker is not None
    environ = {"XDG_DATA_HOME": "/data"}

    worker = worker_config(
        config.local_worker, "::1", 4000, "s3cr3t", config.source, environ
    )

    assert (worker.name, worker.retry_count, worker.missed_tick) == (
        "local",
        0,
        "Skip",
    )
    assert worker.bartos.url_base == "ws://[::1]:4000"
    assert worker.bartos.token is not None
    assert worker.bartos.token.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(worker)
    assert worker.runner.shell == "/bin/bash"
    assert worker.spool_path == "/data/bartos/local-worker.sqlite3"


# The service.


def built(config: ServerConfig) -> BartosService:
    """
    The server for C{config}, its store prepared.
    """
    marks, rows, _ = prepare_store(config, 0)
    return build_service(
        config, reactor=reactor, marks=marks, open_runs=rows, config_path=None
    )


def test_local_worker_stops_first(write_config: Any, tmp_path: Path) -> None:
    """The local worker is the last child: started last, stopped first."""
    config = write_config(
        f"""
        [local_worker]
        name = "local"
        spool_path = "{tmp_path / "spool.sqlite3"}"
        """
    )

    top = built(config)
    children = list(top)

    assert isinstance(children[-1], LocalWorker)
    assert children[-1].config.bartos.port == config.listen.port
    children[-1].spool.close()


def test_unusable_spool(write_config: Any, tmp_path: Path) -> None:
    """A spool that cannot be opened is an error before anything starts."""
    (tmp_path / "file").write_text("")
    config = write_config(
        f"""
        [local_worker]
        name = "local"
        spool_path = "{tmp_path / "file" / "spool.sqlite3"}"
        """
    )

    with pytest.raises(LocalWorkerError, match="local worker's spool"):
        built(config)


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, tries: int = 600
) -> None:
    """
    Check C{condition} every 50 ms until it holds; fail after C{tries}.
    """
    for _ in range(tries):
        if await condition():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


def server_config(
    write_config: Any, tmp_path: Path, listen: str, schedule: str
) -> ServerConfig:
    """
    A server with an api_key, a local worker and one schedule for it.
    """
    return write_config(
        f"""
        api_key = "{API_KEY}"
        {listen}
        [local_worker]
        name = "local"
        spool_path = "{tmp_path / "spool.sqlite3"}"
        shutdown_grace = 0.5
        kill_grace = 1
        [schedules.local]
        schedules = [{schedule}]
        """
    )


async def runs(top: BartosService, state: str) -> list[dict[str, Any]]:
    """
    The local worker's runs in C{state}, with their output.
    """
    store = top.state.store
    found = await store.list_runs(worker="local", state=state)
    runs = [await store.get_run(row["id"]) for row in found]
    return [run for run in runs if run is not None]


async def run_stored(top: BartosService) -> dict[str, Any]:
    """
    Wait for a succeeded run of the local worker; the run with output.
    """
    done: list[dict[str, Any]] = []

    async def stored() -> bool:
        done.extend(await runs(top, "succeeded"))
        return bool(done)

    await until(stored, "a succeeded run of the local worker")
    return done[0]


@pytest_twisted.ensureDeferred
async def test_runs_over_the_plain_listener(
    write_config: Any,
    tmp_path: Path,
) -> None:
    """With an api_key set, the local worker runs its schedule."""
    port = free_port()
    config = server_config(
        write_config,
        tmp_path,
        f'[listen]\nip = "0.0.0.0"\nport = {port}',
        '{ name = "hi", on_calendar = "*:*:*", cmds = ["echo local hi"] }',
    )
    top = built(config)
    top.startService()
    try:
        run = await run_stored(top)
    finally:
        await top.stopService()

    assert [line["data"] for line in run["output"]] == ["local hi"]
    assert run["worker"] == "local"


@pytest_twisted.ensureDeferred
async def test_tls_only_uses_a_private_listener(
    write_config: Any, tmp_path: Path
) -> None:
    """With the plain listener off, the worker uses a private loopback one."""
    authority = Authority(tmp_path)
    server = authority.leaf("server")
    listen = f"""
        [listen]
        plain = false
        [listen.tls]
        ip = "127.0.0.1"
        port = {free_port()}
        cert_file_path = "{server.cert}"
        key_file_path = "{server.key}"
        client_ca_cert = "{authority.pair.cert}"
    """
    config = server_config(
        write_config,
        tmp_path,
        listen,
        '{ name = "hi", on_calendar = "*:*:*", cmds = ["echo private hi"] }',
    )
    top = built(config)
    local = list(top)[-1]
    assert isinstance(local, LocalWorker)
    top.startService()
    try:
        run = await run_stored(top)
        assert local.port is not None
        private = local.port.getHost().port  # type: ignore[attr-defined]
    finally:
        await top.stopService()

    assert [line["data"] for line in run["output"]] == ["private hi"]
    assert private != config.listen.tls.port  # type: ignore[union-attr]
    assert local.port is None


@pytest_twisted.ensureDeferred
async def test_stop_cancels_running_commands(
    write_config: Any,
    tmp_path: Path,
) -> None:
    """Stopping the server stops the local worker's run and stores that."""
    config = server_config(
        write_config,
        tmp_path,
        f"[listen]\nport = {free_port()}",
        '{ name = "long", on_calendar = "*:*:*", overlap = "skip",'
        ' cmds = ["echo going; sleep 60"] }',
    )
    top = built(config)
    top.startService()
    try:
        running: list[dict[str, Any]] = []

        async def going() -> bool:
            found = await runs(top, "running")
            running.extend(run for run in found if run["output"])
            return bool(running)

        await until(going, "a running run with output")
    finally:
        await top.stopService()

    store = sqlite3.connect(config.sqlite_path)
    try:
        state, reason = store.execute(
            "SELECT state, reason FROM runs WHERE id = ?", (running[0]["id"],)
        ).fetchone()
    finally:
        store.close()
    assert (state, reason) == ("cancelled", "the worker shut down")
