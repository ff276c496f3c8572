"""
Fixtures of the end-to-end tests: deployments of real bartos and bartoc
processes, and a throwaway MariaDB server, none of which outlives its test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Deployment
from support.processes import Program, ThrowawayMariaDB


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """
    Make deployments (started by the test); all are stopped afterwards.
    """
    made: list[Deployment] = []

    def make(name: str = "site", **options: Any) -> Deployment:
        deployment = Deployment(tmp_path / name, **options)
        made.append(deployment)
        return deployment

    try:
        yield make
    finally:
        for deployment in reversed(made):
            deployment.stop()


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    """
    A list to put extra programs in; each is stopped afterwards.
    """
    started: list[Program] = []
    try:
        yield started
    finally:
        for program in reversed(started):
            program.stop(15)
            program.kill()


@pytest.fixture
def throwaway_mariadb(tmp_path: Path) -> Iterator[ThrowawayMariaDB]:
    """
    A MariaDB server of the test's own, started, with a C{barto} database;
    stopped afterwards. Outside CI it skips where MariaDB is not installed;
    with C{CI=true} it fails instead.
    """
    if not ThrowawayMariaDB.available():
        if os.environ.get("CI") == "true":
            pytest.fail("mariadb-install-db and mariadbd are not installed")
        pytest.skip("mariadb-install-db and mariadbd are not installed")
    folder = tmp_path / "mariadb"
    folder.mkdir()
    server = ThrowawayMariaDB(folder)
    try:
        server.start()
        server.execute("CREATE DATABASE barto CHARACTER SET utf8mb4")
        yield server
    finally:
        server.stop()
