"""
Tests for the read-only guard of C{query}: L{clicommands.check_select} and
L{clicommands.thd_query} on SQLite and MariaDB.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from barto.server import clicommands
from barto.server.clicommands import QueryRefused, check_select

ALLOWED = [
    "SELECT 1",
    "select * from runs;",
    "  SELECT worker, COUNT(*) FROM runs GROUP BY worker ;  ",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "SELECT 'drop table runs; -- not a comment' AS s",
    "SELECT `update` FROM t",
    'SELECT "delete" FROM t',
]

REFUSED = [
    ("", "empty"),
    (";", "empty"),
    ("DELETE FROM runs", "only SELECT"),
    ("UPDATE runs SET state = 'x'", "only SELECT"),
    ("DROP TABLE runs", "only SELECT"),
    ("PRAGMA query_only = OFF", "only SELECT"),
    ("ATTACH DATABASE '/tmp/x' AS x", "only SELECT"),
    ("SELECT 1; DELETE FROM runs", "one statement"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT * FROM runs INTO OUTFILE '/tmp/x'", "INTO"),
    ("SELECT 1 INTO @x", "INTO"),
    ("SELECT * FROM runs FOR UPDATE", "UPDATE"),
    ("SELECT * FROM runs LOCK IN SHARE MODE", "LOCK"),
    ("SELECT LOAD_FILE('/etc/passwd')", "LOAD_FILE"),
    ("SELECT load_extension('x')", "LOAD_EXTENSION"),
    ("SELECT GET_LOCK('a', 1)", "GET_LOCK"),
    ("SELECT NEXTVAL(s)", "NEXTVAL"),
    ("WITH d AS (SELECT 1) DELETE FROM runs", "DELETE"),
    ("SELECT 1 -- hidden", "comments"),
    ("SELECT 1 /*! ; DROP TABLE runs */", "comments"),
    ("SELECT 1 # x", "comments"),
    ("SELECT @a := 1", "assignments"),
    ("SELECT 'unclosed", "not closed"),
]


@pytest.mark.parametrize("sql", ALLOWED)
@pytest.mark.parametrize("dialect", ["sqlite", "mariadb"])
def test_allowed(sql: str, dialect: str) -> None:
    """
    A single SELECT passes, quotes hiding keywords and semicolons.
    """
    assert check_select(sql, dialect) == sql.strip().rstrip(";").strip()


@pytest.mark.parametrize(("sql", "why"), REFUSED)
@pytest.mark.parametrize("dialect", ["sqlite", "mariadb"])
def test_refused(sql: str, why: str, dialect: str) -> None:
    """
    Anything but one SELECT is refused with a message that says why.
    """
    with pytest.raises(QueryRefused, match=why):
        check_select(sql, dialect)


def test_mariadb_backslash_escape_hides_no_statement() -> None:
    """
    On MariaDB a backslash escapes a quote, so text after it is still in
    the string; the same query is judged by SQLite's rules on SQLite.
    """
    sql = "SELECT 'a\\'; DROP TABLE runs; SELECT '"

    assert check_select(sql, "mariadb") == sql
    with pytest.raises(QueryRefused):
        check_select(sql, "sqlite")


def test_sqlite_brackets_quote_names() -> None:
    """
    SQLite's bracketed names may hold keywords.
    """
    assert check_select("SELECT [delete] FROM t", "sqlite") == (
        "SELECT [delete] FROM t"
    )


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Iterator[sqlite3.Connection]:
    """
    A SQLite database with one small table.
    """
    connection = sqlite3.connect(str(tmp_path / "q.sqlite3"))
    connection.execute("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)")
    connection.executemany(
        "INSERT INTO t VALUES (?, ?, ?)",
        [(i, f"row {i}", b"\xff") for i in range(20)],
    )
    connection.commit()
    yield connection
    connection.close()


def test_sqlite_rows_and_limit(sqlite_db: sqlite3.Connection) -> None:
    """
    Columns, JSON values and the row limit with its C{truncated} flag.
    """
    result = clicommands.thd_query(
        sqlite_db,
        "sqlite",
        "SELECT a, b, c FROM t ORDER BY a",
        3,
        5.0,
    )

    assert result == {
        "columns": ["a", "b", "c"],
        "rows": [
            [0, "row 0", "\ufffd"],
            [1, "row 1", "\ufffd"],
            [2, "row 2", "\ufffd"],
        ],
        "truncated": True,
    }


def test_sqlite_authorizer_refuses_writes(
    sqlite_db: sqlite3.Connection,
) -> None:
    """
    Even a write that got past the text guard fails, and nothing changes.
    """
    with pytest.raises(sqlite3.DatabaseError):
        clicommands.thd_query(sqlite_db, "sqlite", "DELETE FROM t", 10, 5.0)

    count = sqlite_db.execute("SELECT COUNT(*) FROM t").fetchone()[0]
    assert count == 20


def test_sqlite_connection_usable_afterwards(
    sqlite_db: sqlite3.Connection,
) -> None:
    """
    After a query the connection writes again: guards are lifted.
    """
    clicommands.thd_query(sqlite_db, "sqlite", "SELECT 1", 10, 5.0)
    sqlite_db.execute("INSERT INTO t VALUES (99, 'x', NULL)")

    assert sqlite_db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 21


def test_sqlite_time_limit(sqlite_db: sqlite3.Connection) -> None:
    """
    A query running past the time limit is stopped and refused.
    """
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        "SELECT COUNT(*) FROM n"
    )

    with pytest.raises(QueryRefused, match="longer than"):
        clicommands.thd_query(sqlite_db, "sqlite", endless, 10, 0.05)


@pytest.mark.mariadb
def test_mariadb_read_only_and_limits(mariadb: Any) -> None:
    """
    On MariaDB the query runs read-only, with its row limit, and writes
    fail inside the read-only transaction.
    """
    import mysql.connector

    connection = mysql.connector.connect(
        host=mariadb.host,
        port=mariadb.port,
        user=mariadb.username,
        password=mariadb.password,
        database=mariadb.database,
        use_pure=True,
    )
    try:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE t (a INT, b VARCHAR(10))")
        cursor.executemany(
            "INSERT INTO t VALUES (%s, %s)",
            [(i, str(i)) for i in range(20)],
        )
        connection.commit()

        result = clicommands.thd_query(
            connection,
            "mariadb",
            "SELECT a, b FROM t ORDER BY a",
            5,
            5.0,
        )
        assert result["columns"] == ["a", "b"]
        assert result["rows"] == [[i, str(i)] for i in range(5)]
        assert result["truncated"] is True

        with pytest.raises(mysql.connector.Error):
            clicommands.thd_query(
                connection,
                "mariadb",
                "DELETE FROM t",
                5,
                5.0,
            )
        with pytest.raises(QueryRefused, match="longer than"):
            clicommands.thd_query(
                connection,
                "mariadb",
                "SELECT SLEEP(5)",
                5,
                0.2,
            )

        cursor = connection.cursor()
        cursor.execute("SELECT COUNT(*) FROM t")
        assert cursor.fetchone() == (20,)
    finally:
        connection.close()
