"""
Tests for L{barto.worker.session}, driven directly: no network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from barto import __version__, wire
from barto.config import RunnerConfig
from barto.worker import session as session_module
from barto.worker.runner import MAX_CONCURRENT_RUNS, NOT_STARTED_AT_SHUTDOWN
from barto.worker.session import WorkerSession
from barto.worker.spool import Spool

RUN = "00000000-0000-4000-8000-000000000001"
HOST = wire.HostFacts(hostname="h", os="Debian", os_version="12", kernel="Linux 6")


class Link:
    """
    The server's end of an attached session: what it was sent.
    """

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.welcomes: list[wire.Welcome] = []
        self.on_send: Callable[[dict[str, Any]], None] | None = None

    def send(self, frame: bytes) -> None:
        body = json.loads(frame)
        self.frames.append(body)
        if self.on_send is not None:
            self.on_send(body)

    def welcomed(self, welcome: wire.Welcome) -> None:
        self.welcomes.append(welcome)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] == kind]

    @property
    def recs(self) -> list[int]:
        return [frame["rec"] for frame in self.frames if "rec" in frame]


def frame(message: wire.Message) -> bytes:
    """
    A message as the server would send it.
    """
    return wire.encode(message).encode()


WELCOME = frame(wire.Welcome(version="0.1.0", session="s1"))


@pytest.fixture
def make_session(
    reactor: Any, kills: Any, settings: RunnerConfig
) -> Callable[[Spool], WorkerSession]:
    """
    Makes a session on the fake reactor.
    """

    def make(spool: Spool) -> WorkerSession:
        return WorkerSession(
            name="worker1",
            reactor=reactor,
            runner_config=settings,
            spool=spool,
            host=HOST,
            missed_tick="Delay",
            environ={"PATH": "/usr/bin:/bin"},
            kill_group=kills,
        )

    return make


def connect(session: WorkerSession) -> Link:
    """
    Attach a link and welcome the session on it.
    """
    link = Link()
    session.attach(link.send, link.welcomed)
    session.received(WELCOME)
    return link


def test_hello_first(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """Attaching sends hello with name, facts, policy, runs and spool."""
    session = make_session(spool)
    link = connect(session)
    session.received(frame(make_dispatch("sleep 10")))
    session.detach()

    again = Link()
    session.attach(again.send)

    hello = again.frames[0]
    assert hello == {
        "type": "hello",
        "name": "worker1",
        "version": __version__,
        "host": {
            "hostname": "h",
            "os": "Debian",
            "os_version": "12",
            "kernel": "Linux 6",
        },
        "missed_tick": "Delay",
        "running": [RUN],
        "spooled": 1,
    }
    assert link.frames[0]["type"] == "hello"
    assert wire.decode(json.dumps(hello), wire.FROM_WORKER)


def test_welcome_is_reported(make_session: Any, spool: Spool) -> None:
    """The welcome reaches the link's callback once."""
    session = make_session(spool)
    link = connect(session)
    session.received(WELCOME)

    assert session.welcomed
    assert link.welcomes == [wire.Welcome(version="0.1.0", session="s1")]


def test_dispatch_before_welcome_is_ignored(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """Nothing runs from a dispatch that comes before welcome."""
    session = make_session(spool)
    session.attach(Link().send)

    session.received(frame(make_dispatch("echo")))

    assert reactor.spawned == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "launch", "cmds": ["rm -rf /"]}',
        b'{"type": "dispatch", "run": "x", "schedule": "s", "cmds": ["id"]}',
        json.dumps(
            {
                "type": "dispatch",
                "run": RUN,
                "schedule": "s",
                "slot": "2026-12-03T16:45:00Z",
                "cmds": ["id"],
                "extra": 1,
            }
        ).encode(),
        json.dumps(
            {
                "type": "dispatch",
                "run": RUN,
                "schedule": "s",
                "slot": "2026-12-03T16:45:00Z",
                "cmds": [],
            }
        ).encode(),
        b"\xff\xfe",
    ],
)
def test_malformed_frames_are_ignored(
    make_session: Any, spool: Spool, reactor: Any, payload: bytes
) -> None:
    """A malformed frame runs nothing and sends nothing."""
    session = make_session(spool)
    link = connect(session)

    session.received(payload)

    assert reactor.spawned == []
    assert [f["type"] for f in link.frames] == ["hello"]


def test_records_are_spooled_before_sent(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """Every record is in the spool when it goes out."""
    session = make_session(spool)
    link = connect(session)
    held: list[bool] = []
    link.on_send = lambda body: held.append(
        body["rec"] in [rec for rec, _ in spool.pending(0, 100)]
    )

    session.received(frame(make_dispatch("echo hi")))
    reactor.spawned[0].out(b"hi\n")
    reactor.spawned[0].exit(0)

    assert [f["type"] for f in link.frames[1:]] == [
        "started",
        "output",
        "exit",
        "finished",
    ]
    assert link.recs == [1, 2, 3, 4]
    assert held == [True, True, True, True]


def test_ack_deletes_and_reconnect_resends_the_rest(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """Acked records are gone; the others are sent again, in order."""
    session = make_session(spool)
    link = connect(session)
    session.received(frame(make_dispatch("echo hi")))
    reactor.spawned[0].out(b"hi\n")
    reactor.spawned[0].exit(0)

    session.received(frame(wire.Ack(recs=(1, 3))))
    assert spool.count() == 2
    session.detach()
    again = connect(session)

    assert again.recs == [2, 4]
    assert again.frames[0]["spooled"] == 2
    assert link.recs == [1, 2, 3, 4]


def test_records_wait_while_disconnected(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """A run that goes on while disconnected is delivered on reconnect."""
    session = make_session(spool)
    first = connect(session)
    session.received(frame(make_dispatch("echo hi")))
    session.detach()

    reactor.spawned[0].out(b"hi\n")
    reactor.spawned[0].exit(0)
    second = connect(session)

    assert first.recs == [1]
    assert [f["type"] for f in second.frames] == [
        "hello",
        "started",
        "output",
        "exit",
        "finished",
    ]
    assert second.frames[0]["running"] == []


def test_dispatch_of_running_run_is_ignored(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """A dispatch for a run going on starts nothing more."""
    session = make_session(spool)
    connect(session)

    session.received(frame(make_dispatch("sleep 10")))
    session.received(frame(make_dispatch("sleep 10")))

    assert len(reactor.spawned) == 1


def test_dispatch_of_finished_run_is_ignored_after_restart(
    make_session: Any, tmp_path: Path, reactor: Any, make_dispatch: Any
) -> None:
    """A run that finished before a restart is not run again."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 20)
    session = make_session(spool)
    link = connect(session)
    session.received(frame(make_dispatch("true")))
    reactor.spawned[0].exit(0)
    session.received(frame(wire.Ack(recs=tuple(link.recs))))
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)
    restarted = make_session(reopened)
    connect(restarted)
    restarted.received(frame(make_dispatch("true")))

    assert len(reactor.spawned) == 1
    reopened.close()


def test_interrupted_run_is_closed_after_restart(
    make_session: Any, tmp_path: Path, reactor: Any, make_dispatch: Any
) -> None:
    """A run cut off by a dying worker ends failed after a restart."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 20)
    session = make_session(spool)
    connect(session)
    session.received(frame(make_dispatch("sleep 100")))
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)
    restarted = make_session(reopened)
    restarted.start()
    link = connect(restarted)

    types = [f["type"] for f in link.frames]
    assert types == ["hello", "started", "finished"]
    assert link.frames[-1]["state"] == "failed"
    assert link.frames[-1]["reason"] == "the worker stopped during the run"
    assert reopened.interrupted_runs() == []
    reopened.close()


def test_cancel_from_server(
    make_session: Any, spool: Spool, reactor: Any, kills: Any, make_dispatch: Any
) -> None:
    """A cancel stops the run; it ends cancelled with the reason."""
    session = make_session(spool)
    link = connect(session)
    session.received(frame(make_dispatch("sleep 100")))

    session.received(frame(wire.Cancel(run=RUN, reason="by admin")))
    reactor.spawned[0].exit(None, 15)

    assert kills.calls[0] == (4000, 15)
    finished = link.of("finished")[0]
    assert (finished["state"], finished["reason"]) == (
        "cancelled",
        "cancelled: by admin",
    )


def test_window_bounds_records_in_flight(
    make_session: Any,
    spool: Spool,
    reactor: Any,
    make_dispatch: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No more than the window is unacknowledged; acks open it again."""
    monkeypatch.setattr(session_module, "WINDOW_RECORDS", 3)
    session = make_session(spool)
    link = connect(session)
    session.received(frame(make_dispatch("a", "b", "c")))
    for process in reactor.spawned[:1]:
        process.exit(0)
    reactor.spawned[1].exit(0)
    reactor.spawned[2].exit(0)

    assert link.recs == [1, 2, 3]
    assert session.in_flight == 3
    session.received(frame(wire.Ack(recs=(1, 2))))
    assert link.recs == [1, 2, 3, 4, 5]
    session.received(frame(wire.Ack(recs=(3, 4, 5))))
    assert link.recs == [1, 2, 3, 4, 5, 6, 7]
    session.received(frame(wire.Ack(recs=(6, 7))))
    assert spool.count() == 0
    assert session.in_flight == 0


def test_link_that_acks_during_send(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """An in-process link may acknowledge inside send; nothing is doubled."""
    session = make_session(spool)
    link = Link()

    def ack_now(body: dict[str, Any]) -> None:
        if "rec" in body:
            session.received(frame(wire.Ack(recs=(body["rec"],))))

    link.on_send = ack_now
    at = "2026-12-03T16:45:00Z"
    spool.add([wire.Started(rec=0, run=RUN, cmd=n, at=at) for n in range(5)])
    session.attach(link.send)
    session.received(WELCOME)

    assert link.recs == [1, 2, 3, 4, 5]
    assert spool.count() == 0
    assert session.in_flight == 0


def test_shutdown_refuses_new_runs(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """Once stopping, a dispatch starts nothing."""
    session = make_session(spool)
    connect(session)
    stopped = session.stop()

    session.received(frame(make_dispatch("true")))

    assert stopped.called
    assert reactor.spawned == []


def test_server_error_is_only_logged(make_session: Any, spool: Spool) -> None:
    """An error message from the server changes nothing."""
    session = make_session(spool)
    link = connect(session)

    session.received(frame(wire.Error(code="bad-request", message="nope")))

    assert session.welcomed
    assert [f["type"] for f in link.frames] == ["hello"]


def test_queued_runs_are_in_hello_and_end_at_shutdown(
    make_session: Any, spool: Spool, reactor: Any, make_dispatch: Any
) -> None:
    """
    Runs queued past the cap are told in hello as going on, a resent
    dispatch does not queue them twice, and a shutdown ends them
    cancelled, so the spool holds no run left open.
    """
    session = make_session(spool)
    connect(session)
    runs = [f"00000000-0000-4000-8000-{n:012d}" for n in range(MAX_CONCURRENT_RUNS + 3)]
    for run in runs:
        session.received(frame(make_dispatch("sleep 100", run=run)))
    session.received(frame(make_dispatch("sleep 100", run=runs[-1])))

    assert len(reactor.spawned) == MAX_CONCURRENT_RUNS
    session.detach()
    link = connect(session)
    assert link.of("hello")[0]["running"] == runs

    stopped = session.stop()
    ended = {f["run"]: f for f in link.of("finished")}
    assert set(ended) == set(runs[MAX_CONCURRENT_RUNS:])
    assert {f["state"] for f in ended.values()} == {"cancelled"}
    assert {f["reason"] for f in ended.values()} == {NOT_STARTED_AT_SHUTDOWN}
    assert not any(f["run"] in ended for f in link.of("started"))

    for process in reactor.spawned:
        process.exit(0)
    assert stopped.called
    assert spool.interrupted_runs() == []
