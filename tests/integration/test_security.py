"""
Security end to end, with real processes: TLS with certificates made here
(pinned CAs, client certificates), bearer tokens and roles, and the
read-only C{query} on both stores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.certs import Authority
from support.cluster import (
    Cli,
    Database,
    Deployment,
    Schedule,
    bartoc,
    bartos,
    cli_config,
    server_config,
    wait,
    worker_config,
)
from support.processes import Program, free_port, port_open

pytestmark = pytest.mark.integration


def tls_files(pair: Any, ca: str | None = None) -> str:
    """
    The TLS keys of a C{[bartos]} table: a pinned CA and a client pair.
    """
    lines = [f'ca_cert = "{ca}"'] if ca else []
    if pair is not None:
        lines += [f'client_cert = "{pair.cert}"', f'client_key = "{pair.key}"']
    return "\n".join(lines)


def one_line(text: str) -> str:
    """
    The only line of C{text}, which must have exactly one.
    """
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_tls_with_pinned_ca_and_client_certificates(
    tmp_path: Path, programs: list[Program]
) -> None:
    """wss end to end with pinned CAs and client certificates; others refused."""
    authority = Authority(tmp_path, "barto-ca")
    stranger = Authority(tmp_path, "other-ca")
    server_pair = authority.leaf("server")
    worker_pair = authority.leaf("w1-client", ("w1",))
    cli_pair = authority.leaf("cli-client", ("cli",))
    plain, secure = free_port(), free_port()
    (tmp_path / "bartos.toml").write_text(
        server_config(
            plain,
            plain=False,
            store=tmp_path / "store.sqlite3",
            schedules={"w1": [Schedule("hello", ["echo over tls"])]},
            tables=(
                "[listen.tls]\n"
                'ip = "127.0.0.1"\n'
                f"port = {secure}\n"
                f'cert_file_path = "{server_pair.cert}"\n'
                f'key_file_path = "{server_pair.key}"\n'
                f'client_ca_cert = "{authority.pair.cert}"\n'
            ),
        )
    )
    wss = 'prefix = "wss"\n'
    worker_dir = tmp_path / "bartoc"
    worker_dir.mkdir()
    (worker_dir / "bartoc.toml").write_text(
        worker_config("w1", secure).replace('prefix = "ws"\n', wss)
        + tls_files(worker_pair, authority.pair.cert)
    )

    def cli(name: str, pair: Any, ca: str) -> Cli:
        path = tmp_path / f"{name}.toml"
        path.write_text(
            cli_config(secure).replace('prefix = "ws"\n', wss) + tls_files(pair, ca)
        )
        return Cli(path, tmp_path)

    trusting = cli("trusting", cli_pair, authority.pair.cert)
    server = bartos(tmp_path / "bartos", tmp_path / "bartos.toml")
    worker = bartoc(worker_dir, worker_dir / "bartoc.toml")
    programs += [server, worker]
    server.start()
    wait(lambda: port_open(secure) or server.process.poll() is not None, "bartos")
    worker.start()
    wait(lambda: "welcomed by bartos" in worker.output(), "bartoc over wss")

    run = trusting.fire("w1", "hello")
    assert trusting.wait_final(run) == "succeeded"
    shown = trusting.json("show", run)
    pinned_elsewhere = cli("pinned", cli_pair, stranger.pair.cert)("info")
    no_client_cert = cli("anonymous", None, authority.pair.cert)("info")
    foreign_cert = cli("foreign", stranger.leaf("foreign-cli"), authority.pair.cert)(
        "info"
    )

    assert [line["data"] for line in shown["output"]] == ["over tls"]
    assert not port_open(plain), "plain = false still opened the plain listener"
    assert pinned_elsewhere.returncode == 3
    assert "TLS handshake with wss://127.0.0.1" in one_line(pinned_elsewhere.stderr)
    assert pinned_elsewhere.stdout == ""
    for refused in (no_client_cert, foreign_cert):
        assert refused.returncode == 3, refused
        assert one_line(refused.stderr).startswith("barto-cli: ")
    assert "Traceback" not in server.output() + worker.output()


WORKER_TOKEN = "worker-token-0123456789"
READER_TOKEN = "reader-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"


def test_tokens_and_roles(tmp_path: Path, programs: list[Program]) -> None:
    """Bad or foreign tokens are refused; a read-only token cannot change anything."""
    port = free_port()
    store = tmp_path / "store.sqlite3"
    tokens = "".join(
        f'[[tokens]]\nname = "{name}"\ntoken = "{token}"\nrole = "{role}"\n'
        for name, token, role in (
            ("w1", WORKER_TOKEN, "worker"),
            ("reader", READER_TOKEN, "cli-read"),
            ("admin", ADMIN_TOKEN, "cli-admin"),
        )
    )
    schedules = {
        worker: [Schedule("job", [f"echo {worker}"])] for worker in ("w1", "w2", "w3")
    }
    (tmp_path / "bartos.toml").write_text(
        server_config(port, store=store, schedules=schedules, tables=tokens)
    )
    workers = {}
    for name, token in (
        ("w1", WORKER_TOKEN),  # its own token
        ("w2", "not-a-token-at-all"),  # a wrong token
        ("w3", WORKER_TOKEN),  # w1's token, as another name
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "bartoc.toml").write_text(
            worker_config(name, port, bartos=f'token = "{token}"')
        )
        workers[name] = bartoc(folder, folder / "bartoc.toml")

    def cli(name: str, token: str) -> Cli:
        path = tmp_path / f"{name}.toml"
        path.write_text(cli_config(port, name=name, bartos=f'token = "{token}"'))
        return Cli(path, tmp_path)

    admin, reader = cli("admin", ADMIN_TOKEN), cli("reader", READER_TOKEN)
    server = bartos(tmp_path / "bartos", tmp_path / "bartos.toml")
    programs += [server, *workers.values()]
    server.start()
    wait(lambda: port_open(port) or server.process.poll() is not None, "bartos")
    for worker in workers.values():
        worker.start()
    wait(lambda: "welcomed by bartos" in workers["w1"].output(), "w1 to connect")
    for name in ("w2", "w3"):
        wait(
            lambda name=name: (  # type: ignore[misc]
                workers[name].output().count("connection to bartos closed") >= 2
            ),
            f"{name} to be refused twice",
        )

    fired = {name: admin.fire(name, "job") for name in ("w1", "w2", "w3")}
    ended = {name: admin.wait_final(run) for name, run in fired.items()}
    states = {name: admin.json("show", run)["run"] for name, run in fired.items()}
    wrong_token = cli("intruder", "wrong-token")("info")
    read = reader("runs", "--json")
    denied = {
        command[0]: reader(*command)
        for command in (
            ("cleanup",),
            ("run", "-n", "w1", "-c", "job"),
            ("query", "-q", "SELECT COUNT(*) FROM runs"),
        )
    }

    assert ended == {"w1": "succeeded", "w2": "missed", "w3": "missed"}
    for name in ("w2", "w3"):
        assert (states[name]["state"], states[name]["reason"]) == (
            "missed",
            "worker offline",
        )
        assert "welcomed by bartos" not in workers[name].output()
        assert "for slot" not in workers[name].output()
    assert "bad or missing credentials" in server.output()
    assert "the token of w1 used as 'w3'" in server.output()
    assert "worker w2 connected" not in server.output()
    assert "worker w3 connected" not in server.output()
    assert wrong_token.returncode == 3
    assert "authentication refused" in one_line(wrong_token.stderr)
    assert "(HTTP 401)" in wrong_token.stderr
    assert read.returncode == 0, read.stderr
    for command, done in denied.items():
        assert done.returncode == 1, (command, done)
        assert one_line(done.stderr).endswith("(forbidden)"), command
    assert len(admin.json("runs", "-n", "w1")["runs"]) == 1
    log = server.output()
    for secret in (WORKER_TOKEN, READER_TOKEN, ADMIN_TOKEN):
        assert secret not in log
    everything = log + "".join(worker.output() for worker in workers.values())
    assert "Traceback" not in everything


REFUSED = [
    "DROP TABLE output",
    "DELETE FROM runs",
    "UPDATE runs SET state = 'failed'",
    "INSERT INTO workers (name) VALUES ('intruder')",
    "ATTACH DATABASE 'elsewhere.sqlite3' AS elsewhere",
    "PRAGMA query_only = 0",
    "SELECT 1; DELETE FROM runs",
    "select * from runs where 1 = 1; drop table runs",
]


def query_refusals(site: Deployment) -> None:
    """
    Every statement of L{REFUSED} is refused and the store is unchanged.
    """
    site.start()
    run = site.cli.fire("w1", "out")
    assert site.store.wait_final(run) == "succeeded", site.logs()
    wait(lambda: site.store.counts()["commands"] == 1, "the command status")
    before = site.store.counts()

    answers = {sql: site.cli("query", "-q", sql) for sql in REFUSED}
    allowed = site.cli.json("query", "-q", "SELECT COUNT(*) AS n FROM output")

    assert site.store.counts() == before
    for sql, done in answers.items():
        assert done.returncode == 1, (sql, done)
        assert "query refused" in one_line(done.stderr), sql
    assert allowed["rows"] == [[before["output"]]]
    assert before["output"] == 3
    assert site.tracebacks() == ""


QUERY_SCHEDULE = [Schedule("out", ["printf 'a\\nb\\nc\\n'"])]


def test_query_refuses_writes_sqlite(deploy: Callable[..., Deployment]) -> None:
    """On SQLite, query refuses every statement that is not one SELECT."""
    query_refusals(deploy(schedules=QUERY_SCHEDULE))


@pytest.mark.mariadb
def test_query_refuses_writes_mariadb(
    mariadb: Any, deploy: Callable[..., Deployment]
) -> None:
    """On MariaDB, query refuses every statement that is not one SELECT."""
    database = Database(
        mariadb.host, mariadb.port, mariadb.username, mariadb.password, mariadb.database
    )
    query_refusals(deploy(schedules=QUERY_SCHEDULE, store=database))
