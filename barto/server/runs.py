"""
The run ledger: a slot's life from due to stored.

The scheduler tells the ledger which slots are due or were missed; the
ledger decides what each becomes (dispatched, queued, skipped, missed),
sends dispatches through the connected-worker registry, and records every
step in the store.  Records coming back from a worker pass through here
too, so the ledger knows which runs are still going, when a vanished
worker's runs are lost, and which missed slots still run when a worker
returns.

The decisions themselves are plain functions: L{overlap_action} and
L{catch_up}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Literal, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from barto import wire
from barto.config import ScheduleConfig
from barto.server import store as _store
from barto.server.store import (
    NewRun,
    RecordResult,
    Store,
    thdAddRun,
    thdStoreRecord,
    thdUpdateRun,
)

log = Logger()

QUEUE_LIMIT = 100
"""Slots an C{overlap = "queue"} schedule may hold before skipping more."""

Action = Literal["dispatch", "skip", "queue"]
ScheduleKey = tuple[str, str]
Event = Mapping[str, Any]


def overlap_action(overlap: str, busy: bool, queued: int) -> Action:
    """
    What to do with a due slot, given the schedule's overlap policy.

    @param overlap: C{allow}, C{skip} or C{queue}.
    @param busy: whether an earlier run of the schedule is still going.
    @param queued: how many slots already wait in its queue.
    """
    if overlap == "allow":
        return "dispatch"
    if overlap == "skip":
        return "skip" if busy else "dispatch"
    if not busy and queued == 0:
        return "dispatch"
    return "queue" if queued < QUEUE_LIMIT else "skip"


def catch_up(slots: Sequence[int], policy: str) -> tuple[list[int], list[int]]:
    """
    Which missed slots of one schedule still run, by C{missed_tick}.

    C{Burst} runs every one, C{Delay} only the latest, C{Skip} none.

    @return: C{(run, left)}, both in slot order.
    """
    ordered = sorted(slots)
    if policy == "Burst":
        return ordered, []
    if policy == "Delay" and ordered:
        return ordered[-1:], ordered[:-1]
    return [], ordered


def slot_time(slot: int) -> datetime:
    """
    A slot (unix seconds) as an aware UTC datetime.
    """
    return datetime.fromtimestamp(slot, timezone.utc)


@lru_cache(maxsize=16_384)
def slot_run_id(worker: str, schedule: str, slot: int) -> str:
    """
    The run id of a slot, as L{barto.server.store.slot_run_id}; recent
    ones are kept, since the ledger asks for the same ids many times
    (a uuid5 each) while a run goes from due to stored.
    """
    return _store.slot_run_id(worker, schedule, slot)


@lru_cache(maxsize=1024)
def slot_text(slot: int) -> str:
    """
    A slot as ISO 8601 text (C{wire.format_time}); the slots due in one
    tick share one.
    """
    return wire.format_time(slot_time(slot))


def now_micros(clock: IReactorTime) -> int:
    """
    The clock's time in unix microseconds.
    """
    return int(clock.seconds() * 1_000_000)


def _log_slot(schedule: ScheduleConfig, slot: int, state: str, reason: str) -> None:
    """
    Log what became of a due slot: one line from due to its first state.
    """
    log.info(
        "run {run} of {worker}/{schedule} due at {slot}: {state}{why}",
        run=slot_run_id(schedule.worker, schedule.name, slot),
        worker=schedule.worker,
        schedule=schedule.name,
        slot=slot_text(slot),
        state=state,
        why=f" ({reason})" if reason else "",
    )


class WorkerLink(Protocol):
    """
    How the ledger reaches workers: the connected-worker registry.
    """

    def send(self, worker: str, message: wire.Message) -> bool:
        """
        Send C{message} to C{worker}; C{False} if it is not connected.
        """

    def is_connected(self, worker: str) -> bool:
        """
        Whether C{worker} has a session open (after its C{hello}).
        """


class EventBus:
    """
    Run events for live streams: every stored output chunk and command
    exit, and every state change of a run.

    Events are JSON-able mappings with a C{kind} (C{state}, C{output},
    C{exit}), C{run}, C{worker}, C{schedule} and C{slot} (ISO 8601), plus
    the fields of their kind.
    """

    def __init__(self) -> None:
        self._subscribers: dict[
            int, tuple[Callable[[Event], bool], Callable[[Event], None]]
        ] = {}
        self._next = 0

    def subscribe(
        self,
        predicate: Callable[[Event], bool],
        callback: Callable[[Event], None],
    ) -> Callable[[], None]:
        """
        Call C{callback(event)} for every event C{predicate} accepts.

        @return: a function that ends the subscription.
        """
        key = self._next
        self._next += 1
        self._subscribers[key] = (predicate, callback)
        return lambda: self._subscribers.pop(key, None) and None

    def emit(self, event: Event) -> None:
        """
        Hand C{event} to every subscriber that wants it; a failing
        subscriber is logged and the others still get it.
        """
        for predicate, callback in list(self._subscribers.values()):
            try:
                if predicate(event):
                    callback(event)
            except Exception:
                log.failure("an event subscriber failed")


@dataclass
class ActiveRun:
    """
    A run sent to its worker and not over yet.

    @ivar state: C{dispatched} or C{running}.
    @ivar dispatch: the message sent, for a re-send after a reconnect.
    """

    id: str
    worker: str
    schedule: str
    slot: int
    state: str
    dispatch: wire.Dispatch | None = None
    lost_call: IDelayedCall | None = None
    retry_call: IDelayedCall | None = None

    def cancel_timers(self) -> None:
        """
        Cancel the lost and re-send timers.
        """
        for call in (self.lost_call, self.retry_call):
            if call is not None and call.active():
                call.cancel()
        self.lost_call = self.retry_call = None


@dataclass
class _Queued:
    slot: int
    trigger: str


@dataclass
class _Missed:
    slot: int
    reason: str


@dataclass
class _WorkerState:
    policy: str = "Burst"
    undecided: dict[str, list[_Missed]] = field(default_factory=dict)


class RunLedger:
    """
    Every run's state, in memory for those still going and in the store
    for all.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: IReactorTime,
        events: EventBus,
        lost_grace: float = 300.0,
        dispatch_retry: float = 30.0,
    ) -> None:
        """
        @param lost_grace: seconds a vanished worker has to come back
            before its runs are lost.
        @param dispatch_retry: seconds a returning worker has to report a
            run dispatched before it left, before the dispatch is re-sent.
        """
        self.store = store
        self.events = events
        self._clock = clock
        self._lost_grace = lost_grace
        self._dispatch_retry = dispatch_retry
        self._link: WorkerLink | None = None
        self._schedules: dict[ScheduleKey, ScheduleConfig] = {}
        self._active: dict[str, ActiveRun] = {}
        self._busy: dict[ScheduleKey, set[str]] = {}
        self._queues: dict[ScheduleKey, deque[_Queued]] = {}
        self._workers: dict[str, _WorkerState] = {}
        self._catch_up_calls: dict[str, IDelayedCall] = {}

    def attach(self, link: WorkerLink) -> None:
        """
        Reach workers through C{link}.
        """
        self._link = link

    def set_schedules(
        self,
        schedules: Mapping[str, Sequence[ScheduleConfig]],
    ) -> None:
        """
        The schedules in force (at start and after a reload).
        """
        self._schedules = {
            (item.worker, item.name): item
            for items in schedules.values()
            for item in items
        }

    def stop(self) -> None:
        """
        Cancel every timer (the server is stopping).
        """
        for run in self._active.values():
            run.cancel_timers()
        for call in self._catch_up_calls.values():
            if call.active():
                call.cancel()
        self._catch_up_calls.clear()

    # Views.

    def active_runs(self) -> list[ActiveRun]:
        """
        The runs dispatched or running, oldest slot first.
        """
        return sorted(self._active.values(), key=lambda run: run.slot)

    def queued(self, worker: str, schedule: str) -> list[int]:
        """
        The slots waiting in a schedule's overlap queue.
        """
        return [item.slot for item in self._queues.get((worker, schedule), ())]

    def undecided(self, worker: str) -> dict[str, list[int]]:
        """
        Per schedule, the missed slots of C{worker} that wait for it to
        return.
        """
        state = self._workers.get(worker)
        if state is None:
            return {}
        return {
            name: [item.slot for item in items]
            for name, items in state.undecided.items()
            if items
        }

    # Start-up.

    def restore(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """
        Take back the runs the store holds as not over (from
        L{barto.server.store.thdOpenRuns}) after a restart.

        Dispatched and running runs wait L{lost_grace} for their worker;
        pending ones (never sent) become missed with reason C{server down};
        undecided missed ones wait for their worker's catch-up.
        """
        for row in rows:
            worker, schedule = row["worker"], row["schedule"]
            slot = int(row["slot"])
            if row["state"] in ("dispatched", "running"):
                run = ActiveRun(
                    row["id"],
                    worker,
                    schedule,
                    slot,
                    row["state"],
                )
                self._track(run)
                self._arm_lost(run)
            elif row["state"] == "pending":
                self._set(
                    row["id"],
                    {"state": "missed", "reason": "server down"},
                    ("pending",),
                )
                self._undecide(worker, schedule, slot, "server down")
            else:
                self._undecide(worker, schedule, slot, row["reason"])

    # Slots from the scheduler.

    def slot_due(
        self, schedule: ScheduleConfig, slot: int, trigger: str = "schedule"
    ) -> str:
        """
        A slot is due now: dispatch, queue or skip it, or record it missed
        when the worker is offline.

        @param trigger: C{schedule} or C{manual}.
        @return: the run id.
        """
        run_id = slot_run_id(schedule.worker, schedule.name, slot)
        key = (schedule.worker, schedule.name)
        if run_id in self._active or (
            self._queues.get(key) and slot in self.queued(*key)
        ):
            return run_id

        if not self._connected(schedule.worker):
            self._miss(
                schedule,
                slot,
                "worker offline",
                trigger,
                existing=False,
            )
            return run_id

        self._decide(schedule, slot, trigger, existing=False)
        return run_id

    def slot_missed(
        self,
        schedule: ScheduleConfig,
        slot: int,
        reason: str,
    ) -> str:
        """
        A slot passed while the server could not fire it (C{server down}
        or C{clock jump}): record it missed; the worker's C{missed_tick}
        decides later whether it still runs.

        @return: the run id.
        """
        self._miss(schedule, slot, reason, "schedule", existing=False)
        if self._connected(schedule.worker):
            self._catch_up_soon(schedule.worker)
        return slot_run_id(schedule.worker, schedule.name, slot)

    # Worker sessions.

    def worker_connected(
        self, worker: str, missed_tick: str, running: Sequence[str]
    ) -> None:
        """
        C{worker} said hello: keep the runs it still has, and apply its
        C{missed_tick} policy to the slots it missed.

        @param running: the run ids it reports as still running.
        """
        self._workers.setdefault(worker, _WorkerState()).policy = missed_tick
        still = set(running)
        for run in list(self._active.values()):
            if run.worker != worker:
                continue
            if run.id in still:
                run.cancel_timers()
            elif run.state == "dispatched" and run.dispatch is not None:
                run.retry_call = self._clock.callLater(
                    self._dispatch_retry, self._resend, run.id
                )
        self._catch_up(worker)

    def worker_disconnected(self, worker: str) -> None:
        """
        C{worker}'s connection ended: its runs are lost unless it comes
        back within the grace and reports them.
        """
        for run in self._active.values():
            if run.worker == worker:
                if run.retry_call is not None and run.retry_call.active():
                    run.retry_call.cancel()
                run.retry_call = None
                self._arm_lost(run)

    def record(
        self,
        worker: str,
        record: wire.Record,
    ) -> defer.Deferred[RecordResult]:
        """
        Store a record C{worker} sent and follow the run's state.

        @return: fires once the record is committed (or found a duplicate,
            or refused as C{unknown}).
        """
        done = self.store.write(thdStoreRecord, worker, record)
        return done.addCallback(self._recorded, record)

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """
        Stop a run: a queued one is cancelled at once, a running one is
        sent C{cancel} (its worker reports how it ended).

        @return: whether the run was found queued, or sent the cancel.
        """
        for key, queue in self._queues.items():
            for item in list(queue):
                if slot_run_id(key[0], key[1], item.slot) == run_id:
                    queue.remove(item)
                    self._set_state(
                        run_id,
                        key,
                        item.slot,
                        "cancelled",
                        reason,
                        ("pending",),
                    )
                    return True

        run = self._active.get(run_id)
        if run is None or self._link is None:
            return False
        log.info("cancelling run {run}: {reason}", run=run_id, reason=reason)
        return self._link.send(
            run.worker,
            wire.Cancel(run=run_id, reason=reason),
        )

    # Deciding.

    def _connected(self, worker: str) -> bool:
        return self._link is not None and self._link.is_connected(worker)

    def _decide(
        self,
        schedule: ScheduleConfig,
        slot: int,
        trigger: str,
        *,
        existing: bool,
    ) -> None:
        """
        Dispatch, queue or skip a slot by the schedule's overlap policy.

        @param existing: whether the run is already recorded (a missed
            slot caught up).
        """
        key = (schedule.worker, schedule.name)
        busy = self._busy.get(key, set())
        queue = self._queues.setdefault(key, deque())
        action = overlap_action(schedule.overlap, bool(busy), len(queue))
        if action == "dispatch":
            self._dispatch(schedule, slot, trigger, existing=existing)
            return

        previous = min(busy) if busy else "queued runs"
        if action == "queue":
            reason = f"queued behind {previous}"
            queue.append(_Queued(slot, trigger))
            state = "pending"
        else:
            reason = f"overlap: {previous} still running"
            state = "skipped"
        _log_slot(schedule, slot, state, reason)
        self._write_run(schedule, slot, trigger, state, reason, existing)

    def _dispatch(
        self,
        schedule: ScheduleConfig,
        slot: int,
        trigger: str,
        *,
        existing: bool,
    ) -> None:
        run_id = slot_run_id(schedule.worker, schedule.name, slot)
        message = wire.Dispatch(
            run=run_id,
            schedule=schedule.name,
            slot=slot_text(slot),
            cmds=schedule.cmds,
            timeout=schedule.timeout,
        )
        assert self._link is not None
        if not self._link.send(schedule.worker, message):
            self._miss(
                schedule,
                slot,
                "worker offline",
                trigger,
                existing=existing,
            )
            return

        run = ActiveRun(
            run_id,
            schedule.worker,
            schedule.name,
            slot,
            "dispatched",
            dispatch=message,
        )
        self._track(run)
        _log_slot(schedule, slot, "dispatched", "")
        self._write_run(schedule, slot, trigger, "dispatched", "", existing)

    def _write_run(
        self,
        schedule: ScheduleConfig,
        slot: int,
        trigger: str,
        state: str,
        reason: str,
        existing: bool,
    ) -> None:
        key = (schedule.worker, schedule.name)
        run_id = slot_run_id(*key, slot)
        at = now_micros(self._clock)
        if existing:
            changes: dict[str, Any] = {"state": state, "trigger": trigger}
            if state == "dispatched":
                changes["dispatched_at"] = at
            else:
                changes["reason"] = reason
            if state != "missed":
                self._set(run_id, changes, ("missed", "pending"))
        else:
            run = NewRun(
                schedule.worker,
                schedule.name,
                slot,
                trigger,
                state,
                reason,
                schedule.cmds,
                at,
            )
            self._write(thdAddRun, run)
        self._emit_state(run_id, key, slot, state, reason)

    def _miss(
        self,
        schedule: ScheduleConfig,
        slot: int,
        reason: str,
        trigger: str,
        *,
        existing: bool,
    ) -> None:
        key = (schedule.worker, schedule.name)
        run_id = slot_run_id(*key, slot)
        _log_slot(schedule, slot, "missed", reason)
        if existing:
            self._set_state(run_id, key, slot, "missed", reason, ("pending",))
        else:
            self._write_run(schedule, slot, trigger, "missed", reason, False)
        self._undecide(schedule.worker, schedule.name, slot, reason)

    def _undecide(
        self,
        worker: str,
        schedule: str,
        slot: int,
        reason: str,
    ) -> None:
        state = self._workers.setdefault(worker, _WorkerState())
        state.undecided.setdefault(schedule, []).append(_Missed(slot, reason))

    def _catch_up_soon(self, worker: str) -> None:
        if worker in self._catch_up_calls:
            return
        self._catch_up_calls[worker] = self._clock.callLater(
            0,
            self._catch_up,
            worker,
        )

    def _catch_up(self, worker: str) -> None:
        """
        Apply C{worker}'s C{missed_tick} policy to its undecided slots.
        """
        call = self._catch_up_calls.pop(worker, None)
        if call is not None and call.active():
            call.cancel()
        state = self._workers.get(worker)
        if state is None or not state.undecided:
            return

        pending, state.undecided = state.undecided, {}
        for name, items in pending.items():
            reasons = {item.slot: item.reason for item in items}
            schedule = self._schedules.get((worker, name))
            if schedule is None:
                self._leave_missed(worker, name, reasons, "schedule removed")
                continue
            run, left = catch_up(list(reasons), state.policy)
            self._leave_missed(
                worker,
                name,
                {slot: reasons[slot] for slot in left},
                f"not run (missed_tick {state.policy})",
            )
            for slot in run:
                log.info(
                    "catching up run {run} (missed_tick {policy})",
                    run=slot_run_id(worker, name, slot),
                    policy=state.policy,
                )
                self._decide(schedule, slot, "catch_up", existing=True)

    def _leave_missed(
        self, worker: str, schedule: str, reasons: Mapping[int, str], why: str
    ) -> None:
        for slot, reason in reasons.items():
            self._set(
                slot_run_id(worker, schedule, slot),
                {"reason": f"{reason}; {why}"},
                ("missed",),
            )

    # Active runs.

    def _track(self, run: ActiveRun) -> None:
        self._active[run.id] = run
        self._busy.setdefault((run.worker, run.schedule), set()).add(run.id)

    def _untrack(self, run_id: str) -> ActiveRun | None:
        run = self._active.pop(run_id, None)
        if run is None:
            return None
        run.cancel_timers()
        key = (run.worker, run.schedule)
        self._busy.get(key, set()).discard(run_id)
        if self._queues.get(key):
            self._clock.callLater(0, self._next_queued, key)
        return run

    def _next_queued(self, key: ScheduleKey) -> None:
        queue = self._queues.get(key)
        if not queue or self._busy.get(key):
            return

        item = queue.popleft()
        schedule = self._schedules.get(key)
        if schedule is None:
            self._set_state(
                slot_run_id(*key, item.slot),
                key,
                item.slot,
                "skipped",
                "schedule removed",
                ("pending",),
            )
            self._next_queued(key)
            return
        if not self._connected(key[0]):
            self._miss(
                schedule,
                item.slot,
                "worker offline",
                item.trigger,
                existing=True,
            )
            self._next_queued(key)
            return
        self._dispatch(schedule, item.slot, item.trigger, existing=True)

    def _arm_lost(self, run: ActiveRun) -> None:
        if run.lost_call is None or not run.lost_call.active():
            run.lost_call = self._clock.callLater(
                self._lost_grace,
                self._lost,
                run.id,
            )

    def _lost(self, run_id: str) -> None:
        run = self._active.get(run_id)
        if run is None:
            return
        run.lost_call = None
        self._untrack(run_id)
        log.warn(
            "run {run} lost: worker {worker} did not come back",
            run=run_id,
            worker=run.worker,
        )
        self._set_state(
            run_id,
            (run.worker, run.schedule),
            run.slot,
            "lost",
            "worker vanished",
            ("pending", "dispatched", "running"),
            ended=True,
        )

    def _resend(self, run_id: str) -> None:
        run = self._active.get(run_id)
        if run is None or run.state != "dispatched" or run.dispatch is None:
            return
        run.retry_call = None
        assert self._link is not None
        if self._link.send(run.worker, run.dispatch):
            if run.lost_call is not None and run.lost_call.active():
                run.lost_call.cancel()
            run.lost_call = None
            log.info(
                "run {run} dispatched again to {worker}",
                run=run_id,
                worker=run.worker,
            )

    # Records.

    def _recorded(
        self,
        result: RecordResult,
        record: wire.Record,
    ) -> RecordResult:
        if result.status == "unknown":
            return result

        key = (result.worker, result.schedule)
        base = {
            "run": record.run,
            "worker": result.worker,
            "schedule": result.schedule,
            "slot": slot_text(result.slot),
        }
        if isinstance(record, wire.Started):
            self._started(record, result, base)
        elif isinstance(record, wire.Output):
            if result.status == "stored":
                self.events.emit(
                    {
                        **base,
                        "kind": "output",
                        "seq": record.seq,
                        "cmd": record.cmd,
                        "stream": record.stream,
                        "at": record.at,
                        "lines": list(record.lines),
                        "cut": record.cut,
                    }
                )
        elif isinstance(record, wire.Exit):
            if result.status == "stored":
                log.info(
                    "run {run} command {cmd} exited with {code} (signal {signal})",
                    run=record.run,
                    cmd=record.cmd,
                    code=record.code,
                    signal=record.signal,
                )
                self.events.emit(
                    {
                        **base,
                        "kind": "exit",
                        "cmd": record.cmd,
                        "code": record.code,
                        "signal": record.signal,
                        "reason": record.reason,
                    }
                )
        elif result.state is not None:
            self._untrack(record.run)
            log.info(
                "run {run} {state} (exit {code}) and stored",
                run=record.run,
                state=result.state,
                code=record.code,
            )
            self._emit_state(
                record.run,
                key,
                result.slot,
                result.state,
                record.reason,
                code=record.code,
            )
        return result

    def _started(
        self,
        record: wire.Started,
        result: RecordResult,
        base: Mapping[str, Any],
    ) -> None:
        run = self._active.get(record.run)
        if run is not None:
            run.state = "running"
            if run.retry_call is not None and run.retry_call.active():
                run.retry_call.cancel()
            run.retry_call = None
        if result.status == "stored":
            log.info(
                "run {run} command {cmd} started",
                run=record.run,
                cmd=record.cmd,
            )
        if result.state is not None:
            self.events.emit(
                {**base, "kind": "state", "state": "running", "reason": ""}
            )

    # Writing.

    def _write(self, thd: Callable[..., Any], *args: Any) -> None:
        done = self.store.write(thd, *args)
        done.addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> None:
        log.failure("a run ledger write failed", failure)

    def _set(
        self,
        run_id: str,
        changes: Mapping[str, Any],
        from_states: Sequence[str],
    ) -> None:
        self._write(thdUpdateRun, run_id, dict(changes), tuple(from_states))

    def _set_state(
        self,
        run_id: str,
        key: ScheduleKey,
        slot: int,
        state: str,
        reason: str,
        from_states: Sequence[str],
        *,
        ended: bool = False,
    ) -> None:
        changes: dict[str, Any] = {"state": state, "reason": reason}
        if ended:
            changes["ended_at"] = now_micros(self._clock)
        self._set(run_id, changes, from_states)
        self._emit_state(run_id, key, slot, state, reason)

    def _emit_state(
        self,
        run_id: str,
        key: ScheduleKey,
        slot: int,
        state: str,
        reason: str,
        *,
        code: int | None = None,
    ) -> None:
        self.events.emit(
            {
                "kind": "state",
                "run": run_id,
                "worker": key[0],
                "schedule": key[1],
                "slot": slot_text(slot),
                "state": state,
                "reason": reason,
                "code": code,
            }
        )
