"""
Shared fixtures: a throwaway database on the shared MariaDB server.

Tests that need MariaDB take the C{mariadb} fixture. Outside CI they skip
when no server answers; with C{CI=true} they fail instead, so CI never
passes without having run them.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Lets tests import the helpers in tests/support as "support".
sys.path.insert(0, os.path.dirname(__file__))

MARIADB_HOST = os.environ.get("BARTO_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("BARTO_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("BARTO_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("BARTO_TEST_MARIADB_PASSWORD", "")


@dataclass(frozen=True)
class MariaDB:
    """
    Where a test's own, empty MariaDB database lives.
    """

    host: str
    port: int
    username: str
    password: str
    database: str


def _connect(database: str | None = None):  # type: ignore[no-untyped-def]
    import mysql.connector

    return mysql.connector.connect(
        host=MARIADB_HOST,
        port=MARIADB_PORT,
        user=MARIADB_USER,
        password=MARIADB_PASSWORD,
        database=database,
        use_pure=True,
        connection_timeout=5,
    )


@pytest.fixture
def mariadb() -> Iterator[MariaDB]:
    """
    A fresh database on the shared MariaDB server, dropped afterwards.
    """
    try:
        admin = _connect()
    except Exception as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no MariaDB server reachable: {error}")

    name = f"barto_test_{uuid.uuid4().hex[:12]}"
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield MariaDB(MARIADB_HOST, MARIADB_PORT, MARIADB_USER, MARIADB_PASSWORD, name)
    finally:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.close()
        admin.close()
