"""
barto-cli's exit codes and one-line messages: unreachable servers,
servers that never answer, refused credentials and TLS, roles, bad
configs and bad command lines; in-process and as a real process.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from support.certs import Authority
from support.processes import free_port
from twisted.internet import protocol, reactor

from barto import wire
from barto.cli import main


def cli_config(directory: Path, port: int, extra: str = "") -> Path:
    """
    A barto-cli config for C{127.0.0.1:port}.
    """
    path = directory / "cli.toml"
    head = 'name = "tester"\n[bartos]\nhost = "127.0.0.1"\n'
    path.write_text(f"{head}port = {port}\n{extra}")
    return path


@pytest_twisted.ensureDeferred
async def test_unreachable(tmp_path: Path, kit: Any) -> None:
    """
    Nothing listening: exit 3 and one line saying the connection failed.
    """
    port = free_port()
    result = await kit.cli(["runs"], config=cli_config(tmp_path, port))

    assert (result.code, result.out) == (3, "")
    assert result.err == (
        f"barto-cli: cannot connect to ws://127.0.0.1:{port}/v1/ws/cli:"
        " connection refused\n"
    )


def listen(factory: protocol.Factory) -> Any:
    """
    Listen on a free loopback port with C{factory}.
    """
    return reactor.listenTCP(  # type: ignore[attr-defined]
        0, factory, interface="127.0.0.1"
    )


class _Silent(protocol.Protocol):
    """
    Accepts a connection and never says a word.
    """


@pytest_twisted.ensureDeferred
async def test_tcp_listener_that_never_answers(
    tmp_path: Path,
    kit: Any,
) -> None:
    """
    A server that accepts the TCP connection but never answers the
    handshake: exit 3 after C{--timeout}.
    """
    factory = protocol.Factory.forProtocol(_Silent)
    port = listen(factory)
    try:
        number = port.getHost().port
        result = await kit.cli(
            ["--timeout", "0.3", "info"],
            config=cli_config(tmp_path, number),
        )
    finally:
        await port.stopListening()

    assert result.code == 3
    assert result.err == (
        f"barto-cli: no answer from ws://127.0.0.1:{number}/v1/ws/cli"
        + " within 0.3 s\n"
    )


class _Mute(WebSocketServerProtocol):
    """
    Completes the WebSocket handshake, then ignores every request.
    """

    def onConnect(self, request: Any) -> str:
        return wire.SUBPROTOCOL


@pytest_twisted.ensureDeferred
async def test_websocket_that_never_answers(tmp_path: Path, kit: Any) -> None:
    """
    A WebSocket server that takes the request and never answers: exit 3
    after the C{--timeout} given to the command.
    """
    factory = WebSocketServerFactory(protocols=[wire.SUBPROTOCOL])
    factory.protocol = _Mute
    port = listen(factory)
    try:
        number = port.getHost().port
        result = await kit.cli(
            ["failed", "--timeout", "0.3"],
            config=cli_config(tmp_path, number),
        )
    finally:
        await port.stopListening()

    assert result.code == 3
    assert "no answer from" in result.err
    assert result.err.count("\n") == 1


@pytest.fixture
def keyed_bartos(tmp_path: Path, kit: Any) -> Any:
    """
    A bartos that wants a bearer token: the api key C{s3cret}, a
    read-only token C{reader-token} for C{tester} (the key is admin).
    """
    store = f'[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
    extra = textwrap.dedent(
        """\
        [[tokens]]
        name = "tester"
        token = "reader-token"
        role = "cli-read"
        """,
    )
    server = kit.start_bartos(
        tmp_path,
        store,
        extra,
        top='api_key = "s3cret"\n',
    )
    yield server
    pytest_twisted.blockon(server.service.stopService())


@pytest_twisted.ensureDeferred
async def test_authentication_refused(keyed_bartos: Any, kit: Any) -> None:
    """
    No token, or a wrong one: exit 3, the message says authentication.
    """
    missing = await kit.cli(["runs"], config=keyed_bartos.cli_config())
    wrong = await kit.cli(
        ["runs"],
        config=keyed_bartos.cli_config('api_key = "nope"\n'),
    )

    for result in (missing, wrong):
        assert result.code == 3
        assert result.err == (
            "barto-cli: authentication refused by"
            f" ws://127.0.0.1:{keyed_bartos.port}/v1/ws/cli (HTTP 401)\n"
        )


@pytest_twisted.ensureDeferred
async def test_api_key_and_token(keyed_bartos: Any, kit: Any) -> None:
    """
    The api key from the file, or a token from the environment, is sent
    as the bearer token.
    """
    by_key = await kit.cli(
        ["runs"],
        config=keyed_bartos.cli_config('api_key = "s3cret"\n'),
    )
    by_token = await kit.cli(
        ["runs"],
        config=keyed_bartos.cli_config(),
        environ={"BARTO_CLI_BARTOS__TOKEN": "reader-token"},
    )

    assert by_key.code == 0
    assert by_token.code == 0


@pytest_twisted.ensureDeferred
async def test_admin_commands_need_the_admin_role(
    keyed_bartos: Any,
    kit: Any,
) -> None:
    """
    A read-only token may read but not clean up, query or run: exit 1.
    """
    config = keyed_bartos.cli_config('token = "reader-token"\n')
    cleanup = await kit.cli(["cleanup"], config=config)
    query = await kit.cli(["query", "-q", "SELECT 1"], config=config)
    run = await kit.cli(["run", "-n", "w3", "-c", "job"], config=config)
    failed = await kit.cli(["failed"], config=config)

    assert cleanup.code == 1
    message = "cleanup needs the cli-admin role (forbidden)"
    assert cleanup.err == f"barto-cli: {message}\n"
    assert (query.code, run.code) == (1, 1)
    assert failed.code == 0


@pytest.fixture
def tls_bartos(tmp_path: Path, kit: Any) -> Any:
    """
    A bartos with a TLS listener whose certificate a test CA signed.
    """
    authority = Authority(tmp_path, "test-ca")
    leaf = authority.leaf("bartos")
    tls_port = free_port()
    store = f'[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
    extra = textwrap.dedent(
        f"""\
        [listen.tls]
        ip = "127.0.0.1"
        port = {tls_port}
        cert_file_path = "{leaf.cert}"
        key_file_path = "{leaf.key}"
        """,
    )
    server = kit.start_bartos(tmp_path, store, extra)
    server.tls_port = tls_port
    server.ca = authority.pair.cert
    yield server
    pytest_twisted.blockon(server.service.stopService())


@pytest_twisted.ensureDeferred
async def test_tls(tls_bartos: Any, tmp_path: Path, kit: Any) -> None:
    """
    Over wss the CLI checks the server against the CA it is given: the
    right CA works, another CA is a refused TLS handshake (exit 3).
    """
    (tmp_path / "other").mkdir()
    other = Authority(tmp_path / "other", "other-ca")
    good = tmp_path / "good.toml"
    good.write_text(
        f'[bartos]\nprefix = "wss"\nhost = "127.0.0.1"\n'
        f'port = {tls_bartos.tls_port}\nca_cert = "{tls_bartos.ca}"\n',
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[bartos]\nprefix = "wss"\nhost = "127.0.0.1"\n'
        f'port = {tls_bartos.tls_port}\nca_cert = "{other.pair.cert}"\n',
    )

    trusted = await kit.cli(["runs", "--limit", "1"], config=good)
    refused = await kit.cli(["runs"], config=bad)

    assert trusted.code == 0
    assert refused.code == 3
    assert refused.err.startswith(
        f"barto-cli: TLS handshake with wss://127.0.0.1:{tls_bartos.tls_port}"
        "/v1/ws/cli failed: ",
    )
    assert refused.err.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_bad_config_exits_2(tmp_path: Path, kit: Any) -> None:
    """
    A config that cannot be used: exit 2, one line naming the key.
    """
    path = tmp_path / "cli.toml"
    path.write_text("[bartos]\nport = 70000\n")
    result = await kit.cli(["info"], config=path)

    assert result.code == 2
    assert result.err.startswith(f"barto-cli: {path}")
    assert "bartos.port" in result.err
    assert result.err.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_missing_tls_file_exits_2(tmp_path: Path, kit: Any) -> None:
    """
    A CA file that cannot be read is a config problem: exit 2.
    """
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[bartos]\nprefix = "wss"\nca_cert = "{tmp_path}/none.pem"\n',
    )
    result = await kit.cli(["info"], config=path)

    assert result.code == 2
    assert "cannot read CA certificate" in result.err


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["updates", "-n", "w1", "-u", "yum"],
        ["runs", "--limit", "0"],
        ["runs", "--since", "yesterday"],
        ["show"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """
    A bad command line exits 2 before anything connects.
    """
    with pytest.raises(SystemExit) as stopped:
        main.main(argv)

    assert stopped.value.code == 2


def test_process_exit_codes_and_messages(tmp_path: Path, kit: Any) -> None:
    """
    As a process: an unreachable server exits 3 with one line on
    standard error and no traceback; a usage error exits 2.
    """
    port = free_port()
    config = cli_config(tmp_path, port)
    unreachable = kit.cli_process(["-c", str(config), "runs"], tmp_path)
    usage = kit.cli_process(["list"], tmp_path)

    assert unreachable.code == 3
    assert unreachable.err == (
        f"barto-cli: cannot connect to ws://127.0.0.1:{port}/v1/ws/cli:"
        " connection refused\n"
    )
    assert "Traceback" not in unreachable.err
    assert usage.code == 2
    assert "the following arguments are required: -n/--name" in usage.err


@pytest_twisted.ensureDeferred
async def test_process_against_a_real_server(
    sqlite_bartos: Any,
    tmp_path: Path,
    kit: Any,
) -> None:
    """
    As a process, from the console script's entry point: a command
    answered by the server exits 0 with its output.
    """
    from twisted.internet.threads import deferToThread

    config = sqlite_bartos.cli_config()
    result = await deferToThread(
        kit.cli_process,
        ["-c", str(config), "--json", "runs", "--limit", "2"],
        tmp_path,
    )

    assert result.code == 0
    assert len(result.json()["runs"]) == 2
    assert result.err == ""


@pytest_twisted.ensureDeferred
async def test_timeout_must_be_positive(tmp_path: Path, kit: Any) -> None:
    """
    A zero or negative C{--timeout} is a usage error: exit 2.
    """
    config = cli_config(tmp_path, free_port())
    result = await kit.cli(["--timeout", "-1", "runs"], config=config)

    assert result.code == 2
    assert result.err == "barto-cli: --timeout must be above 0, not -1\n"


@pytest_twisted.ensureDeferred
async def test_config_warnings_and_local_time(
    sqlite_bartos: Any,
    kit: Any,
) -> None:
    """
    Unknown config keys are warned about on standard error; C{--local}
    shows timestamps with the local offset instead of C{Z}.
    """
    config = sqlite_bartos.cli_config("colour = true\n")
    utc = await kit.cli(["runs", "--limit", "1"], config=config)
    local = await kit.cli(["runs", "--limit", "1", "--local"], config=config)

    assert utc.code == 0
    assert utc.err == (
        f"barto-cli: warning: {config}: bartos.colour:"
        + " is not a known key, ignored\n"
    )
    slot = utc.out.splitlines()[1].split()[0]
    assert slot.endswith("Z")
    shown = local.out.splitlines()[1].split()[0]
    assert wire.parse_time(shown) == wire.parse_time(slot)


def test_parser_needs_no_network_code() -> None:
    """
    Building the command line loads neither Twisted nor Autobahn: they
    are imported only when a remote command runs.
    """
    import subprocess
    import sys

    code = (
        "import sys; from barto.cli.main import build_parser; build_parser();"
        " print(sorted(m for m in sys.modules"
        " if m.startswith(('twisted', 'autobahn'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )

    assert done.stdout == "[]\n"
