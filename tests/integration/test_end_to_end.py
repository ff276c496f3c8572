"""
End to end with real processes: C{twistd -n bartos}, C{twistd -n bartoc}
running real shells, and C{barto-cli --json} reading back what was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.certs import Authority
from support.cluster import Cli, Database, Deployment, Schedule, bartoc, bartos, wait
from support.processes import Program, free_port, port_open

pytestmark = pytest.mark.integration

ORIGINAL = Path(__file__).parent.parent / "data" / "original"

# docs/worker.md: a line longer than max_line_bytes keeps its head and
# tail, and "at most 128 KiB is honoured" (a chunk must fit the server's
# 1 MiB frame), so a 1 MB line cannot be kept whole whatever the config.
LINE_CAP = 128 * 1024

BIG_LINE = "".join(str(number) for number in range(1, 200001))
INVALID = b"bad \xff and \xc0\xaf end"
UTF8 = "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f389"

OUTPUT_CMDS = [
    f"echo '{UTF8}'",
    "printf 'bad \\377 and \\300\\257 end\\n'",
    "seq 1 200000 | tr -d '\\n'; echo",
    "printf 'no newline at the end'",
    "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done",
]


def cut(line: str, cap: int) -> tuple[str, int]:
    """
    An ASCII line as the worker's documented line cap keeps it.
    """
    if len(line) <= cap:
        return line, 0
    head, tail, dropped = cap // 2, cap - cap // 2, len(line) - cap
    return f"{line[:head]} [... {dropped} bytes cut ...] {line[-tail:]}", dropped


def by_command(lines: list[dict[str, Any]]) -> dict[int, list[tuple[str, str]]]:
    """
    The (stream, text) of each output line, by command, in stored order.
    """
    found: dict[int, list[tuple[str, str]]] = {}
    for line in sorted(lines, key=lambda item: (item["seq"], item["line"])):
        found.setdefault(line["cmd"], []).append((line["stream"], line["data"]))
    return found


def test_output_shown_as_printed(deploy: Callable[..., Deployment]) -> None:
    """The CLI's JSON shows each command's output as the shell printed it."""
    site = deploy(
        schedules=[Schedule("out", OUTPUT_CMDS)],
        worker_top="max_line_bytes = 2000000",
    ).start()

    run = site.cli.fire("w1", "out")
    assert site.store.wait_final(run) == "succeeded", site.logs()
    shown = site.cli.json("show", run)
    listed = site.cli.json("list", "-n", "w1", "-c", "out", "--lines", "10000")

    big, dropped = cut(BIG_LINE, LINE_CAP)
    stdout = "stdout"
    lines = by_command(shown["output"])
    assert lines[0] == [(stdout, UTF8)]
    assert lines[1] == [(stdout, "bad \ufffd and \ufffd\ufffd end")]
    assert lines[1][0][1] == INVALID.decode("utf-8", errors="replace")
    assert lines[2] == [(stdout, big)]
    assert lines[3] == [(stdout, "no newline at the end")]
    assert [text for stream, text in lines[4] if stream == "stdout"] == [
        f"out{i}" for i in range(1, 6)
    ]
    assert [text for stream, text in lines[4] if stream == "stderr"] == [
        f"err{i}" for i in range(1, 6)
    ]
    assert sorted(stream for stream, _ in lines[4]) == ["stderr"] * 5 + ["stdout"] * 5
    [big_line] = [line for line in shown["output"] if line["cmd"] == 2]
    assert big_line["cut"] == dropped
    assert [command["exit_code"] for command in shown["commands"]] == [0] * 5
    assert shown["run"]["state"] == "succeeded"
    assert shown["run"]["output_lines"] == 14

    [listed_run] = listed["runs"]
    assert listed_run["id"] == run
    assert by_command(listed_run["output"]) == lines
    assert site.tracebacks() == ""


@pytest.mark.mariadb
def test_original_examples_load_and_run(
    tmp_path: Path, mariadb: Any, programs: list[Program]
) -> None:
    """The original README's three files run over wss and MariaDB as they are."""
    # Only the environment adapts them: loopback addresses and free ports,
    # certificates made here for the [actix.tls] listener (the file points
    # at /path/cert.pem), the MariaDB database of this test, and MariaDB
    # options emptied: the original's "ssl=true" is an sqlx URL option that
    # mysql.connector refuses ("Unsupported argument 'ssl'"). The worker's
    # name becomes "barto", the worker [schedules.barto] is written for.
    authority = Authority(tmp_path)
    server_cert = authority.leaf("server")
    plain, secure = free_port(), free_port()
    database = Database(
        mariadb.host, mariadb.port, mariadb.username, mariadb.password, mariadb.database
    )
    server = bartos(tmp_path / "bartos", ORIGINAL / "bartos.toml")
    server.env.update(
        {
            "BARTOS_ACTIX__IP": "127.0.0.1",
            "BARTOS_ACTIX__PORT": str(plain),
            "BARTOS_ACTIX__TLS__IP": "127.0.0.1",
            "BARTOS_ACTIX__TLS__PORT": str(secure),
            "BARTOS_ACTIX__TLS__CERT_FILE_PATH": server_cert.cert,
            "BARTOS_ACTIX__TLS__KEY_FILE_PATH": server_cert.key,
            "BARTOS_MARIADB__HOST": database.host,
            "BARTOS_MARIADB__PORT": str(database.port),
            "BARTOS_MARIADB__USERNAME": database.username,
            "BARTOS_MARIADB__PASSWORD": database.password,
            "BARTOS_MARIADB__DATABASE": database.database,
            "BARTOS_MARIADB__OPTIONS": "",
        }
    )
    worker = bartoc(tmp_path / "bartoc", ORIGINAL / "bartoc.toml")
    worker.env.update(
        {
            "BARTOC_NAME": "barto",
            "BARTOC_BARTOS__HOST": "localhost",
            "BARTOC_BARTOS__PORT": str(secure),
            "BARTOC_BARTOS__CA_CERT": authority.pair.cert,
        }
    )
    cli = Cli(
        ORIGINAL / "barto-cli.toml",
        tmp_path,
        {
            "BARTO_CLI_BARTOS__HOST": "localhost",
            "BARTO_CLI_BARTOS__PORT": str(secure),
            "BARTO_CLI_BARTOS__CA_CERT": authority.pair.cert,
        },
    )
    programs += [server, worker]
    server.start()
    wait(lambda: port_open(secure) or server.process.poll() is not None, "bartos")
    assert port_open(secure) and port_open(plain), server.output()
    worker.start()
    wait(lambda: "welcomed by bartos" in worker.output(), "bartoc to connect")

    run = cli.fire("barto", "echo")
    assert cli.wait_final(run) == "succeeded"
    listed = cli.json("list", "-n", "barto", "-c", "echo")
    info = cli.json("info")

    [shown] = listed["runs"]
    assert (shown["id"], shown["state"], shown["trigger"]) == (
        run,
        "succeeded",
        "manual",
    )
    assert [line["data"] for line in shown["output"]] == ["barto"]
    assert info["store"] == "mariadb"
    assert info["workers"]["connected"] == 1
    assert "Traceback" not in server.output() + worker.output()
