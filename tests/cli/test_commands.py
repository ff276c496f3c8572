"""
Every barto-cli command against a real bartos (in this process), in text
and in JSON, on SQLite and on MariaDB.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from barto import wire

RUN_KEYS = {
    "id",
    "worker",
    "schedule",
    "slot",
    "trigger",
    "state",
    "reason",
    "exit_code",
    "created_at",
    "dispatched_at",
    "started_at",
    "ended_at",
    "output_lines",
    "duration",
}

APT_OK = ("apt", "succeeded")

LINE_KEYS = {"seq", "line", "cmd", "stream", "at", "data", "cut"}


def seeded_run(kit: Any, worker: str, schedule: str, state: str) -> Any:
    """
    The seeded run with these worker, schedule and state.
    """
    (found,) = [
        run
        for run in kit.seeded
        if (run.worker, run.schedule, run.state) == (worker, schedule, state)
    ]
    return found


@pytest_twisted.ensureDeferred
async def test_info(bartos: Any, kit: Any) -> None:
    """
    C{info} shows version, store and counts; C{--json} gives the document.
    """
    config = bartos.cli_config()
    text = await kit.cli(["info"], config=config)
    document = (await kit.cli(["info", "--json"], config=config)).json()

    assert text.code == 0
    assert f"store           {bartos.dialect}" in text.out
    assert set(document) == {
        "version",
        "started",
        "uptime",
        "store",
        "pending_writes",
        "runs",
        "runs_by_state",
        "active_runs",
        "workers",
        "schedules",
    }
    assert document["runs"] == len(kit.seeded)
    assert document["store"] == bartos.dialect


@pytest_twisted.ensureDeferred
async def test_schedules(bartos: Any, kit: Any) -> None:
    """
    C{schedules} lists normalized calendars, R values, zone, next elapse.
    """
    config = bartos.cli_config()
    text = await kit.cli(["schedules", "-n", "w1"], config=config)
    document = (await kit.cli(["--json", "schedules"], config=config)).json()

    assert text.code == 0
    assert text.out.splitlines()[0].split() == [
        "WORKER",
        "SCHEDULE",
        "NEXT",
        "ELAPSE",
        "ZONE",
        "CALENDAR",
        "R",
    ]
    assert "Total schedules: 4" in text.out
    (spread,) = [s for s in document["schedules"] if s["name"] == "spread"]
    assert set(spread) == {
        "worker",
        "name",
        "on_calendar",
        "normalized",
        "random",
        "timezone",
        "next_elapse",
        "cmds",
        "timeout",
        "overlap",
    }
    assert set(spread["random"]) == {"hour", "minute", "second"}
    chosen = spread["random"]
    at = f"{chosen['hour']:02d}:{chosen['minute']:02d}:{chosen['second']:02d}"
    assert spread["normalized"] == f"2099-01-01 {at}"
    assert spread["next_elapse"] == f"2099-01-01T{at}Z"
    assert spread["timezone"] == "UTC"
    assert len(document["schedules"]) == 6


@pytest_twisted.ensureDeferred
async def test_schedules_unknown_worker(bartos: Any, kit: Any) -> None:
    """
    Asking for the schedules of an unknown worker is an error: exit 1.
    """
    result = await kit.cli(
        ["schedules", "-n", "ghost"],
        config=bartos.cli_config(),
    )

    assert (result.code, result.out) == (1, "")
    message = "no schedules for worker 'ghost' (not-found)"
    assert result.err == f"barto-cli: {message}\n"


@pytest_twisted.ensureDeferred
async def test_runs_newest_first_with_reasons(bartos: Any, kit: Any) -> None:
    """
    C{runs} lists runs newest first, missed and lost ones with reasons.
    """
    config = bartos.cli_config()
    text = await kit.cli(["runs", "-n", "w1", "-c", "backup"], config=config)
    document = (await kit.cli(["runs", "--json"], config=config)).json()

    lines = text.out.splitlines()
    assert text.code == 0
    assert [line.split()[3] for line in lines[1:5]] == [
        "lost",
        "missed",
        "timed_out",
        "failed",
    ]
    assert lines[2].endswith("worker offline (Skip)")
    assert set(document) == {"runs"}
    assert all(set(run) == RUN_KEYS for run in document["runs"])
    slots = [run["slot"] for run in document["runs"]]
    assert slots == sorted(slots, reverse=True)
    assert len(slots) == len(kit.seeded)


@pytest_twisted.ensureDeferred
async def test_runs_filters(bartos: Any, kit: Any) -> None:
    """
    C{--state} (repeatable), C{--since}, C{--until} and C{--limit} filter.
    """
    config = bartos.cli_config()
    by_state = await kit.cli(
        ["runs", "--json", "--state", "missed", "--state", "lost"],
        config=config,
    )
    recent = await kit.cli(["runs", "--json", "--since", "90m"], config=config)
    since = wire.format_time(wire.parse_time("2000-01-01T00:00:00Z"))
    limited = await kit.cli(
        ["runs", "--json", "--since", since, "--until", "2h", "--limit", "2"],
        config=config,
    )

    states = {run["state"] for run in by_state.json()["runs"]}
    assert states == {"missed", "lost"}
    assert [run["state"] for run in recent.json()["runs"]] == [
        "lost",
        "missed",
    ]
    assert len(limited.json()["runs"]) == 2
    states = {run["state"] for run in limited.json()["runs"]}
    assert not states & {"missed", "lost"}


@pytest_twisted.ensureDeferred
async def test_list_worker_schedules(bartos: Any, kit: Any) -> None:
    """
    C{list -n} lists the worker's schedules, configured or only stored,
    with their latest run.
    """
    config = bartos.cli_config()
    text = await kit.cli(["list", "-n", "w1"], config=config)
    listed = await kit.cli(["list", "-n", "w1", "--json"], config=config)
    document = listed.json()

    assert text.code == 0
    names = [line.split()[0] for line in text.out.splitlines()[1:6]]
    assert names == ["apt", "backup", "pacman", "retired", "spread"]
    assert "(not configured)" in text.out
    assert document["worker"] == "w1"
    by_name = {item["name"]: item for item in document["schedules"]}
    assert set(by_name["apt"]) == {
        "name",
        "configured",
        "on_calendar",
        "next_elapse",
        "last_slot",
        "last_run",
    }
    assert by_name["apt"]["last_run"]["state"] == "failed"
    assert by_name["retired"]["configured"] is False
    assert by_name["spread"]["last_run"] is None


@pytest_twisted.ensureDeferred
async def test_list_schedule_runs_grouped(bartos: Any, kit: Any) -> None:
    """
    C{list -n -c} groups output by run, oldest first, a header per run
    with slot, start, duration, state and exit code.
    """
    config = bartos.cli_config()
    text = await kit.cli(["list", "-n", "w1", "-c", "backup"], config=config)
    document = (
        await kit.cli(
            ["list", "-n", "w1", "-c", "backup", "-j"],
            config=config,
        )
    ).json()

    failed = seeded_run(kit, "w1", "backup", "failed")
    lines = text.out.splitlines()
    assert text.code == 0
    slot = document["runs"][0]["slot"]
    assert lines[0] == (
        f"=== slot {slot} | start {slot} | duration 2.50s"
        f" | state failed | exit 2 | run {failed.id}"
    )
    assert lines[1:4] == ["  copying /home", "  copying /etc", "! disk full"]
    assert [
        line.split("| state ")[1].split()[0] for line in lines if "===" in line
    ] == [
        "failed",
        "timed_out",
        "missed",
        "lost",
    ]
    assert lines[-1] == "Total runs: 4"
    assert set(document) == {"worker", "schedule", "runs"}
    assert set(document["runs"][0]) == RUN_KEYS | {"output"}
    assert set(document["runs"][0]["output"][0]) == LINE_KEYS


@pytest_twisted.ensureDeferred
async def test_list_unknown_worker(bartos: Any, kit: Any) -> None:
    """
    C{list} of a worker the server knows nothing of is an error: exit 1.
    """
    result = await kit.cli(["list", "-n", "ghost"], config=bartos.cli_config())

    assert result.code == 1
    assert "no schedules for worker 'ghost'" in result.err


@pytest_twisted.ensureDeferred
async def test_failed(bartos: Any, kit: Any) -> None:
    """
    C{failed} lists failed, timed-out and lost runs with their last lines.
    """
    config = bartos.cli_config()
    text = await kit.cli(["failed"], config=config)
    document = (
        await kit.cli(["failed", "--json", "--lines", "2"], config=config)
    ).json()

    assert text.code == 0
    assert text.out.splitlines()[0].split()[-2:] == ["LAST", "LINES"]
    assert "copying /home | copying /etc | disk full" in text.out
    assert "Total failed runs: 4" in text.out
    states = [run["state"] for run in document["runs"]]
    slots = [run["slot"] for run in document["runs"]]
    assert sorted(states) == ["failed", "failed", "lost", "timed_out"]
    assert slots == sorted(slots, reverse=True)
    backup = [run for run in document["runs"] if run["schedule"] == "backup"]
    assert backup[-1]["last_lines"] == ["copying /etc", "disk full"]
    assert set(document["runs"][0]) == RUN_KEYS | {"last_lines"}


@pytest_twisted.ensureDeferred
async def test_cmd(bartos: Any, kit: Any) -> None:
    """
    C{cmd} shows a schedule's latest run on every worker.
    """
    config = bartos.cli_config()
    text = await kit.cli(["cmd", "backup"], config=config)
    shown = await kit.cli(["cmd", "backup", "--json"], config=config)
    document = shown.json()

    assert text.code == 0
    assert "#  worker: w1" in text.out
    assert "#  worker: w2" in text.out
    assert "  done" in text.out
    assert set(document) == {"schedule", "workers"}
    assert [w["worker"] for w in document["workers"]] == ["w1", "w2"]
    assert [w["runs"][0]["state"] for w in document["workers"]] == [
        "lost",
        "succeeded",
    ]


@pytest_twisted.ensureDeferred
async def test_cmd_unknown(bartos: Any, kit: Any) -> None:
    """
    C{cmd} of a schedule no worker has is an error: exit 1.
    """
    result = await kit.cli(["cmd", "nothing"], config=bartos.cli_config())

    assert result.code == 1
    assert "no schedule 'nothing'" in result.err


@pytest_twisted.ensureDeferred
async def test_show(bartos: Any, kit: Any) -> None:
    """
    C{show} takes a short id and prints status, commands and output.
    """
    config = bartos.cli_config()
    run = seeded_run(kit, "w1", "backup", "failed")
    text = await kit.cli(["show", run.id[:8]], config=config)
    shown = await kit.cli(["show", run.id, "--json"], config=config)
    document = shown.json()

    assert text.code == 0
    assert f"run           {run.id}" in text.out
    assert "state         failed" in text.out
    assert text.out.endswith("  copying /home\n  copying /etc\n! disk full\n")
    assert set(document) == {"run", "commands", "output"}
    assert set(document["run"]) == RUN_KEYS
    assert document["commands"] == [
        {
            "index": 0,
            "cmd": "cmd",
            "started_at": document["run"]["started_at"],
            "ended_at": document["run"]["ended_at"],
            "exit_code": 2,
            "signal": None,
            "reason": "",
        },
    ]
    assert [line["data"] for line in document["output"]] == [
        "copying /home",
        "copying /etc",
        "disk full",
    ]


@pytest_twisted.ensureDeferred
async def test_show_unknown_and_bad_ids(bartos: Any, kit: Any) -> None:
    """
    An unknown run is not found; text that is no run id is a bad request.
    """
    config = bartos.cli_config()
    unknown = await kit.cli(["show", "ffffffff"], config=config)
    bad = await kit.cli(["show", "x"], config=config)

    assert unknown.code == 1
    assert "no run 'ffffffff' (not-found)" in unknown.err
    assert bad.code == 1
    assert "(bad-request)" in bad.err


@pytest_twisted.ensureDeferred
async def test_updates_newest_run_that_parses(bartos: Any, kit: Any) -> None:
    """
    C{updates -u apt} reads the newest successful run with apt output:
    not the failed one after it, not all history mixed.
    """
    config = bartos.cli_config()
    text = await kit.cli(["updates", "-n", "w1", "-u", "apt"], config=config)
    document = (
        await kit.cli(
            ["updates", "-n", "w1", "-u", "APT", "--json"],
            config=config,
        )
    ).json()

    seeded = kit.seeded
    succeeded = [run for run in seeded if (run.schedule, run.state) == APT_OK]
    assert text.code == 0
    assert text.out.splitlines()[0].startswith(
        f"w1/apt: run {succeeded[-1].id[:8]} at ",
    )
    assert text.out.splitlines()[2:] == ["libssl3", "openssl", "tzdata"]
    assert set(document) == {"worker", "kind", "run", "summary"}
    assert document["summary"] == {
        "packages": ["libssl3", "openssl", "tzdata"],
    }
    assert document["run"]["id"] == succeeded[-1].id


@pytest_twisted.ensureDeferred
async def test_updates_pacman_with_schedule(bartos: Any, kit: Any) -> None:
    """
    C{updates -u pacman -c pacman} summarizes that schedule's latest run.
    """
    config = bartos.cli_config()
    text = await kit.cli(
        ["updates", "-n", "w1", "-u", "pacman", "-c", "pacman"],
        config=config,
    )

    assert text.code == 0
    assert text.out.splitlines()[2:] == [
        "Packages (2) linux-6.1-1, vim-9.0-1",
        "",
        "Total Download Size:   120.50 MiB",
        "Total Installed Size:  300.00 MiB",
        "Net Upgrade Size:      10.25 MiB",
    ]


@pytest_twisted.ensureDeferred
async def test_updates_errors(bartos: Any, kit: Any) -> None:
    """
    No matching run, or a named schedule whose output is another tool's,
    is an error: exit 1.
    """
    config = bartos.cli_config()
    none = await kit.cli(
        ["updates", "-n", "w1", "-u", "garuda"],
        config=config,
    )
    wrong = await kit.cli(
        ["updates", "-n", "w1", "-u", "pacman", "-c", "apt"],
        config=config,
    )

    assert none.code == 1
    assert "no successful run with garuda output for worker w1" in none.err
    assert wrong.code == 1
    assert "has no pacman output" in wrong.err


@pytest_twisted.ensureDeferred
async def test_query(bartos: Any, kit: Any) -> None:
    """
    C{query} prints the rows of a SELECT; C{--max-rows} truncates.
    """
    config = bartos.cli_config()
    sql = "SELECT worker, COUNT(*) AS n FROM runs"
    sql += " GROUP BY worker ORDER BY worker"
    text = await kit.cli(["query", "-q", sql], config=config)
    document = (
        await kit.cli(
            ["query", "-q", sql, "--max-rows", "1", "--json"],
            config=config,
        )
    ).json()

    assert text.code == 0
    assert text.out.splitlines() == [
        "worker  n",
        "w1      9",
        "w2      1",
        "(2 rows)",
    ]
    assert document == {
        "columns": ["worker", "n"],
        "rows": [["w1", 9]],
        "truncated": True,
    }


@pytest_twisted.ensureDeferred
async def test_query_refused(bartos: Any, kit: Any) -> None:
    """
    Anything but one SELECT is refused before the database: exit 1, and
    the store is unchanged.
    """
    config = bartos.cli_config()
    delete = await kit.cli(["query", "-q", "DELETE FROM runs"], config=config)
    two = await kit.cli(
        ["query", "-q", "SELECT 1; DROP TABLE runs"],
        config=config,
    )
    count = await kit.cli(
        ["query", "-q", "SELECT COUNT(*) FROM runs", "-j"],
        config=config,
    )

    assert delete.code == 1
    assert "query refused: only SELECT" in delete.err
    assert two.code == 1
    assert "only one statement" in two.err
    assert count.json()["rows"] == [[len(kit.seeded)]]


@pytest_twisted.ensureDeferred
async def test_query_database_error_is_bad_request(
    bartos: Any,
    kit: Any,
) -> None:
    """
    A SELECT the database rejects (no such table) is the user's error.
    """
    result = await kit.cli(
        ["query", "-q", "SELECT * FROM nowhere"],
        config=bartos.cli_config(),
    )

    assert result.code == 1
    assert "query refused" in result.err
    assert "(bad-request)" in result.err


@pytest_twisted.ensureDeferred
async def test_cleanup(bartos: Any, kit: Any) -> None:
    """
    C{cleanup} applies retention and reports what it removed.
    """
    config = bartos.cli_config()
    text = await kit.cli(["cleanup"], config=config)
    document = (await kit.cli(["cleanup", "--json"], config=config)).json()

    assert text.code == 0
    assert text.out == (
        "deleted 0 runs\ndeleted 0 command statuses\ndeleted 0 output lines\n"
    )
    assert document == {"removed": {"runs": 0, "commands": 0, "output": 0}}


def test_cli_and_server_agree_on_states() -> None:
    """
    C{runs --state} offers exactly the states the server knows.
    """
    from barto.cli.commands import runs
    from barto.server import clicommands

    assert runs.STATES == clicommands.RUN_STATES


@pytest_twisted.ensureDeferred
async def test_cleanup_reports_what_retention_removed(
    tmp_path: Any,
    kit: Any,
) -> None:
    """
    With a four-day retention, C{cleanup} removes the five-day-old run
    with its command and output, and says so.
    """
    store = f'[sqlite]\npath = "{tmp_path / "store.sqlite3"}"\n'
    retention = "[retention]\ndays = 4\nfailed_days = 4\n"
    server = kit.start_bartos(tmp_path, store, retention)
    try:
        config = server.cli_config()
        text = await kit.cli(["cleanup"], config=config)
        after = await kit.cli(["list", "-n", "w1", "-j"], config=config)
    finally:
        await server.service.stopService()

    assert text.code == 0
    assert text.out == (
        "deleted 1 runs\ndeleted 1 command statuses\ndeleted 1 output lines\n"
    )
    by_name = {each["name"]: each for each in after.json()["schedules"]}
    assert by_name["retired"]["last_run"] is None
