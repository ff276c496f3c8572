"""
The README's quick start with real processes: C{twistd -n bartos -c
etc/quickstart.toml} is a complete scheduler (its own worker runs the
C{hello} schedule), and C{barto-cli -c etc/barto-cli.toml list -n local
-c hello} shows what it printed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import processes
from support.processes import Program, free_port, port_open, running, wait_for

pytestmark = pytest.mark.integration

ETC = Path(__file__).resolve().parents[2] / "etc"
HELLO = "hello from barto"
LIST = ["-c", "etc/barto-cli.toml", "list", "-n", "local", "-c", "hello"]


def cli(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{barto-cli} in C{home} against the server on C{port}.
    """
    env = processes.test_environment(home)
    env["BARTO_CLI_BARTOS__PORT"] = str(port)
    return subprocess.run(
        [sys.executable, "-m", "barto.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=home,
        check=False,
    )


def hello_lines(home: Path, port: int) -> list[str]:
    """
    The output lines of every C{hello} run the CLI lists, as JSON.
    """
    done = cli(home, port, *LIST, "--json")
    if done.returncode != 0:
        return []
    runs: list[dict[str, Any]] = json.loads(done.stdout)["runs"]
    return [line["data"] for run in runs for line in run["output"]]


def test_quickstart(tmp_path: Path) -> None:
    """The quick start's schedule runs in bartos and the CLI shows it."""
    (tmp_path / "etc").mkdir()
    for name in ("quickstart.toml", "barto-cli.toml"):
        shutil.copy(ETC / name, tmp_path / "etc" / name)
    port = free_port()
    bartos = Program("bartos", ["-c", "etc/quickstart.toml"], tmp_path)
    bartos.env["BARTOS_LISTEN__PORT"] = str(port)

    with running(bartos):
        wait_for(
            lambda: HELLO in hello_lines(tmp_path, port),
            timeout=90,
            what="a stored run of the hello schedule",
        )
        shown = cli(tmp_path, port, *LIST)
        status = bartos.stop()

    assert shown.returncode == 0, shown.stderr
    assert HELLO in shown.stdout
    assert "state succeeded" in shown.stdout
    assert status == -signal.SIGTERM, bartos.output()
    assert "Traceback" not in bartos.output()
    assert not port_open(port)
    assert (tmp_path / "data" / "bartos" / "bartos.sqlite3").exists()
    assert (tmp_path / "data" / "bartos" / "local-worker.sqlite3").exists()
