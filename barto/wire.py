"""
The barto wire protocol: every message bartos, bartoc and barto-cli send.

Messages travel as WebSocket text frames, one JSON object per frame, with a
C{type} field naming the message.  Each message is a frozen dataclass here;
L{decode} checks every field of an incoming frame against its declared type
and limits before anything acts on it, and raises L{WireError} otherwise.

The protocol itself (who sends what, and when) is described in
C{docs/protocol.md}.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Union

SUBPROTOCOL = "barto.v1"
WORKER_PATH = b"/v1/ws/worker"
CLI_PATH = b"/v1/ws/cli"

# WebSocket close codes used when a peer breaks the protocol.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_BAD_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
RUN_PATTERN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)

MAX_TEXT = 256 * 1024
MAX_ITEMS = 10_000

RUN_NAMESPACE = uuid.UUID("5d1b4f3e-7c2a-4e8b-9a61-0b7d2f4c8e15")

RUN_STATES = (
    "pending",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "missed",
    "skipped",
)
"""Every state a run can be in, from due to final (docs/architecture.md)."""

Stream = Literal["stdout", "stderr"]
MissedTick = Literal["Burst", "Delay", "Skip"]
RunState = Literal[
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
]


class WireError(ValueError):
    """
    A frame that is not a valid message.

    @ivar close_code: the WebSocket close code that fits the fault.
    """

    def __init__(self, message: str, close_code: int = CLOSE_BAD_PAYLOAD):
        super().__init__(message)
        self.close_code = close_code


def is_valid_name(name: str) -> bool:
    """
    Whether C{name} may name a worker, a schedule or a CLI client.
    """
    return NAME_PATTERN.fullmatch(name) is not None


def run_id(worker: str, schedule: str, slot: datetime) -> str:
    """
    The run id of a slot: stable, so a re-sent dispatch keeps its id.

    @param slot: the scheduled second, an aware datetime.
    """
    key = f"{worker}\0{schedule}\0{int(slot.timestamp())}"
    # str(uuid.uuid5(RUN_NAMESPACE, key)), without the UUID object.
    digest = bytearray(hashlib.sha1(RUN_NAMESPACE.bytes + key.encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def format_time(moment: datetime) -> str:
    """
    An aware datetime as ISO 8601 in UTC with a C{Z} suffix.
    """
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    text = moment.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """
    Parse an ISO 8601 timestamp with an offset (or C{Z}) to an aware
    datetime in UTC.

    @raise ValueError: for anything else.
    """
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp without offset")
    return moment.astimezone(timezone.utc)


# Messages.  Field metadata: "pattern" (a compiled regex for strings),
# "min"/"max" (numbers), "max_len" (strings and lists).


def _name(**kwargs: Any) -> Any:
    return field(metadata={"pattern": NAME_PATTERN}, **kwargs)


def _run(**kwargs: Any) -> Any:
    return field(metadata={"pattern": RUN_PATTERN}, **kwargs)


def _time(**kwargs: Any) -> Any:
    return field(default="", metadata={"time": True}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """
    What a worker tells about the machine it runs on.
    """

    hostname: str = ""
    os: str = ""
    os_version: str = ""
    kernel: str = ""


@dataclass(frozen=True, kw_only=True)
class Message:
    """
    Base of every message; C{TYPE} is the value of the C{type} field.
    """

    TYPE: ClassVar[str] = ""


# Worker to server.


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """
    The first frame a worker sends after the handshake.

    @ivar running: the runs the worker is executing right now.
    @ivar spooled: how many records it still holds unacknowledged.
    """

    TYPE: ClassVar[str] = "hello"
    name: str = _name()
    version: str = ""
    host: HostFacts = HostFacts()
    missed_tick: MissedTick = "Burst"
    running: tuple[str, ...] = ()
    spooled: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True, kw_only=True)
class Started(Message):
    """
    A record: command C{cmd} (an index into the run's cmds) started.
    """

    TYPE: ClassVar[str] = "started"
    rec: int = field(metadata={"min": 0})
    run: str = _run()
    cmd: int = field(metadata={"min": 0, "max": 1000})
    at: str = _time()


@dataclass(frozen=True, kw_only=True)
class Output(Message):
    """
    A record: a chunk of lines one command wrote on one stream.

    C{cut} counts the bytes the worker's output caps left out of this
    chunk (a line's middle, or whole lines past the run's cap).

    C{seq} numbers the chunks of a run from 0, across both streams, so
    the server stores each chunk once and can show them in order.
    """

    TYPE: ClassVar[str] = "output"
    rec: int = field(metadata={"min": 0})
    run: str = _run()
    seq: int = field(metadata={"min": 0})
    cmd: int = field(metadata={"min": 0, "max": 1000})
    stream: Stream = "stdout"
    at: str = _time()
    lines: tuple[str, ...] = ()
    cut: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True, kw_only=True)
class Exit(Message):
    """
    A record: command C{cmd} ended with an exit code or a signal.

    @ivar reason: why it ended, when barto ended it or it could not start.
    """

    TYPE: ClassVar[str] = "exit"
    rec: int = field(metadata={"min": 0})
    run: str = _run()
    cmd: int = field(metadata={"min": 0, "max": 1000})
    at: str = _time()
    code: int | None = None
    signal: int | None = None
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Finished(Message):
    """
    A record: the run is over, in the given state.
    """

    TYPE: ClassVar[str] = "finished"
    rec: int = field(metadata={"min": 0})
    run: str = _run()
    at: str = _time()
    state: RunState = "succeeded"
    code: int | None = None
    reason: str = ""


# Server to worker.


@dataclass(frozen=True, kw_only=True)
class Welcome(Message):
    """
    The server's answer to L{Hello}: the session is open.
    """

    TYPE: ClassVar[str] = "welcome"
    version: str = ""
    session: str = ""


@dataclass(frozen=True, kw_only=True)
class Dispatch(Message):
    """
    Run a schedule's commands for one slot.

    @ivar slot: the scheduled second, ISO 8601 UTC.
    @ivar timeout: seconds after which the run is killed, if any.
    """

    TYPE: ClassVar[str] = "dispatch"
    run: str = _run()
    schedule: str = _name()
    slot: str = _time()
    cmds: tuple[str, ...] = field(default=(), metadata={"min_len": 1})
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class Cancel(Message):
    """
    Stop a run: TERM, then KILL after the worker's grace.
    """

    TYPE: ClassVar[str] = "cancel"
    run: str = _run()
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """
    The records with these C{rec} numbers are durably stored.
    """

    TYPE: ClassVar[str] = "ack"
    recs: tuple[int, ...] = ()


# Both directions.


@dataclass(frozen=True, kw_only=True)
class Error(Message):
    """
    A failure; C{id} names the CLI request it answers, if any.
    """

    TYPE: ClassVar[str] = "error"
    code: str = ""
    message: str = ""
    id: int | None = None


# CLI to server and back.


@dataclass(frozen=True, kw_only=True)
class Request(Message):
    """
    A CLI request: call C{method} with C{params}; C{id} pairs the answer.
    """

    TYPE: ClassVar[str] = "request"
    id: int = field(metadata={"min": 0})
    method: str = field(default="", metadata={"pattern": NAME_PATTERN})
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Response(Message):
    """
    The answer to the request C{id}.
    """

    TYPE: ClassVar[str] = "response"
    id: int = field(metadata={"min": 0})
    result: Any = None


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    """
    One item of a stream a request opened (live output, run states).
    """

    TYPE: ClassVar[str] = "event"
    id: int = field(metadata={"min": 0})
    event: Mapping[str, Any] = field(default_factory=dict)


WorkerMessage = Hello | Started | Output | Exit | Finished | Error
ServerToWorker = Welcome | Dispatch | Cancel | Ack | Error
ServerToCli = Response | Error | Event
Record = Started | Output | Exit | Finished

FROM_WORKER: Mapping[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Started, Output, Exit, Finished, Error)
}
TO_WORKER: Mapping[str, type[Message]] = {
    cls.TYPE: cls for cls in (Welcome, Dispatch, Cancel, Ack, Error)
}
FROM_CLI: Mapping[str, type[Message]] = {Request.TYPE: Request}
TO_CLI: Mapping[str, type[Message]] = {
    cls.TYPE: cls for cls in (Response, Error, Event)
}


_PLAIN = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def encode(message: Message) -> str:
    """
    A message as the text of one frame.
    """
    body: dict[str, Any] = {"type": message.TYPE}
    cls = type(message)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(spec.name for spec in fields(cls))
    for name in names:
        value = getattr(message, name)
        kind = type(value)
        if kind in _PLAIN or (
            kind is tuple and all(type(item) in _PLAIN for item in value)
        ):
            body[name] = value
        else:
            # Nested messages and mappings: asdict copies them through.
            body = {"type": message.TYPE}
            body.update(asdict(message))
            break
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def decode(
    payload: str | bytes,
    catalogue: Mapping[str, type[Message]],
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """
    Parse and validate one frame against the messages in C{catalogue}.

    @param catalogue: one of L{FROM_WORKER}, L{TO_WORKER}, L{FROM_CLI},
        L{TO_CLI}: the messages this side may receive.
    @raise WireError: the frame is not one of those messages.
    """
    if len(payload) > max_bytes:
        raise WireError(f"frame of {len(payload)} bytes", CLOSE_TOO_BIG)

    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as error:
        raise WireError(f"not JSON: {error}") from None

    if not isinstance(body, dict):
        raise WireError("not a JSON object")

    kind = body.pop("type", None)
    cls = catalogue.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unexpected message type {kind!r}")

    message: Message = _build(cls, body, kind)
    return message


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    """
    The resolved field types of a message class, computed once per class.
    """
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


class _Path:
    """
    Where a value sits in a frame (C{dispatch.cmds[2]}), spelled out
    only when an error names it: decoding builds no text on success.
    """

    __slots__ = ("key", "parent")

    def __init__(self, parent: str | _Path, key: str | int) -> None:
        self.parent = parent
        self.key = key

    def __str__(self) -> str:
        if isinstance(self.key, int):
            return f"{self.parent}[{self.key}]"
        return f"{self.parent}.{self.key}"


def _build(cls: type[Any], body: Mapping[str, Any], where: str | _Path) -> Any:
    """
    Build dataclass C{cls} from C{body}, checking every field.
    """
    hints = _type_hints(cls)
    known = {spec.name for spec in fields(cls)}
    extra = set(body) - known
    if extra:
        raise WireError(f"{where}: unknown fields {sorted(extra)}")

    values = {}
    for spec in fields(cls):
        path = _Path(where, spec.name)
        if spec.name in body:
            value = _check(hints[spec.name], body[spec.name], path)
            _limits(value, spec.metadata, path)
            values[spec.name] = value
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise WireError(f"{path}: missing")
        else:
            continue
    return cls(**values)


def _check(hint: Any, value: Any, path: str | _Path) -> Any:
    """
    C{value} converted to the declared type C{hint}, or L{WireError}.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if hint is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _check(inner, value, path)
    if origin is Literal:
        if value not in args:
            raise WireError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise WireError(f"{path}: expected a list")
        if args[0] is str:
            for index, item in enumerate(value):
                if not isinstance(item, str) or len(item) > MAX_TEXT:
                    _check(str, item, _Path(path, index))
            return tuple(value)
        return tuple(
            _check(args[0], item, _Path(path, i)) for i, item in enumerate(value)
        )
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, dict):
            raise WireError(f"{path}: expected an object")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{path}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{path}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{path}: expected a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise WireError(f"{path}: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise WireError(f"{path}: expected a string")
        return value
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise WireError(f"{path}: expected an object")
        return _build(hint, value, path)
    raise WireError(f"{path}: cannot check {hint!r}")


def _limits(value: Any, metadata: Mapping[str, Any], path: str | _Path) -> None:
    """
    Check the limits a field's metadata sets.
    """
    pattern = metadata.get("pattern")
    if pattern is not None and isinstance(value, str):
        if pattern.fullmatch(value) is None:
            raise WireError(f"{path}: {value[:80]!r} is not a valid name")
    low, high = metadata.get("min"), metadata.get("max")
    if isinstance(value, int) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            raise WireError(f"{path}: {value} is out of range")
    if metadata.get("time") and isinstance(value, str):
        try:
            parse_time(value)
        except ValueError:
            raise WireError(f"{path}: {value[:40]!r} is not a timestamp") from None
    min_len = metadata.get("min_len")
    if min_len is not None and len(value) < min_len:
        raise WireError(f"{path}: needs at least {min_len} item(s)")
