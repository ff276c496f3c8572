"""
Tests for the scheduler: whole-second ticks, the heap, jumps, restarts,
reloads, and the plain functions behind them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from server_fakes import START
from twisted.internet.task import Clock

from barto.server import scheduler as scheduler_module
from barto.server.scheduler import (
    SLOT_TOLERANCE,
    Scheduler,
    elapses,
    late_reason,
    next_slot,
)

T0 = int(START)


class RecordingLedger:
    """
    Records what the scheduler hands the ledger.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []
        self.schedules: Any = None
        self.stopped = False
        self.broken: set[str] = set()

    def set_schedules(self, schedules: Any) -> None:
        self.schedules = schedules

    def slot_due(self, item: Any, slot: int, trigger: str = "schedule") -> str:
        if item.name in self.broken:
            raise RuntimeError("broken schedule")
        self.calls.append(("due", item.name, slot, trigger))
        return f"run-{slot}"

    def slot_missed(self, item: Any, slot: int, reason: str) -> str:
        self.calls.append(("missed", item.name, slot, reason))
        return f"run-{slot}"

    def stop(self) -> None:
        self.stopped = True

    def due(self) -> list[int]:
        return [call[2] for call in self.calls if call[0] == "due"]


def make(
    clock: Clock, items: Any, marks: Any = None
) -> tuple[Scheduler, RecordingLedger]:
    recorder = RecordingLedger()
    scheduler = Scheduler(recorder, items, clock=clock, marks=marks)
    return scheduler, recorder


def stop(scheduler: Scheduler, clock: Clock) -> None:
    scheduler.stopService()
    assert clock.getDelayedCalls() == []


def test_next_slot_and_elapses(schedules: Any) -> None:
    """elapses lists the slots in (after, until], bounded by the limit."""
    (item,) = schedules(("w", "s", "*:*:00/10"))["w"]
    base = T0 - T0 % 60

    assert next_slot(item, base) == base + 10
    assert list(elapses(item, base, base + 35, 100)) == [
        base + 10,
        base + 20,
        base + 30,
    ]
    assert list(elapses(item, base, base + 35, 2)) == [base + 10, base + 20]


@pytest.mark.parametrize(
    ("slot", "now", "started", "expected"),
    [
        (100, 100, 50, None),
        (100, 100 + SLOT_TOLERANCE, 50, None),
        (100, 101 + SLOT_TOLERANCE, 50, "clock jump"),
        (40, 101 + SLOT_TOLERANCE, 50, "server down"),
    ],
)
def test_late_reason(slot: int, now: int, started: int, expected: str | None) -> None:
    """A slot fires up to the tolerance late; later it is missed, and why."""
    assert late_reason(slot, now, started) == expected


def test_fires_every_second_on_the_second(schedules: Any) -> None:
    """A secondly schedule fires each whole second, starting at the next."""
    clock = Clock()
    clock.advance(START + 0.4)
    scheduler, recorder = make(clock, schedules(("w", "s", "*-*-* *:*:*")))

    scheduler.startService()
    clock.advance(0.6)
    for _ in range(3):
        clock.advance(1)

    assert recorder.due() == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert recorder.calls[0][3] == "schedule"
    stop(scheduler, clock)
    assert recorder.stopped


def test_late_start_realigns(clock: Clock, schedules: Any) -> None:
    """A loop started late by a busy reactor goes back to whole seconds."""
    scheduler, recorder = make(clock, schedules(("w", "s", "*-*-* *:*:*")))
    scheduler.startService()

    clock.advance(0.3)
    assert recorder.due() == []
    clock.advance(0.7)

    assert recorder.due() == [T0 + 1]
    stop(scheduler, clock)


def test_nothing_due_nothing_fired(clock: Clock, schedules: Any) -> None:
    """A schedule far in the future is not fired by the ticks before it."""
    scheduler, recorder = make(clock, schedules(("w", "s", "2099-01-01 00:00:00")))

    scheduler.startService()
    for _ in range(10):
        clock.advance(1)

    assert recorder.calls == []
    assert scheduler.next_elapse("w", "s") == datetime(2099, 1, 1, tzinfo=timezone.utc)
    stop(scheduler, clock)


def test_forward_jump_records_missed_once(clock: Clock, schedules: Any) -> None:
    """After a jump forward the passed slots are missed once, not fired."""
    scheduler, recorder = make(clock, schedules(("w", "s", "*:*:00/10")))
    scheduler.startService()
    clock.advance(1)
    recorder.calls.clear()

    clock.advance(3600)
    clock.advance(1)

    missed = [call for call in recorder.calls if call[0] == "missed"]
    due = recorder.due()
    slots = [call[2] for call in recorder.calls]
    assert len(slots) == len(set(slots)) == 360
    assert all(call[3] == "clock jump" for call in missed)
    assert len(due) <= 1
    stop(scheduler, clock)


def test_backward_jump_fires_nothing_twice(clock: Clock, schedules: Any) -> None:
    """A clock stepped back never fires a slot a second time."""
    scheduler, recorder = make(clock, schedules(("w", "s", "*-*-* *:*:*")))
    scheduler.startService()
    for _ in range(5):
        clock.advance(1)

    clock.advance(-3)
    for _ in range(6):
        clock.advance(1)

    slots = recorder.due()
    assert len(slots) == len(set(slots))
    assert slots == sorted(slots)
    stop(scheduler, clock)


def test_restart_records_server_down(clock: Clock, schedules: Any) -> None:
    """Slots passed while the server was down are missed, server down."""
    items = schedules(("w", "s", "*:*:00/10"))
    base = T0 - T0 % 10
    scheduler, recorder = make(clock, items, marks={("w", "s"): base - 60})

    scheduler.startService()
    clock.advance(0)
    for _ in range(10):
        clock.advance(1)

    assert [call[2] for call in recorder.calls if call[0] == "missed"] == [
        base - 50 + 10 * step for step in range(5)
    ]
    assert {call[3] for call in recorder.calls if call[0] == "missed"} == {
        "server down"
    }
    assert recorder.due() == [base, base + 10]
    stop(scheduler, clock)


def test_missed_slots_capped(
    clock: Clock, schedules: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_MISSED missed slots in one gap, the older are skipped."""
    monkeypatch.setattr(scheduler_module, "MAX_MISSED", 3)
    items = schedules(("w", "s", "*-*-* *:*:*"))
    scheduler, recorder = make(clock, items, marks={("w", "s"): T0 - 100})

    scheduler.startService()
    clock.advance(0)
    clock.advance(1)

    missed = [call[2] for call in recorder.calls if call[0] == "missed"]
    assert missed == [T0 - 99, T0 - 98, T0 - 97, T0 - 96]
    assert recorder.due() == [T0 + 1]
    stop(scheduler, clock)


def test_reload(clock: Clock, schedules: Any) -> None:
    """A reload keeps unchanged schedules, adds new ones, drops removed."""
    scheduler, recorder = make(
        clock, schedules(("w", "keep", "*-*-* *:*:*"), ("w", "gone", "*-*-* *:*:*"))
    )
    scheduler.startService()
    clock.advance(1)

    scheduler.reload(
        schedules(("w", "keep", "*-*-* *:*:*"), ("w", "new", "*-*-* *:*:*"))
    )
    recorder.calls.clear()
    clock.advance(1)

    assert sorted(call[1] for call in recorder.calls) == ["keep", "new"]
    assert [item.name for item in scheduler.schedules()] == ["keep", "new"]
    assert recorder.schedules is not None
    assert scheduler.next_elapse("w", "gone") is None
    stop(scheduler, clock)


def test_fire_now(clock: Clock, schedules: Any) -> None:
    """fire_now runs a schedule in the current second, trigger manual."""
    scheduler, recorder = make(clock, schedules(("w", "s", "2099-01-01")))

    assert scheduler.fire_now("w", "s") == f"run-{T0}"
    assert recorder.calls == [("due", "s", T0, "manual")]
    with pytest.raises(KeyError):
        scheduler.fire_now("w", "nope")


def test_failing_schedule_does_not_stop_the_loop(clock: Clock, schedules: Any) -> None:
    """One schedule raising does not stop the others or the ticks."""
    scheduler, recorder = make(
        clock, schedules(("w", "bad", "*-*-* *:*:*"), ("w", "good", "*-*-* *:*:*"))
    )
    recorder.broken.add("bad")
    scheduler.startService()

    for _ in range(3):
        clock.advance(1)

    assert [call[1] for call in recorder.calls] == ["good"] * 3
    stop(scheduler, clock)


def test_daylight_saving_fall_back(schedules: Any) -> None:
    """Across a DST fall-back night slots fire as the calendar says, once."""
    items = schedules(("w", "s", "*-*-* 01,02,03:30:00 Europe/Berlin"))
    (item,) = items["w"]
    start = int(datetime(2026, 10, 24, 23, 0, tzinfo=timezone.utc).timestamp())
    clock = Clock()
    clock.advance(start)
    scheduler, recorder = make(clock, items)
    scheduler.startService()

    for _ in range(4 * 3600):
        clock.advance(1)

    expected = list(elapses(item, start, start + 4 * 3600, 100))
    assert recorder.due() == expected
    assert len(expected) == len(set(expected)) >= 3
    stop(scheduler, clock)
