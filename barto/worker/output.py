"""
Output capture: a command's bytes become lines, capped, then records.

L{LineSplitter} turns one stream's bytes into lines and cuts those longer
than the line cap, keeping head and tail. L{RunOutput} applies the run's
output cap (head and tail again), numbers the chunks of a run and turns
them into L{wire.Output} records, at most every L{FLUSH_INTERVAL} seconds
or when a chunk reaches L{CHUNK_BYTES}.

Lines are split on bytes: a newline byte never occurs inside a UTF-8
sequence, so a sequence split across two reads stays whole in the partial
line, and each line is then decoded as one piece (with C{errors="replace"}),
which gives what an incremental decoder over the stream would give.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from barto import wire

# A chunk is sent when it holds this many bytes of lines. With the line
# cap below, a chunk's frame stays under the 1 MiB frame cap even when
# every byte needs a six-byte JSON escape.
CHUNK_BYTES = 128 * 1024

# The line cap can be configured lower, never higher than this.
MAX_LINE_CAP = 128 * 1024

# Lines waiting in a chunk are sent after at most this many seconds.
FLUSH_INTERVAL = 0.1

# The tail kept of a run whose output passes the run's cap is at most
# half that cap and never more than this, so that memory stays bounded.
MAX_TAIL_BYTES = 1024 * 1024

# What a kept tail line costs besides its bytes, counted against the tail
# budget so that many short lines cannot use much more memory than it.
TAIL_LINE_OVERHEAD = 64


def cut_marker(dropped: int) -> bytes:
    """
    The text that stands for the middle of a cut line.

    @param dropped: how many bytes the cut left out.
    """
    return b" [... %d bytes cut ...] " % dropped


def utf8_head(data: bytes) -> bytes:
    """
    C{data} without a UTF-8 sequence left incomplete at its end.
    """
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        if byte >= 0xF0:
            length = 4
        elif byte >= 0xE0:
            length = 3
        elif byte >= 0xC0:
            length = 2
        else:
            length = 1
        return data[:-back] if length > back else data
    return data


def utf8_tail(data: bytes) -> bytes:
    """
    C{data} without the continuation bytes of a sequence cut at its start.
    """
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]


def join_cut(head: bytes, tail: bytes, dropped: int) -> tuple[bytes, int]:
    """
    The head and tail of a cut line, joined by a marker.

    Both ends are trimmed to whole UTF-8 sequences, and what that trims is
    counted as cut too.

    @param dropped: the bytes already left out between C{head} and C{tail}.
    @return: the line and the number of bytes cut from it.
    """
    whole_head = utf8_head(head)
    whole_tail = utf8_tail(tail)
    dropped += len(head) - len(whole_head) + len(tail) - len(whole_tail)
    return whole_head + cut_marker(dropped) + whole_tail, dropped


def cut_line(line: bytes, cap: int) -> tuple[bytes, int]:
    """
    A line no longer than C{cap} as it is, else its head and tail.

    @return: the line and the number of bytes cut from it.
    """
    if len(line) <= cap:
        return line, 0
    head = cap // 2
    tail = cap - head
    return join_cut(line[:head], line[len(line) - tail :], len(line) - cap)


class LineSplitter:
    """
    Split one stream's bytes into lines, cutting those over a cap.

    A line being received that passes the cap is not kept whole: only its
    first and last bytes are, so memory stays bounded however long it is.
    """

    def __init__(self, cap: int) -> None:
        """
        @param cap: the longest line kept whole, in bytes.
        """
        self._cap = cap
        self._head_keep = cap // 2
        self._tail_keep = cap - self._head_keep
        self._line = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self._cutting = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """
        Take bytes read from the stream.

        @return: the lines they complete (without their newline) and the
            bytes cut from those lines.
        """
        pieces = data.split(b"\n")
        self._extend(pieces[0])
        if len(pieces) == 1:
            return [], 0

        first, cut = self._take()
        lines = [first]
        whole = pieces[1:-1]
        if whole and max(map(len, whole)) > self._cap:
            for piece in whole:
                line, dropped = cut_line(piece, self._cap)
                lines.append(line)
                cut += dropped
        else:
            lines.extend(whole)

        self._extend(pieces[-1])
        return lines, cut

    def close(self) -> tuple[list[bytes], int]:
        """
        The stream ended: a last line without a newline still counts.

        @return: that line, if any, and the bytes cut from it.
        """
        if not self._line and not self._cutting:
            return [], 0
        line, cut = self._take()
        return [line], cut

    def _extend(self, data: bytes) -> None:
        """
        Add bytes to the line being received.
        """
        if not data:
            return

        if not self._cutting:
            self._line += data
            if len(self._line) <= self._cap:
                return
            self._cutting = True
            self._tail = self._line[self._head_keep :]
            del self._line[self._head_keep :]
        else:
            self._tail += data

        over = len(self._tail) - self._tail_keep
        if over > 0:
            del self._tail[:over]
            self._dropped += over

    def _take(self) -> tuple[bytes, int]:
        """
        The line being received, now complete; start a new one.
        """
        if self._cutting:
            line, cut = join_cut(bytes(self._line), bytes(self._tail), self._dropped)
        else:
            line, cut = bytes(self._line), 0

        self._line.clear()
        self._tail.clear()
        self._dropped = 0
        self._cutting = False
        return line, cut


def decode_lines(lines: Sequence[bytes]) -> list[str]:
    """
    Decode lines as UTF-8, replacing what is not.

    The lines are decoded as one piece: invalid bytes never swallow the
    newline between two lines, so the result is the same as line by line.
    """
    return b"\n".join(lines).decode("utf-8", "replace").split("\n")


def timestamp(seconds: float) -> str:
    """
    Seconds since the epoch as a wire timestamp.
    """
    return wire.format_time(datetime.fromtimestamp(seconds, timezone.utc))


@dataclass
class _Chunk:
    """
    Lines of one command and stream, waiting to be sent.
    """

    cmd: int
    stream: wire.Stream
    at: float
    lines: list[str] = field(default_factory=list)
    size: int = 0
    cut: int = 0


@dataclass(frozen=True)
class _TailLine:
    """
    A line kept in a run's tail.
    """

    cmd: int
    stream: wire.Stream
    at: float
    line: bytes
    cut: int


Emit = Callable[[Sequence[wire.Record]], None]


class RunOutput:
    """
    A run's output: caps, chunks and sequence numbers.

    The first bytes of a run's output, up to its cap less the tail budget,
    are sent as they come. Past that, only the last lines (the tail
    budget's worth) are kept, and are sent when the run ends, the first
    chunk's C{cut} counting the bytes of the lines left out.
    """

    def __init__(
        self,
        run: str,
        clock: IReactorTime,
        emit: Emit,
        max_output_bytes: int,
    ) -> None:
        """
        @param run: the run's id.
        @param clock: gives the time of each chunk and runs the flushes.
        @param emit: takes the records made, in order.
        @param max_output_bytes: the run's output cap.
        """
        self._run = run
        self._clock = clock
        self._emit = emit
        self._seq = 0
        self._tail_budget = min(max_output_bytes // 2, MAX_TAIL_BYTES)
        self._head_left = max_output_bytes - self._tail_budget
        self._tail: deque[_TailLine] = deque()
        self._tail_cost = 0
        self._tail_dropped = 0
        self._pending: dict[wire.Stream, _Chunk] = {}
        self._timer: IDelayedCall | None = None

    @property
    def chunks(self) -> int:
        """
        How many output records were made so far.
        """
        return self._seq

    def add(
        self,
        cmd: int,
        stream: wire.Stream,
        lines: Sequence[bytes],
        cut: int = 0,
    ) -> None:
        """
        Take complete lines a command wrote.

        @param cmd: the command's index in the run.
        @param cut: bytes already cut from these lines.
        """
        if not lines:
            return

        now = self._clock.seconds()
        size = sum(map(len, lines))
        if size <= self._head_left:
            self._head_left -= size
            self._queue(cmd, stream, lines, size, cut, now)
            return

        head = []
        for line in lines:
            if len(line) > self._head_left:
                break
            self._head_left -= len(line)
            head.append(line)
        self._head_left = 0

        if head:
            self._queue(cmd, stream, head, sum(map(len, head)), cut, now)
            cut = 0
        for line in lines[len(head) :]:
            self._keep_tail(_TailLine(cmd, stream, now, line, cut))
            cut = 0

    def flush(self) -> None:
        """
        Send the waiting chunks now, oldest first.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

        chunks = sorted(self._pending.values(), key=lambda chunk: chunk.at)
        self._pending.clear()
        if chunks:
            self._emit([self._record(chunk) for chunk in chunks])

    def close(self) -> None:
        """
        The run is over: send what waits, then the kept tail.
        """
        self.flush()
        if not self._tail and not self._tail_dropped:
            return

        chunks: list[_Chunk] = []
        for kept in self._tail:
            last = chunks[-1] if chunks else None
            if (
                last is None
                or (last.cmd, last.stream) != (kept.cmd, kept.stream)
                or last.size + len(kept.line) > CHUNK_BYTES
            ):
                last = _Chunk(kept.cmd, kept.stream, kept.at)
                chunks.append(last)
            last.lines.extend(decode_lines([kept.line]))
            last.size += len(kept.line)
            last.cut += kept.cut

        if not chunks:
            chunks.append(_Chunk(0, "stdout", self._clock.seconds()))
        chunks[0].cut += self._tail_dropped

        self._tail.clear()
        self._tail_cost = 0
        self._tail_dropped = 0
        self._emit([self._record(chunk) for chunk in chunks])

    def _keep_tail(self, kept: _TailLine) -> None:
        """
        Keep a line past the head, dropping the oldest kept lines.
        """
        self._tail.append(kept)
        self._tail_cost += len(kept.line) + TAIL_LINE_OVERHEAD
        while self._tail and self._tail_cost > self._tail_budget:
            old = self._tail.popleft()
            self._tail_cost -= len(old.line) + TAIL_LINE_OVERHEAD
            self._tail_dropped += len(old.line) + old.cut

    def _queue(
        self,
        cmd: int,
        stream: wire.Stream,
        lines: Sequence[bytes],
        size: int,
        cut: int,
        now: float,
    ) -> None:
        """
        Add lines to the stream's waiting chunk, sending full chunks.
        """
        if size > CHUNK_BYTES:
            self._queue_large(cmd, stream, lines, cut, now)
            return

        chunk = self._pending.get(stream)
        if chunk is not None and (chunk.cmd != cmd or chunk.size + size > CHUNK_BYTES):
            self.flush()
            chunk = None

        if chunk is None:
            chunk = self._pending[stream] = _Chunk(cmd, stream, now)
        chunk.lines.extend(decode_lines(lines))
        chunk.size += size
        chunk.cut += cut

        if chunk.size >= CHUNK_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_INTERVAL, self.flush)

    def _queue_large(
        self,
        cmd: int,
        stream: wire.Stream,
        lines: Sequence[bytes],
        cut: int,
        now: float,
    ) -> None:
        """
        Send more than a chunk's worth of lines as several chunks.
        """
        self.flush()
        group: list[bytes] = []
        size = 0
        for line in lines:
            if group and size + len(line) > CHUNK_BYTES:
                self._pending[stream] = _Chunk(
                    cmd, stream, now, decode_lines(group), size, cut
                )
                self.flush()
                group, size, cut = [], 0, 0
            group.append(line)
            size += len(line)

        self._pending[stream] = _Chunk(cmd, stream, now, decode_lines(group), size, cut)
        self.flush()

    def _record(self, chunk: _Chunk) -> wire.Output:
        """
        The record of a chunk, with the run's next sequence number.
        """
        record = wire.Output(
            rec=0,
            run=self._run,
            seq=self._seq,
            cmd=chunk.cmd,
            stream=chunk.stream,
            at=timestamp(chunk.at),
            lines=tuple(chunk.lines),
            cut=chunk.cut,
        )
        self._seq += 1
        return record
