"""
Tests for L{barto.wire}: every message round-trips, every bad frame is a
L{WireError}, never another exception.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barto import wire

SLOT = datetime(2026, 12, 3, 16, 45, tzinfo=timezone.utc)
RUN = wire.run_id("vader", "echo", SLOT)
AT = "2026-12-03T16:45:00.250000Z"

SAMPLES: list[wire.Message] = [
    wire.Hello(
        name="vader",
        version="0.1.0",
        host=wire.HostFacts(hostname="h", os="Debian", kernel="6.1"),
        missed_tick="Delay",
        running=(RUN,),
        spooled=3,
    ),
    wire.Started(rec=1, run=RUN, cmd=0, at=AT),
    wire.Output(
        rec=2,
        run=RUN,
        seq=0,
        cmd=0,
        stream="stderr",
        at=AT,
        lines=("a", "\ufffd"),
        cut=10,
    ),
    wire.Exit(rec=3, run=RUN, cmd=0, at=AT, code=None, signal=9),
    wire.Finished(rec=4, run=RUN, at=AT, state="timed_out", reason="1s"),
    wire.Welcome(version="0.1.0", session="s"),
    wire.Dispatch(run=RUN, schedule="echo", slot=AT, cmds=("echo hi",), timeout=2.5),
    wire.Cancel(run=RUN, reason="asked"),
    wire.Ack(recs=(1, 2, 3)),
    wire.Error(code="bad-request", message="no", id=7),
    wire.Request(id=7, method="info", params={"json": True}),
    wire.Response(id=7, result={"version": "0.1.0"}),
    wire.Event(id=7, event={"line": "x"}),
]

CATALOGUES = [wire.FROM_WORKER, wire.TO_WORKER, wire.FROM_CLI, wire.TO_CLI]


def _catalogue_for(message: wire.Message) -> Any:
    for catalogue in CATALOGUES:
        if catalogue.get(message.TYPE) is type(message):
            return catalogue
    raise AssertionError(message)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message: wire.Message) -> None:
    """
    Encoding then decoding a message gives the same message back.
    """
    text = wire.encode(message)

    assert json.loads(text)["type"] == message.TYPE
    assert wire.decode(text, _catalogue_for(message)) == message


def test_run_id_is_stable_per_slot() -> None:
    """
    A slot's run id depends only on worker, schedule and second.
    """
    later = SLOT + timedelta(seconds=1)

    assert wire.run_id("vader", "echo", SLOT) == RUN
    assert wire.run_id("vader", "echo", SLOT.astimezone()) == RUN
    assert wire.run_id("vader", "echo", later) != RUN
    assert wire.run_id("other", "echo", SLOT) != RUN


def test_time_round_trip() -> None:
    """
    Timestamps are written in UTC with a Z and read back equal.
    """
    moment = datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=timezone.utc)

    text = wire.format_time(moment)

    assert text == "2026-03-29T01:30:00.000005Z"
    assert wire.parse_time(text) == moment
    with pytest.raises(ValueError):
        wire.parse_time("2026-03-29T01:30:00")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", wire.CLOSE_BAD_PAYLOAD),
        ("[]", wire.CLOSE_BAD_PAYLOAD),
        ('{"type": "dispatch"}', wire.CLOSE_BAD_PAYLOAD),
        ('{"type": "hello", "name": "a b"}', wire.CLOSE_BAD_PAYLOAD),
        ('{"type": "hello", "name": "a", "spooled": -1}', 1007),
        ('{"type": "hello", "name": "a", "extra": 1}', 1007),
        ('{"type": "hello", "name": "a", "missed_tick": "Never"}', 1007),
        ('{"type": "ack", "recs": [true]}', 1007),
        ('{"type": "hello", "name": "a", "host": []}', 1007),
        ("x" * 2000, wire.CLOSE_TOO_BIG),
        ("[" * 900, wire.CLOSE_BAD_PAYLOAD),
    ],
)
def test_bad_frames(frame: str, code: int) -> None:
    """
    Invalid frames raise WireError with the fitting close code.
    """
    catalogue = {**wire.FROM_WORKER, **wire.TO_WORKER}

    with pytest.raises(wire.WireError) as raised:
        wire.decode(frame, catalogue, max_bytes=1000)

    assert raised.value.close_code == code


def test_dispatch_needs_commands_and_valid_slot() -> None:
    """
    A dispatch without commands or with a bad slot is refused.
    """
    base = {"type": "dispatch", "run": RUN, "schedule": "echo", "slot": AT}

    with pytest.raises(wire.WireError, match="cmds"):
        wire.decode(json.dumps({**base, "cmds": []}), wire.TO_WORKER)
    with pytest.raises(wire.WireError, match="slot"):
        wire.decode(json.dumps({**base, "cmds": ["x"], "slot": "soon"}), wire.TO_WORKER)


def test_direction_is_enforced() -> None:
    """
    A server message is not accepted from a worker.
    """
    text = wire.encode(wire.Ack(recs=(1,)))

    with pytest.raises(wire.WireError, match="unexpected message type"):
        wire.decode(text, wire.FROM_WORKER)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(
    sorted({name for catalogue in CATALOGUES for name in catalogue})
)


@settings(max_examples=300, deadline=None)
@given(
    kind=TYPES,
    body=st.dictionaries(
        st.sampled_from(
            "name rec run cmd seq at lines id recs params host code state"
            " cmds slot method".split()
        ),
        JSON,
    ),
)
def test_arbitrary_json_never_crashes(kind: str, body: dict[str, Any]) -> None:
    """
    Any JSON object either decodes to a message or raises WireError.
    """
    frame = json.dumps({"type": kind, **body})

    for catalogue in CATALOGUES:
        try:
            wire.decode(frame, catalogue)
        except wire.WireError:
            pass


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_never_crash(payload: bytes | str) -> None:
    """
    Any payload either decodes or raises WireError.
    """
    try:
        wire.decode(payload, wire.FROM_WORKER)
    except wire.WireError:
        pass
