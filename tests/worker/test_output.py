"""
Tests for L{barto.worker.output}: lines, caps, chunks and records.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from barto import wire
from barto.worker.output import (
    CHUNK_BYTES,
    FLUSH_INTERVAL,
    MAX_LINE_CAP,
    LineSplitter,
    RunOutput,
    cut_line,
    decode_lines,
    utf8_head,
    utf8_tail,
)

RUN = "00000000-0000-4000-8000-000000000001"


class Collect:
    """
    Collects emitted batches.
    """

    def __init__(self) -> None:
        self.batches: list[list[wire.Output]] = []

    def __call__(self, records: object) -> None:
        self.batches.append(list(records))  # type: ignore[call-overload]

    @property
    def records(self) -> list[wire.Output]:
        return [record for batch in self.batches for record in batch]


def test_lines_split_across_reads() -> None:
    """A line split over several reads comes out whole, once complete."""
    splitter = LineSplitter(100)

    assert splitter.feed(b"ab") == ([], 0)
    assert splitter.feed(b"c\nde") == ([b"abc"], 0)
    assert splitter.feed(b"f\n\ng\nh") == ([b"def", b"", b"g"], 0)
    assert splitter.close() == ([b"h"], 0)
    assert splitter.close() == ([], 0)


def test_no_last_line_after_final_newline() -> None:
    """Output ending in a newline has no extra empty line at the end."""
    splitter = LineSplitter(100)

    assert splitter.feed(b"one\ntwo\n") == ([b"one", b"two"], 0)
    assert splitter.close() == ([], 0)


def test_long_line_keeps_head_and_tail() -> None:
    """A line over the cap keeps its head and tail and counts the cut."""
    splitter = LineSplitter(10)
    line = b"0123456789" * 100

    lines: list[bytes] = []
    cut = 0
    for start in range(0, len(line), 7):
        more, dropped = splitter.feed(line[start : start + 7])
        lines += more
        cut += dropped
    more, dropped = splitter.feed(b"\nnext\n")

    assert lines == []
    assert more == [b"01234 [... 990 bytes cut ...] 56789", b"next"]
    assert dropped == 990


def test_long_line_memory_is_bounded() -> None:
    """A line without end never holds more than the cap in memory."""
    splitter = LineSplitter(64)

    for _ in range(1000):
        splitter.feed(b"x" * 1000)

    held = len(splitter._line) + len(splitter._tail)
    assert held <= 64
    assert splitter.close() == (
        [b"x" * 32 + b" [... 999936 bytes cut ...] " + b"x" * 32],
        999_936,
    )


def test_long_whole_line_in_one_read() -> None:
    """A long line inside a single read is cut like one that streams."""
    splitter = LineSplitter(4)

    lines, cut = splitter.feed(b"a\n" + b"b" * 10 + b"\nc\n")

    assert lines == [b"a", b"bb [... 6 bytes cut ...] bb", b"c"]
    assert cut == 6


def test_cut_keeps_whole_utf8_sequences() -> None:
    """A cut never splits a UTF-8 sequence; split bytes count as cut."""
    line = "é" * 10

    kept, cut = cut_line(line.encode(), 5)

    assert kept.decode() == "é [... 16 bytes cut ...] é"
    assert cut == 16


def test_utf8_trimming() -> None:
    """Incomplete sequences at the ends are trimmed, whole ones kept."""
    euro = "€".encode()

    assert utf8_head(b"a" + euro[:2]) == b"a"
    assert utf8_head(b"a" + euro) == b"a" + euro
    assert utf8_head(b"abc") == b"abc"
    assert utf8_tail(euro[1:] + b"z") == b"z"
    assert utf8_tail(euro + b"z") == euro + b"z"


def test_invalid_utf8_is_replaced_per_line() -> None:
    """Invalid bytes become U+FFFD and never merge two lines."""
    assert decode_lines([b"ok", b"\xff\xfe", b"\xe2\x82", b"\xe2\x82\xac"]) == [
        "ok",
        "\ufffd\ufffd",
        "\ufffd",
        "€",
    ]


def test_multibyte_split_across_reads() -> None:
    """A UTF-8 sequence split between two reads decodes whole."""
    splitter = LineSplitter(100)
    data = "naïve €\n".encode()

    first, _ = splitter.feed(data[:3])
    second, _ = splitter.feed(data[3:])

    assert first == []
    assert decode_lines(second) == ["naïve €"]


def test_chunks_flush_on_the_interval() -> None:
    """Lines wait for the flush interval, then go in one chunk."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1_000_000)

    output.add(0, "stdout", [b"a", b"b"])
    output.add(0, "stdout", [b"c"])
    assert emitted.batches == []

    clock.advance(FLUSH_INTERVAL)

    [[record]] = emitted.batches
    assert (record.seq, record.cmd, record.stream) == (0, 0, "stdout")
    assert record.lines == ("a", "b", "c")
    assert record.at == "1970-01-01T00:00:00Z"
    assert clock.getDelayedCalls() == []


def test_sequence_spans_streams_in_arrival_order() -> None:
    """Chunks of both streams are numbered in one sequence, oldest first."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1_000_000)

    output.add(0, "stderr", [b"err 1"])
    clock.advance(0.01)
    output.add(0, "stdout", [b"out 1"])
    clock.advance(FLUSH_INTERVAL)
    output.add(1, "stdout", [b"out 2"])
    output.flush()

    assert [(r.seq, r.cmd, r.stream, r.lines) for r in emitted.records] == [
        (0, 0, "stderr", ("err 1",)),
        (1, 0, "stdout", ("out 1",)),
        (2, 1, "stdout", ("out 2",)),
    ]


def test_full_chunk_goes_at_once() -> None:
    """A chunk that reaches its size is sent without waiting."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1 << 30)
    line = b"x" * 1000

    output.add(0, "stdout", [line] * 300)

    sizes = [sum(len(text) for text in r.lines) for r in emitted.records]
    assert sum(sizes) == 300_000
    assert all(size <= CHUNK_BYTES for size in sizes)
    assert [r.seq for r in emitted.records] == list(range(len(sizes)))


def test_worst_case_chunk_fits_a_frame() -> None:
    """Lines that need a JSON escape per byte still fit the frame cap."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1 << 30)
    splitter = LineSplitter(MAX_LINE_CAP)

    lines, cut = splitter.feed(b"\x01" * (3 * MAX_LINE_CAP) + b"\n")
    output.add(0, "stdout", lines, cut)
    output.add(0, "stdout", [b"\x01" * 1000] * 500)
    output.flush()

    for record in emitted.records:
        frame = wire.encode(record).encode()
        assert len(frame) < wire.DEFAULT_MAX_MESSAGE_BYTES
        assert wire.decode(frame, wire.FROM_WORKER) == record


def test_run_cap_keeps_head_and_tail() -> None:
    """Past the run's cap only the head and the last lines are kept."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1000)

    for number in range(1000):
        output.add(0, "stdout", [b"line %04d" % number])
    output.add(1, "stderr", [b"last"])
    output.close()

    lines = [line for r in emitted.records for line in r.lines]
    kept = sum(len(line) for line in lines)
    cut = sum(r.cut for r in emitted.records)
    assert lines[0] == "line 0000"
    assert lines[-2:] == ["line 0999", "last"]
    assert kept + cut == 999 * 9 + 9 + 4
    assert kept <= 1000
    assert emitted.records[-1].stream == "stderr"
    assert emitted.records[-1].cmd == 1


def test_tail_that_holds_nothing_still_reports_the_cut() -> None:
    """A cap too small for any tail line still says what was cut."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 10)

    output.add(0, "stdout", [b"12345", b"x" * 50])
    output.close()

    assert [(r.lines, r.cut) for r in emitted.records] == [
        (("12345",), 0),
        ((), 50),
    ]


def test_record_is_valid_json_with_cut() -> None:
    """An output record's frame decodes back to the same record."""
    clock = Clock()
    emitted = Collect()
    output = RunOutput(RUN, clock, emitted, 1000)

    output.add(0, "stdout", [b'\xff"quoted"'], cut=7)
    output.flush()

    [record] = emitted.records
    body = json.loads(wire.encode(record))
    assert body["lines"] == ['\ufffd"quoted"']
    assert body["cut"] == 7
