"""
Tests for the run ledger: dispatch, overlap, catch-up, records, loss.
"""

from __future__ import annotations

from typing import Any

import pytest
from server_fakes import START, FakeLink, SyncStore
from twisted.internet.task import Clock

from barto import wire
from barto.server.runs import (
    QUEUE_LIMIT,
    EventBus,
    RunLedger,
    catch_up,
    overlap_action,
    slot_time,
)
from barto.server.store import slot_run_id

SLOT = int(START)


def at(slot: int) -> str:
    return wire.format_time(slot_time(slot))


@pytest.fixture
def job(schedules: Any) -> Any:
    """
    One schedule C{w1/job}, overlap allowed.
    """
    return schedules(("w1", "job", "*-*-* *:*:*"))["w1"][0]


def schedule_with(schedules: Any, overlap: str) -> Any:
    return schedules(("w1", "job", "*-*-* *:*:*", f'overlap = "{overlap}"'))


def finished(run: str, rec: int = 9, state: str = "succeeded") -> wire.Finished:
    return wire.Finished(rec=rec, run=run, at=at(SLOT + 1), state=state, code=0)


@pytest.mark.parametrize(
    ("overlap", "busy", "queued", "expected"),
    [
        ("allow", True, 0, "dispatch"),
        ("skip", False, 0, "dispatch"),
        ("skip", True, 0, "skip"),
        ("queue", False, 0, "dispatch"),
        ("queue", True, 0, "queue"),
        ("queue", False, 1, "queue"),
        ("queue", True, QUEUE_LIMIT, "skip"),
    ],
)
def test_overlap_action(overlap: str, busy: bool, queued: int, expected: str) -> None:
    """Each overlap policy decides dispatch, queue or skip as documented."""
    assert overlap_action(overlap, busy, queued) == expected


@pytest.mark.parametrize(
    ("policy", "run", "left"),
    [
        ("Burst", [1, 2, 3], []),
        ("Delay", [3], [1, 2]),
        ("Skip", [], [1, 2, 3]),
    ],
)
def test_catch_up(policy: str, run: list[int], left: list[int]) -> None:
    """Burst runs every missed slot, Delay the latest, Skip none."""
    assert catch_up([3, 1, 2], policy) == (run, left)


def test_due_dispatches_to_connected_worker(
    ledger: RunLedger, link: FakeLink, sync_store: SyncStore, job: Any
) -> None:
    """A due slot of a connected worker is dispatched and recorded once."""
    link.connected.add("w1")

    run_id = ledger.slot_due(job, SLOT)

    (dispatch,) = link.of_type(wire.Dispatch)
    assert dispatch == wire.Dispatch(
        run=run_id, schedule="job", slot=at(SLOT), cmds=("echo job",)
    )
    row = sync_store.run(run_id)
    assert (row["state"], row["trigger"]) == ("dispatched", "schedule")
    assert sync_store.rows("SELECT last_slot FROM schedule_marks") == [(SLOT,)]
    assert ledger.slot_due(job, SLOT) == run_id
    assert len(link.of_type(wire.Dispatch)) == 1


def test_offline_worker_slot_missed(
    ledger: RunLedger, sync_store: SyncStore, job: Any
) -> None:
    """A slot of an offline worker is recorded missed, reason recorded."""
    run_id = ledger.slot_due(job, SLOT)

    row = sync_store.run(run_id)
    assert (row["state"], row["reason"]) == ("missed", "worker offline")
    assert ledger.undecided("w1") == {"job": [SLOT]}


@pytest.mark.parametrize(
    ("policy", "dispatched"),
    [("Burst", [0, 1, 2]), ("Delay", [2]), ("Skip", [])],
)
def test_catch_up_on_reconnect(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    job: Any,
    policy: str,
    dispatched: list[int],
) -> None:
    """A returning worker's missed slots follow its missed_tick policy."""
    ledger.set_schedules({"w1": (job,)})
    ids = [ledger.slot_due(job, SLOT + offset) for offset in range(3)]

    link.connected.add("w1")
    ledger.worker_connected("w1", policy, ())

    sent = [message.run for message in link.of_type(wire.Dispatch)]
    assert sent == [ids[offset] for offset in dispatched]
    for offset, run_id in enumerate(ids):
        row = sync_store.run(run_id)
        if offset in dispatched:
            assert (row["state"], row["trigger"]) == ("dispatched", "catch_up")
            assert row["reason"] == "worker offline"
        else:
            assert row["state"] == "missed"
            assert row["reason"] == (f"worker offline; not run (missed_tick {policy})")
    assert ledger.undecided("w1") == {}


def test_overlap_skip(
    ledger: RunLedger, link: FakeLink, sync_store: SyncStore, schedules: Any
) -> None:
    """With overlap skip, a slot due while the last run goes is skipped."""
    (job,) = schedule_with(schedules, "skip")["w1"]
    link.connected.add("w1")

    first = ledger.slot_due(job, SLOT)
    second = ledger.slot_due(job, SLOT + 1)

    assert sync_store.run(second)["state"] == "skipped"
    assert sync_store.run(second)["reason"] == f"overlap: {first} still running"
    assert len(link.of_type(wire.Dispatch)) == 1


def test_overlap_queue_runs_after(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    clock: Clock,
    schedules: Any,
) -> None:
    """With overlap queue, a slot waits and is dispatched when the run ends."""
    items = schedule_with(schedules, "queue")
    ledger.set_schedules(items)
    (job,) = items["w1"]
    link.connected.add("w1")
    first = ledger.slot_due(job, SLOT)
    second = ledger.slot_due(job, SLOT + 1)
    assert sync_store.run(second)["state"] == "pending"
    assert ledger.queued("w1", "job") == [SLOT + 1]

    ledger.record("w1", finished(first))
    clock.advance(0)

    assert [m.run for m in link.of_type(wire.Dispatch)] == [first, second]
    assert sync_store.run(second)["state"] == "dispatched"
    assert clock.getDelayedCalls() == []


def test_overlap_allow(ledger: RunLedger, link: FakeLink, job: Any) -> None:
    """With overlap allow (the default), runs of a schedule overlap."""
    link.connected.add("w1")

    ledger.slot_due(job, SLOT)
    ledger.slot_due(job, SLOT + 1)

    assert len(link.of_type(wire.Dispatch)) == 2


def test_records_move_the_run(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    events: EventBus,
    job: Any,
) -> None:
    """started, output, exit and finished move the run and emit events."""
    seen: list[dict[str, Any]] = []
    events.subscribe(lambda event: True, lambda event: seen.append(dict(event)))
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)

    results = []
    for record in (
        wire.Started(rec=1, run=run_id, cmd=0, at=at(SLOT)),
        wire.Output(rec=2, run=run_id, seq=0, cmd=0, at=at(SLOT), lines=("hi",)),
        wire.Exit(rec=3, run=run_id, cmd=0, at=at(SLOT), code=0),
        finished(run_id, rec=4),
    ):
        ledger.record("w1", record).addCallback(results.append)

    assert [result.status for result in results] == ["stored"] * 4
    row = sync_store.run(run_id)
    assert (row["state"], row["exit_code"], row["output_lines"]) == (
        "succeeded",
        0,
        1,
    )
    assert [(event["kind"], event.get("state")) for event in seen] == [
        ("state", "dispatched"),
        ("state", "running"),
        ("output", None),
        ("exit", None),
        ("state", "succeeded"),
    ]
    assert seen[2]["lines"] == ["hi"]
    assert ledger.active_runs() == []


def test_resent_records_are_duplicates(
    ledger: RunLedger, link: FakeLink, sync_store: SyncStore, job: Any
) -> None:
    """A record sent twice is stored once; the second is a duplicate."""
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)
    record = wire.Output(rec=2, run=run_id, seq=0, cmd=0, at=at(SLOT), lines=("a", "b"))

    results = []
    ledger.record("w1", record).addCallback(results.append)
    ledger.record("w1", record).addCallback(results.append)

    assert [result.status for result in results] == ["stored", "duplicate"]
    assert sync_store.run(run_id)["output_lines"] == 2
    assert sync_store.rows("SELECT COUNT(*) FROM output") == [(2,)]


def test_record_of_another_worker_is_unknown(
    ledger: RunLedger, link: FakeLink, job: Any
) -> None:
    """A worker cannot write records for another worker's run."""
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)

    results = []
    ledger.record("w2", finished(run_id)).addCallback(results.append)

    assert results[0].status == "unknown"


def test_vanished_worker_run_lost(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    clock: Clock,
    job: Any,
) -> None:
    """A run whose worker does not come back within the grace is lost."""
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)

    link.connected.discard("w1")
    ledger.worker_disconnected("w1")
    clock.advance(299)
    assert sync_store.run(run_id)["state"] == "dispatched"
    clock.advance(1)

    row = sync_store.run(run_id)
    assert (row["state"], row["reason"]) == ("lost", "worker vanished")
    assert clock.getDelayedCalls() == []


def test_returning_worker_keeps_its_run(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    clock: Clock,
    job: Any,
) -> None:
    """A worker back within the grace that reports the run keeps it."""
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)
    ledger.worker_disconnected("w1")

    clock.advance(100)
    ledger.worker_connected("w1", "Burst", (run_id,))
    clock.advance(1000)

    assert sync_store.run(run_id)["state"] == "dispatched"
    assert clock.getDelayedCalls() == []


def test_dispatch_resent_after_reconnect(
    ledger: RunLedger, link: FakeLink, clock: Clock, job: Any
) -> None:
    """A dispatch lost with the connection is sent again on return."""
    link.connected.add("w1")
    run_id = ledger.slot_due(job, SLOT)
    ledger.worker_disconnected("w1")

    ledger.worker_connected("w1", "Burst", ())
    clock.advance(30)

    assert [m.run for m in link.of_type(wire.Dispatch)] == [run_id, run_id]
    assert clock.getDelayedCalls() == []


def test_restore_after_restart(
    ledger: RunLedger, sync_store: SyncStore, clock: Clock, job: Any
) -> None:
    """After a restart, runs in flight wait; pending ones become missed."""
    ledger.set_schedules({"w1": (job,)})
    running_id = slot_run_id("w1", "job", SLOT)
    pending_id = slot_run_id("w1", "job", SLOT + 1)
    rows = [
        {
            "id": running_id,
            "worker": "w1",
            "schedule": "job",
            "slot": SLOT,
            "state": "running",
            "reason": "",
        },
        {
            "id": pending_id,
            "worker": "w1",
            "schedule": "job",
            "slot": SLOT + 1,
            "state": "pending",
            "reason": "queued",
        },
    ]
    sync_store.connection.executemany(
        "INSERT INTO runs (id, worker, schedule, slot, `trigger`, state,"
        " reason, created_at) VALUES (?, 'w1', 'job', ?, 'schedule', ?, '', 0)",
        [(row["id"], row["slot"], row["state"]) for row in rows],
    )

    ledger.restore(rows)
    clock.advance(300)

    assert sync_store.run(running_id)["state"] == "lost"
    assert sync_store.run(pending_id)["reason"] == "server down"
    assert ledger.undecided("w1") == {"job": [SLOT + 1]}


def test_missed_while_connected_catches_up(
    ledger: RunLedger, link: FakeLink, clock: Clock, job: Any
) -> None:
    """Slots missed to a clock jump are caught up at once by policy."""
    ledger.set_schedules({"w1": (job,)})
    link.connected.add("w1")
    ledger.worker_connected("w1", "Delay", ())

    ledger.slot_missed(job, SLOT, "clock jump")
    ledger.slot_missed(job, SLOT + 1, "clock jump")
    clock.advance(0)

    sent = [m.run for m in link.of_type(wire.Dispatch)]
    assert sent == [slot_run_id("w1", "job", SLOT + 1)]


def test_cancel(
    ledger: RunLedger,
    link: FakeLink,
    sync_store: SyncStore,
    schedules: Any,
) -> None:
    """Cancel sends cancel for a running run and ends a queued one."""
    items = schedule_with(schedules, "queue")
    ledger.set_schedules(items)
    (job,) = items["w1"]
    link.connected.add("w1")
    first = ledger.slot_due(job, SLOT)
    second = ledger.slot_due(job, SLOT + 1)

    assert ledger.cancel(second, "by hand")
    assert ledger.cancel(first, "by hand")
    assert not ledger.cancel(slot_run_id("w1", "job", 1), "no such run")

    assert sync_store.run(second)["state"] == "cancelled"
    assert link.of_type(wire.Cancel) == [wire.Cancel(run=first, reason="by hand")]


def test_event_bus_unsubscribe_and_failing_subscriber() -> None:
    """A failing subscriber does not stop the others; unsubscribe works."""
    bus = EventBus()
    got: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError("boom")

    bus.subscribe(lambda event: True, broken)
    stop = bus.subscribe(lambda event: event["kind"] == "state", got.append)
    bus.emit({"kind": "output"})
    bus.emit({"kind": "state"})
    stop()
    bus.emit({"kind": "state"})

    assert got == [{"kind": "state"}]
