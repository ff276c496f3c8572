"""
The example files in C{etc/}: every TOML file loads as shipped, and with
its commented-out keys switched on, without a warning; the systemd units
pass C{systemd-analyze verify} and say what the programs need; and
C{setup.py} ships every package, so the quick start works from a normal
install.
"""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from barto.config import (
    load_cli_config,
    load_server_config,
    load_worker_config,
)

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"

LOADERS: dict[str, Callable[..., Any]] = {
    "quickstart.toml": load_server_config,
    "bartos.toml": load_server_config,
    "bartos-mariadb.toml": load_server_config,
    "bartoc.toml": load_worker_config,
    "barto-cli.toml": load_cli_config,
}

UNITS = ("bartos.service", "bartoc.service")

# A commented-out setting: "# key = value" or "# [table]", not prose.
COMMENTED_KEY = re.compile(r"^# ?(\[|[A-Za-z_]+ = )")


def test_every_example_is_tested() -> None:
    """Every file in etc/ is one of the files these tests check."""
    shipped = sorted(path.name for path in ETC.iterdir())

    assert shipped == sorted([*LOADERS, *UNITS])


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_example_loads_without_warnings(name: str) -> None:
    """The file loads as shipped, with nothing ignored."""
    config = LOADERS[name](str(ETC / name), environ={})

    assert config.warnings == ()


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_commented_keys_are_valid(name: str, tmp_path: Path) -> None:
    """With every commented-out key switched on, the file still loads."""
    lines = (ETC / name).read_text(encoding="utf-8").splitlines()
    text = "\n".join(
        re.sub(r"^# ?", "", line) if COMMENTED_KEY.match(line) else line
        for line in lines
    )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    config = LOADERS[name](str(path), environ={})

    assert config.warnings == ()


def test_quickstart_is_a_whole_scheduler() -> None:
    """The quick start has a local worker and its hello schedule."""
    config = load_server_config(str(ETC / "quickstart.toml"), environ={})

    assert config.local_worker is not None
    assert config.local_worker.name == "local"
    assert [item.name for item in config.schedules["local"]] == ["hello"]
    assert config.mariadb is None


def test_cli_example_finds_the_quickstart() -> None:
    """barto-cli's example points at the quick start's listener."""
    server = load_server_config(str(ETC / "quickstart.toml"), environ={})
    cli = load_cli_config(str(ETC / "barto-cli.toml"), environ={})

    assert (cli.bartos.host, cli.bartos.port) == (
        server.listen.ip,
        server.listen.port,
    )


def unit(name: str) -> configparser.RawConfigParser:
    """
    A systemd unit read as an INI file (continuation lines joined).
    """
    text = (ETC / name).read_text(encoding="utf-8").replace("\\\n", " ")
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_its_program(name: str) -> None:
    """The unit runs its twistd plugin in the foreground with its config."""
    program = name.removesuffix(".service")
    service = unit(name)["Service"]
    command = service["ExecStart"].split()

    assert command[:3] == ["/opt/barto/bin/twistd", "--nodaemon", "--pidfile="]
    assert command[3] == program
    assert command[command.index("--config-absolute-path") + 1] == (
        f"/etc/{program}/{program}.toml"
    )
    assert service["RestartPreventExitStatus"] == "2"
    assert service["StateDirectory"] == program


def test_worker_unit_outwaits_the_shutdown_grace() -> None:
    """systemd waits longer than bartoc's shutdown and kill graces."""
    service = unit("bartoc.service")["Service"]
    worker = load_worker_config(str(ETC / "bartoc.toml"), environ={})
    grace = worker.runner.shutdown_grace + worker.runner.kill_grace

    assert float(service["TimeoutStopSec"]) > grace
    assert service["KillMode"] == "mixed"


def test_server_unit_lets_the_local_worker_stop_its_runs() -> None:
    """
    SIGTERM reaches bartos alone, so a local worker's commands get their
    shutdown grace, and systemd waits for it.
    """
    service = unit("bartos.service")["Service"]
    local = load_server_config(str(ETC / "quickstart.toml"), environ={})
    assert local.local_worker is not None
    runner = local.local_worker.runner

    assert service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > (
        runner.shutdown_grace + runner.kill_grace
    )


def test_server_unit_allows_tls_callbacks() -> None:
    """
    bartos's unit does not deny write+execute memory: pyOpenSSL's
    certificate callbacks (cffi) need it, so TLS would fail.
    """
    service = unit("bartos.service")["Service"]

    assert service.get("MemoryDenyWriteExecute", "no") == "no"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze"
)
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies(name: str, tmp_path: Path) -> None:
    """
    C{systemd-analyze verify} finds nothing to say about the unit, once
    the twistd it names (not installed here) is swapped for one that is.
    """
    text = (ETC / name).read_text(encoding="utf-8")
    assert "/opt/barto/bin/twistd" in text
    path = tmp_path / name
    path.write_text(
        text.replace("/opt/barto/bin/twistd", "/bin/true"), encoding="utf-8"
    )

    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, "")


def test_setup_ships_every_package() -> None:
    """Every package under barto/ is in setup.py's list, with etc/."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    listed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            listed = set(ast.literal_eval(node.value))
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "barto").rglob("__init__.py")
    }

    assert found | {"barto.etc", "twisted.plugins"} == listed
