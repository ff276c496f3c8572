"""
Tests for L{barto.worker.spool}: numbering, acks, bounds, durability.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.logger import LogLevel, capturedLogs

from barto import wire
from barto.worker.spool import Spool, record_frame

RUN = "00000000-0000-4000-8000-000000000001"
OTHER = "00000000-0000-4000-8000-000000000002"


def started(run: str = RUN, cmd: int = 0) -> wire.Started:
    """
    A started record.
    """
    return wire.Started(rec=0, run=run, cmd=cmd, at="2026-12-03T16:45:00Z")


def output(run: str = RUN, seq: int = 0, size: int = 10) -> wire.Output:
    """
    An output record of about C{size} bytes of lines.
    """
    return wire.Output(
        rec=0,
        run=run,
        seq=seq,
        cmd=0,
        stream="stdout",
        at="2026-12-03T16:45:00Z",
        lines=("x" * size,),
    )


def finished(run: str = RUN) -> wire.Finished:
    """
    A finished record.
    """
    return wire.Finished(rec=0, run=run, at="2026-12-03T16:45:01Z", code=0)


def recs(spool: Spool) -> list[int]:
    """
    The numbers the spool holds.
    """
    return [rec for rec, _ in spool.pending(0, 1000)]


def test_numbers_records_in_order(spool: Spool) -> None:
    """Records get increasing numbers and frames carrying them."""
    added = spool.add([started(), output(), finished()])

    assert [rec for rec, _ in added] == [1, 2, 3]
    frames = [wire.decode(frame, wire.FROM_WORKER) for _, frame in added]
    assert [(f.TYPE, f.rec) for f in frames] == [  # type: ignore[attr-defined]
        ("started", 1),
        ("output", 2),
        ("finished", 3),
    ]
    assert spool.pending(1, 10) == added[1:]
    assert spool.count() == 3


def test_numbers_grow_across_restarts(tmp_path: Path) -> None:
    """After every record was acked and the spool reopened, numbers go on."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 20)
    spool.add([started(), started(cmd=1)])
    spool.ack([1, 2])
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)
    added = reopened.add([started(cmd=2)])
    reopened.close()

    assert added[0][0] == 3


def test_ack_deletes_only_named_records(spool: Spool) -> None:
    """An ack deletes what it names; unknown numbers are ignored."""
    spool.add([started(), output(), output(seq=1), finished()])
    size_before = spool.size

    deleted = spool.ack([2, 4, 99])

    assert deleted == 2
    assert recs(spool) == [1, 3]
    assert spool.size < size_before
    assert spool.size == sum(len(frame) for _, frame in spool.pending(0, 10))


def test_size_survives_reopen(tmp_path: Path) -> None:
    """The held size is recomputed when the spool is opened."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 20)
    spool.add([output(size=1000), output(seq=1, size=2000)])
    size = spool.size
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)

    assert reopened.size == size > 3000
    reopened.close()


def test_runs_begin_once(tmp_path: Path) -> None:
    """A run can begin once; the spool remembers it after a restart."""
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_bytes=1 << 20)
    assert spool.begin_run(RUN, "backup", 1.0)
    assert not spool.begin_run(RUN, "backup", 2.0)
    spool.add([finished()])
    spool.ack([1])
    spool.close()

    reopened = Spool(path, max_bytes=1 << 20)

    assert not reopened.begin_run(RUN, "backup", 3.0)
    assert reopened.interrupted_runs() == []
    reopened.close()


def test_unfinished_runs_are_reported(spool: Spool) -> None:
    """Runs begun and never finished are the interrupted ones."""
    spool.begin_run(RUN, "backup", 1.0)
    spool.begin_run(OTHER, "report", 2.0)
    spool.add([finished(OTHER)])

    assert spool.interrupted_runs() == [(RUN, "backup")]


def test_old_finished_runs_are_forgotten(tmp_path: Path) -> None:
    """Only the newest finished runs are remembered."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=1 << 20, keep_finished=10)
    runs = [f"00000000-0000-4000-8000-{n:012d}" for n in range(30)]
    for number, run in enumerate(runs):
        spool.begin_run(run, "s", float(number))
        spool.add([finished(run)])

    assert spool.begin_run(runs[0], "s", 99.0)
    assert not spool.begin_run(runs[-1], "s", 99.0)
    spool.close()


def test_full_spool_trims_output_of_finished_runs_first(tmp_path: Path) -> None:
    """Past the bound, finished runs' output goes first, with a warning."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=20_000)
    spool.begin_run(RUN, "done", 1.0)
    spool.begin_run(OTHER, "going", 2.0)
    spool.add([started(RUN)])
    spool.add([output(RUN, seq, size=1000) for seq in range(5)])
    spool.add([finished(RUN)])
    spool.add([started(OTHER)])
    spool.add([output(OTHER, seq, size=1000) for seq in range(3)])

    with capturedLogs() as events:
        spool.add([output(OTHER, 3, size=11_000)])

    held = [json.loads(frame) for _, frame in spool.pending()]
    kept = [(m["type"], m["run"], m.get("seq")) for m in held]
    assert kept == [
        ("started", RUN, None),
        ("output", RUN, 3),
        ("output", RUN, 4),
        ("finished", RUN, None),
        ("started", OTHER, None),
        ("output", OTHER, 0),
        ("output", OTHER, 1),
        ("output", OTHER, 2),
        ("output", OTHER, 3),
    ]
    assert spool.size <= 20_000
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warnings and warnings[0]["whose"] == "finished"
    spool.close()


def test_trim_never_drops_exit_records(tmp_path: Path) -> None:
    """With only records that must stay, the spool goes over and warns."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=500)
    exits = [
        wire.Exit(rec=0, run=RUN, cmd=n, at="2026-12-03T16:45:00Z", code=0)
        for n in range(20)
    ]

    with capturedLogs() as events:
        spool.add(exits)
        spool.add([output(RUN, 0, size=100)])

    kinds = [json.loads(frame)["type"] for _, frame in spool.pending(0, 100)]
    assert kinds == ["exit"] * 20
    assert any("no output left" in e["log_format"] for e in events)
    spool.close()


def test_trim_takes_oldest_running_output_last(tmp_path: Path) -> None:
    """With no finished run to trim, the oldest output of running runs goes."""
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=3_000)
    spool.begin_run(RUN, "going", 1.0)

    for seq in range(20):
        spool.add([output(RUN, seq, size=300)])

    seqs = [json.loads(frame)["seq"] for _, frame in spool.pending(0, 100)]
    assert seqs == list(range(20 - len(seqs), 20))
    assert spool.size <= 3_000
    spool.close()


def test_failed_add_commits_nothing(spool: Spool) -> None:
    """A batch that fails half way leaves no record and no gap."""
    broken = wire.Started(rec=0, run=RUN, cmd=0, at="2026-12-03T16:45:00Z")
    object.__setattr__(broken, "run", None)

    with pytest.raises(sqlite3.IntegrityError):
        spool.add([started(), broken])

    assert spool.count() == 0
    assert spool.add([started()])[0][0] == 1


SIGKILLED = """
import os, signal, sys
from barto import wire
from barto.worker.spool import Spool, record_frame
spool = Spool(sys.argv[1], max_bytes=1 << 20)
spool.begin_run(sys.argv[2], "backup", 1.0)
spool.add([wire.Started(rec=0, run=sys.argv[2], cmd=0, at="2026-12-03T16:45:00Z")])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_records_survive_sigkill(tmp_path: Path) -> None:
    """What was committed is there after the process was killed."""
    path = tmp_path / "spool.sqlite3"

    result = subprocess.run(
        [sys.executable, "-c", SIGKILLED, str(path), RUN], check=False
    )

    assert result.returncode == -signal.SIGKILL
    spool = Spool(path, max_bytes=1 << 20)
    [(rec, frame)] = spool.pending()
    assert rec == 1
    assert json.loads(frame)["type"] == "started"
    assert spool.interrupted_runs() == [(RUN, "backup")]
    spool.close()


def test_spool_directory_is_created(tmp_path: Path) -> None:
    """The spool's directory is made when missing, private to the user."""
    path = tmp_path / "deep" / "er" / "spool.sqlite3"

    Spool(path, max_bytes=1000).close()

    assert path.exists()
    assert os.stat(path.parent).st_mode & 0o077 == 0


def test_record_frame_matches_wire_encode() -> None:
    """The spool's fast frames are byte for byte what wire.encode makes."""
    records = [
        started(),
        wire.Output(
            rec=7,
            run=RUN,
            seq=3,
            cmd=1,
            stream="stderr",
            at="2026-12-03T16:45:00.5Z",
            lines=("é \ufffd", '"quoted"\\', "\x01\t"),
            cut=12,
        ),
        wire.Exit(rec=8, run=RUN, cmd=1, at="2026-12-03T16:45:01Z", signal=9),
        wire.Finished(rec=9, run=RUN, state="timed_out", reason="late"),
    ]

    for record in records:
        assert record_frame(record) == wire.encode(record).encode()
