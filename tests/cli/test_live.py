"""
The commands that need a connected worker: C{clients}, C{run} (with and
without C{--follow}) and C{watch}, against a real bartos and a scripted
worker that reports every run as a real bartoc would.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task


@pytest_twisted.ensureDeferred
async def test_clients(sqlite_bartos: Any, worker: Any, kit: Any) -> None:
    """
    C{clients} lists connected workers; C{--versions} only their versions.
    """
    config = sqlite_bartos.cli_config()
    text = await kit.cli(["clients"], config=config)
    versions = await kit.cli(["clients", "--versions"], config=config)
    document = (await kit.cli(["clients", "--json"], config=config)).json()
    versions_json = (
        await kit.cli(["clients", "--versions", "-j"], config=config)
    ).json()

    assert text.code == 0
    assert text.out.splitlines()[0].split()[:3] == [
        "NAME",
        "ADDRESS",
        "HOSTNAME",
    ]
    assert text.out.splitlines()[1].split()[:2] == ["w3", "127.0.0.1"]
    assert text.out.endswith("\nTotal clients: 1\n")
    assert versions.out == "NAME  VERSION\nw3    9.9\n\nTotal clients: 1\n"
    (client,) = document["clients"]
    assert {"name", "address", "version", "hostname", "os", "kernel"} <= set(
        client,
    )
    assert (client["name"], client["version"]) == ("w3", "9.9")
    assert versions_json == {"versions": {"w3": "9.9"}}


@pytest_twisted.ensureDeferred
async def test_run_prints_the_run_id(
    sqlite_bartos: Any,
    worker: Any,
    kit: Any,
) -> None:
    """
    C{run} fires the schedule now and prints the new run's id.
    """
    config = sqlite_bartos.cli_config()
    text = await kit.cli(["run", "-n", "w3", "-c", "job"], config=config)
    document = (
        await kit.cli(["run", "-n", "w3", "-c", "job", "-j"], config=config)
    ).json()

    assert text.code == 0
    assert len(text.out.strip()) == 36
    assert set(document) == {"run", "worker", "schedule", "stored"}
    assert (document["worker"], document["schedule"]) == ("w3", "job")


@pytest_twisted.ensureDeferred
async def test_run_follow_exits_with_the_runs_code(
    sqlite_bartos: Any,
    worker: Any,
    kit: Any,
) -> None:
    """
    C{run --follow} prints the id, the output as it comes, and the end,
    and exits with the run's exit code.
    """
    config = sqlite_bartos.cli_config()
    text = await kit.cli(
        ["run", "-n", "w3", "-c", "job", "--follow"],
        config=config,
    )

    lines = text.out.splitlines()
    assert text.code == 3
    assert len(lines[0]) == 36
    assert "  line one" in lines
    assert "  line two" in lines
    assert lines[-1] == f"run {lines[0][:8]} failed"


@pytest_twisted.ensureDeferred
async def test_run_follow_json(
    sqlite_bartos: Any,
    worker: Any,
    kit: Any,
) -> None:
    """
    C{run --follow --json} prints one document: the stored run and its
    output.
    """
    worker.code = 0
    config = sqlite_bartos.cli_config()
    result = await kit.cli(
        ["run", "-n", "w3", "-c", "job", "-f", "--json"],
        config=config,
    )

    document = result.json()
    assert result.code == 0
    assert set(document) == {"run", "worker", "schedule", "stored", "output"}
    assert document["stored"]["state"] == "succeeded"
    assert document["stored"]["trigger"] == "manual"
    assert [line["data"] for line in document["output"]] == [
        "line one",
        "line two",
    ]
    assert set(document["output"][0]) == {"cmd", "stream", "at", "data"}


@pytest_twisted.ensureDeferred
async def test_run_offline_worker_is_missed(
    sqlite_bartos: Any,
    kit: Any,
) -> None:
    """
    Running a schedule of an offline worker records a missed run, and
    C{--follow} reports it and exits 1.
    """
    config = sqlite_bartos.cli_config()
    text = await kit.cli(
        ["run", "-n", "w3", "-c", "job", "--follow"],
        config=config,
    )

    assert text.code == 1
    assert text.out.splitlines()[-1].endswith("missed (worker offline)")


@pytest_twisted.ensureDeferred
async def test_run_unknown_schedule(sqlite_bartos: Any, kit: Any) -> None:
    """
    Running a schedule that is not configured is an error: exit 1.
    """
    result = await kit.cli(
        ["run", "-n", "w3", "-c", "nope"],
        config=sqlite_bartos.cli_config(),
    )

    assert result.code == 1
    assert "no schedule 'nope' on worker 'w3' (not-found)" in result.err


async def _watch_until(
    kit: Any,
    config: Any,
    argv: list[str],
    wanted: str,
) -> Any:
    """
    Start C{watch}, fire a run of w3's job once it listens, and play
    Ctrl-C when C{wanted} has been printed.
    """
    clock = kit.reactor_for_interrupt()
    stdout = kit.output_that_watches()
    seen: defer.Deferred[None] = defer.Deferred()

    def check(text: str) -> None:
        if wanted in text and not seen.called:
            seen.callback(None)

    stdout.on_write = check
    watching = defer.ensureDeferred(
        kit.cli(argv, config=config, stdout=stdout, clock=clock),
    )
    while not clock.triggers:
        await task.deferLater(reactor, 0.01)
    await kit.cli(["run", "-n", "w3", "-c", "job"], config=config)
    await seen
    clock.interrupt()
    return await watching


@pytest_twisted.ensureDeferred
async def test_watch_follows_until_interrupted(
    sqlite_bartos: Any,
    worker: Any,
    kit: Any,
) -> None:
    """
    C{watch} prints the state changes and output of live runs until
    interrupted, then exits 0.
    """
    config = sqlite_bartos.cli_config()
    result = await _watch_until(
        kit,
        config,
        ["watch", "-n", "w3"],
        " failed exit 3",
    )

    assert result.code == 0
    assert "watching; press Ctrl-C to stop" in result.err
    lines = result.out.splitlines()
    ends = ("line one", "line two")
    output = [line for line in lines if line.endswith(ends)]
    assert len(output) == 2
    assert all(" w3/job " in line for line in output)
    assert lines[-1].startswith("w3/job ")
    assert lines[-1].endswith(" failed exit 3")


@pytest_twisted.ensureDeferred
async def test_watch_json_lines(
    sqlite_bartos: Any,
    worker: Any,
    kit: Any,
) -> None:
    """
    C{watch --json} prints one JSON event per line.
    """
    import json

    config = sqlite_bartos.cli_config()
    result = await _watch_until(
        kit,
        config,
        ["watch", "-c", "job", "--json"],
        '"state": "failed"',
    )

    events = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 0
    assert {event["kind"] for event in events} >= {"state", "output", "exit"}
    assert all(event["schedule"] == "job" for event in events)
