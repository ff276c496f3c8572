"""
Configuration of the three barto programs: TOML, environment and flags.

Each program reads one TOML file (by default
C{$XDG_CONFIG_HOME/<program>/<program>.toml}), then environment variables
under its prefix (C{BARTOS_}, C{BARTOC_}, C{BARTO_CLI_}; C{__} nests), then
the flags its command line passes in as dotted keys. Later sources win:
flags > environment > file > defaults.

Everything is checked once, at load: a bad value raises L{ConfigError} with
one line that names where it came from, the key, the value and what was
expected. Unknown keys are only warned about. The result is a tree of
frozen dataclasses; secrets are wrapped in L{Secret} so that no repr, log
line or error message shows them.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import re
import sys
import types
import typing
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from twisted.logger import Logger

from barto.calendar import CalendarError, CalendarSpec, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PROGRAMS",
    "CliConfig",
    "ConfigError",
    "EndpointConfig",
    "FileTracingConfig",
    "LayerConfig",
    "ListenConfig",
    "LocalWorkerConfig",
    "MariaDBConfig",
    "RetentionConfig",
    "RunnerConfig",
    "RunsConfig",
    "ScheduleConfig",
    "Secret",
    "ServerConfig",
    "StoreConfig",
    "TlsListenConfig",
    "TokenConfig",
    "TracingConfig",
    "WebSocketConfig",
    "WorkerConfig",
    "default_config_path",
    "default_data_dir",
    "load_cli_config",
    "load_server_config",
    "load_worker_config",
    "parse_directives",
]

log = Logger()

PROGRAMS = ("bartos", "bartoc", "barto-cli")
"""The programs that read a config, which also name their files."""

_ENV_PREFIXES = {
    "bartos": "BARTOS_",
    "bartoc": "BARTOC_",
    "barto-cli": "BARTO_CLI_",
}

MiB = 1024 * 1024

DIRECTIVE_LEVELS = (
    "trace",
    "debug",
    "info",
    "warn",
    "error",
    "critical",
    "off",
)
"""The level names a tracing directive may use."""

_LEVEL_NAMES = ", ".join(DIRECTIVE_LEVELS)

MissedTick = Literal["Burst", "Delay", "Skip"]
Overlap = Literal["allow", "skip", "queue"]
Role = Literal["worker", "cli-read", "cli-admin"]
Prefix = Literal["ws", "wss"]

_Path = tuple[str | int, ...]
_T = TypeVar("_T")


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    The message is one line: where the value came from (a file or an
    environment variable), the key path, the value and what was expected.

    @cvar exit_code: the status a program exits with on this error.
    """

    exit_code = 2


class Secret:
    """
    A password, token or key that must never be shown.

    Its C{repr} and C{str} are C{Secret('********')}; only L{reveal} gives
    the value. Two secrets are equal when their values are.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """
        @param value: the secret text.
        """
        self._value = value

    def reveal(self) -> str:
        """
        @return: the secret text, for the one place that needs it.
        """
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


# Checks: each returns None when the value is fine, else the complaint
# that follows the value in the error message.

_Check = Callable[[Any], "str | None"]


def _port(value: int) -> str | None:
    if 1 <= value <= 65535:
        return None
    return "is not a port (expected 1..65535)"


def _positive(value: float) -> str | None:
    return None if value > 0 else "is too small (expected > 0)"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "is negative (expected >= 0)"


def _hour(value: int) -> str | None:
    return None if 0 <= value <= 23 else "is not an hour (expected 0..23)"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "is empty (expected a non-empty string)"


def _name(value: str) -> str | None:
    if not value or value != value.strip():
        return "is not a name (expected no surrounding blanks, not empty)"
    if "/" in value or not value.isprintable():
        return "is not a name (expected no '/' and no control characters)"
    return None


def _zone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return "is not a time zone (expected an IANA name like Europe/Berlin)"
    return None


def _commands(value: tuple[str, ...]) -> str | None:
    if not value:
        return "is empty (expected at least one command)"
    if not all(command.strip() for command in value):
        return "has an empty command (expected non-empty strings)"
    return None


def _options(value: str) -> str | None:
    try:
        _split_options(value)
    except ValueError as e:
        return f"is not a list of options ({e})"
    return None


def _directives(value: str) -> str | None:
    try:
        parse_directives(value)
    except ValueError as e:
        return f"are not tracing directives ({e})"
    return None


def _checked(check: _Check) -> Mapping[str, object]:
    """
    The field metadata of a key whose values C{check} vets.
    """
    return {"check": check}


_POSITIVE = _checked(_positive)
_NON_NEGATIVE = _checked(_non_negative)
_PORT = _checked(_port)
_NON_EMPTY = _checked(_non_empty)
_NAME = _checked(_name)
_ZONE = _checked(_zone)
_HOUR = _checked(_hour)
_COMMANDS = _checked(_commands)
_OPTIONS = _checked(_options)
_DIRECTIVES = _checked(_directives)

_FLAT: Mapping[str, object] = {"flatten": True}
"""Field metadata: the field's dataclass reads its keys from this table."""

_DERIVED: Mapping[str, object] = {"derived": True}
"""Field metadata: not read from input; the loader supplies the value."""


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class LayerConfig:
    """
    What one log destination shows (C{[tracing.stdout]},
    C{[tracing.file.layer]}).

    @ivar with_target: show the log namespace.
    @ivar with_thread_ids: show the emitting thread's id.
    @ivar with_thread_names: show the emitting thread's name.
    @ivar with_line_number: accepted for compatibility; not shown.
    @ivar with_level: show the level.
    @ivar directives: C{namespace=level} pairs separated by commas; a
        bare level sets the default level.
    """

    with_target: bool = True
    with_thread_ids: bool = False
    with_thread_names: bool = False
    with_line_number: bool = False
    with_level: bool = True
    directives: str = field(default="", metadata=_DIRECTIVES)


@dataclass(frozen=True, kw_only=True)
class FileTracingConfig:
    """
    The log file (C{[tracing.file]}).

    @ivar quiet: added to the C{-q} count for the file.
    @ivar verbose: added to the C{-v} count for the file.
    @ivar layer: what the file shows (C{[tracing.file.layer]}).
    """

    quiet: int = field(default=0, metadata=_NON_NEGATIVE)
    verbose: int = field(default=0, metadata=_NON_NEGATIVE)
    layer: LayerConfig = field(default_factory=LayerConfig)


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """
    Logging (C{[tracing]}); every table is optional.

    @ivar stdout: the standard output log, used with C{-e}.
    @ivar file: the log file, used with C{-t}.
    """

    stdout: LayerConfig = field(default_factory=LayerConfig)
    file: FileTracingConfig = field(default_factory=FileTracingConfig)


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """
    Where a client finds C{bartos} (the clients' C{[bartos]} table).

    @ivar prefix: C{ws} or C{wss} (TLS).
    @ivar api_key: the server-wide bearer key, if the server has one.
    @ivar token: this client's own bearer token (from C{[[tokens]]} of the
        server); preferred over C{api_key} when both are set.
    @ivar ca_cert: a PEM file of the CAs to trust instead of the system's.
    @ivar client_cert: a PEM certificate for mutual TLS, with C{client_key}.
    @ivar client_key: the PEM private key for C{client_cert}.
    """

    prefix: Prefix = "ws"
    host: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    port: int = field(default=21526, metadata=_PORT)
    api_key: Secret | None = None
    token: Secret | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def url_base(self) -> str:
        """
        @return: the URL without a path, like C{ws://127.0.0.1:21526}.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.prefix}://{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """
    How a worker runs commands.

    @ivar shell: the shell that runs each command with C{-c}.
    @ivar workdir: the working directory; the worker's own when C{None}.
    @ivar env: variables added to the worker's environment for commands.
    @ivar max_line_bytes: a longer output line is cut.
    @ivar max_output_bytes: output kept per run (head and tail).
    @ivar kill_grace: seconds between TERM and KILL.
    @ivar shutdown_grace: seconds running commands get when the worker
        stops.
    """

    shell: str = field(default="/bin/sh", metadata=_NON_EMPTY)
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=_empty_env)
    max_line_bytes: int = field(default=65536, metadata=_POSITIVE)
    max_output_bytes: int = field(default=16 * MiB, metadata=_POSITIVE)
    kill_grace: float = field(default=5.0, metadata=_POSITIVE)
    shutdown_grace: float = field(default=10.0, metadata=_POSITIVE)


@dataclass(frozen=True, kw_only=True)
class TlsListenConfig:
    """
    The TLS listener (C{[listen.tls]} or C{[actix.tls]}).

    @ivar client_ca_cert: when set, clients must present a certificate
        signed by this CA.
    """

    ip: str = field(metadata=_NON_EMPTY)
    port: int = field(metadata=_PORT)
    cert_file_path: str = field(metadata=_NON_EMPTY)
    key_file_path: str = field(metadata=_NON_EMPTY)
    client_ca_cert: str | None = None


@dataclass(frozen=True, kw_only=True)
class ListenConfig:
    """
    Where C{bartos} listens (C{[listen]}, or C{[actix]} as in the original).

    @ivar workers: accepted for compatibility with C{[actix]}; unused.
    @ivar plain: C{False} turns the plain (non-TLS) listener off.
    @ivar tls: the TLS listener, if any.
    """

    ip: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    port: int = field(default=21526, metadata=_PORT)
    workers: int | None = field(default=None, metadata=_POSITIVE)
    plain: bool = True
    tls: TlsListenConfig | None = None


@dataclass(frozen=True, kw_only=True)
class MariaDBConfig:
    """
    The MariaDB store (C{[mariadb]}); without it C{bartos} uses SQLite.

    @ivar options: C{key=value} pairs separated by C{&}.
    """

    host: str = field(metadata=_NON_EMPTY)
    port: int = field(default=3306, metadata=_PORT)
    username: str = field(metadata=_NON_EMPTY)
    password: Secret
    database: str = field(metadata=_NON_EMPTY)
    options: str = field(default="", metadata=_OPTIONS)

    @property
    def options_dict(self) -> Mapping[str, str]:
        """
        @return: L{options} as a read-only mapping.
        """
        return MappingProxyType(_split_options(self.options))


@dataclass(frozen=True, kw_only=True)
class TokenConfig:
    """
    One bearer token the server accepts (an entry of C{[[tokens]]}).

    @ivar name: the client name the token stands for.
    @ivar role: what the holder may do.
    """

    name: str = field(metadata=_NAME)
    token: Secret
    role: Role


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """
    One schedule: what a worker runs, and when.

    @ivar worker: the worker's name (the C{<worker>} of
        C{[schedules.<worker>]}).
    @ivar cmds: the commands, run one after the other in one run.
    @ivar timeout: seconds before a run is killed; none when C{None}.
    @ivar overlap: what happens when a run is due while the last one runs.
    @ivar timezone: the zone of C{on_calendar}, else the server's.
    @ivar spec: C{on_calendar} parsed, with key C{worker/name}.
    """

    worker: str = field(metadata=_DERIVED)
    name: str = field(metadata=_NAME)
    on_calendar: str = field(metadata=_NON_EMPTY)
    cmds: tuple[str, ...] = field(metadata=_COMMANDS)
    timeout: float | None = field(default=None, metadata=_POSITIVE)
    overlap: Overlap = "allow"
    timezone: str | None = field(default=None, metadata=_ZONE)
    spec: CalendarSpec = field(metadata=_DERIVED, compare=False, repr=False)


Schedules = Mapping[str, tuple[ScheduleConfig, ...]]
"""Per worker name, its schedules in file order."""


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    """
    How long runs are kept (C{[retention]}); the clean-up runs daily.

    @ivar days: successful runs older than this are deleted.
    @ivar failed_days: failed runs older than this are deleted.
    @ivar max_runs: at most this many runs are kept per schedule.
    @ivar max_output_lines: at most this many output lines per run.
    @ivar hour: the UTC hour of the daily clean-up.
    """

    days: int = field(default=30, metadata=_POSITIVE)
    failed_days: int = field(default=90, metadata=_POSITIVE)
    max_runs: int | None = field(default=None, metadata=_POSITIVE)
    max_output_lines: int | None = field(default=None, metadata=_POSITIVE)
    hour: int = field(default=3, metadata=_HOUR)


@dataclass(frozen=True, kw_only=True)
class RunsConfig:
    """
    Run bookkeeping (C{[runs]}).

    @ivar lost_grace: seconds a vanished worker has to come back before
        its runs are marked lost.
    @ivar dispatch_retry: seconds between attempts to dispatch a run.
    """

    lost_grace: float = field(default=300.0, metadata=_POSITIVE)
    dispatch_retry: float = field(default=30.0, metadata=_POSITIVE)


@dataclass(frozen=True, kw_only=True)
class WebSocketConfig:
    """
    WebSocket limits and liveness (C{[websocket]}).

    @ivar ping_interval: seconds between pings.
    @ivar ping_timeout: seconds without a pong before a peer is dead.
    @ivar max_message_bytes: larger frames close the connection.
    """

    ping_interval: float = field(default=10.0, metadata=_POSITIVE)
    ping_timeout: float = field(default=30.0, metadata=_POSITIVE)
    max_message_bytes: int = field(default=1 * MiB, metadata=_POSITIVE)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """
    How records are written (C{[store]}).

    @ivar batch_size: records per transaction, at most.
    @ivar flush_interval: seconds a record may wait for its batch.
    @ivar max_pending: records held in memory while the database is down
        before back-pressure.
    """

    batch_size: int = field(default=500, metadata=_POSITIVE)
    flush_interval: float = field(default=0.2, metadata=_POSITIVE)
    max_pending: int = field(default=100000, metadata=_POSITIVE)


@dataclass(frozen=True, kw_only=True)
class LocalWorkerConfig:
    """
    A worker inside C{bartos} (C{[local_worker]}), with the runner keys in
    the same table.
    """

    name: str = field(metadata=_NAME)
    missed_tick: MissedTick = "Burst"
    spool_path: str | None = None
    spool_max_bytes: int = field(default=256 * MiB, metadata=_POSITIVE)
    runner: RunnerConfig = field(default_factory=RunnerConfig, metadata=_FLAT)

    def spool_file(self, environ: Mapping[str, str] | None = None) -> Path:
        """
        @param environ: the environment for the default data directory.
        @return: L{spool_path}, or C{local-worker.sqlite3} in the data
            directory of C{bartos}.
        """
        if self.spool_path is not None:
            return Path(self.spool_path)
        return default_data_dir("bartos", environ) / "local-worker.sqlite3"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """
    The configuration of C{bartos}.

    @ivar sqlite_path: the SQLite database, used when there is no
        C{[mariadb]} (C{[sqlite] path}).
    @ivar timezone: the zone of schedules that name none.
    @ivar api_key: a server-wide bearer key (any role).
    @ivar schedules: per worker name, its schedules in file order.
    @ivar source: the file read, or C{<defaults>}.
    @ivar warnings: what was ignored, to show before logging starts.
    """

    listen: ListenConfig = field(default_factory=ListenConfig)
    mariadb: MariaDBConfig | None = None
    sqlite_path: str = field(metadata=_DERIVED)
    timezone: str = field(default="UTC", metadata=_ZONE)
    api_key: Secret | None = None
    tokens: tuple[TokenConfig, ...] = ()
    schedules: Schedules = field(metadata=_DERIVED)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    local_worker: LocalWorkerConfig | None = None
    tracing: TracingConfig = field(default_factory=TracingConfig)
    source: str = field(metadata=_DERIVED)
    warnings: tuple[str, ...] = field(metadata=_DERIVED, compare=False)


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """
    The configuration of C{bartoc}.

    @ivar name: this worker's name, as in C{[schedules.<name>]} of the
        server; required.
    @ivar retry_count: consecutive failed connection attempts before the
        process exits non-zero; 0 retries forever.
    @ivar client_timeout: seconds to open a connection.
    @ivar missed_tick: what happens to slots missed while offline.
    @ivar runner: how commands run (its keys are top-level keys).
    @ivar spool_path: the spool file; see L{spool_file}.
    @ivar spool_max_bytes: the spool's size limit.
    """

    name: str = field(metadata=_NAME)
    retry_count: int = field(default=10, metadata=_NON_NEGATIVE)
    client_timeout: float = field(default=30.0, metadata=_POSITIVE)
    missed_tick: MissedTick = "Burst"
    bartos: EndpointConfig = field(default_factory=EndpointConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig, metadata=_FLAT)
    spool_path: str | None = None
    spool_max_bytes: int = field(default=256 * MiB, metadata=_POSITIVE)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    source: str = field(metadata=_DERIVED)
    warnings: tuple[str, ...] = field(metadata=_DERIVED, compare=False)

    def spool_file(self, environ: Mapping[str, str] | None = None) -> Path:
        """
        @param environ: the environment for the default data directory.
        @return: L{spool_path}, or C{bartoc.sqlite3} in the data directory.
        """
        if self.spool_path is not None:
            return Path(self.spool_path)
        return default_data_dir("bartoc", environ) / "bartoc.sqlite3"


@dataclass(frozen=True, kw_only=True)
class CliConfig:
    """
    The configuration of C{barto-cli}.

    @ivar name: the client name sent to the server.
    """

    name: str = field(default="barto-cli", metadata=_NAME)
    bartos: EndpointConfig = field(default_factory=EndpointConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    source: str = field(metadata=_DERIVED)
    warnings: tuple[str, ...] = field(metadata=_DERIVED, compare=False)


def parse_directives(text: str) -> tuple[tuple[str, str], ...]:
    """
    Split tracing directives into C{(namespace, level)} pairs.

    C{"info,barto.server=debug"} gives C{(("", "info"), ("barto.server",
    "debug"))}: an empty namespace is the default level. Rust-style
    C{a::b} targets become C{a.b}.

    @param text: C{namespace=level} or C{level} items separated by commas.
    @raise ValueError: for an item that is not one of those.
    @return: the pairs, in order, levels lower-cased.
    """
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        namespace, equals, level = item.rpartition("=")
        namespace = namespace.strip().replace("::", ".")
        level = level.strip().lower()
        if equals and not namespace:
            raise ValueError(f"{item!r} has no namespace before '='")
        if level not in DIRECTIVE_LEVELS:
            expected = f"expected one of {_LEVEL_NAMES}"
            raise ValueError(f"{item!r} has no level ({expected})")
        pairs.append((namespace, level))
    return tuple(pairs)


def _split_options(text: str) -> dict[str, str]:
    options = {}
    for item in text.split("&"):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def _check_program(program: str) -> None:
    if program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}")


def _xdg_dir(
    variable: str,
    fallback: str,
    environ: Mapping[str, str] | None,
) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get(variable, "")
    if configured and os.path.isabs(configured):
        return Path(configured)
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / fallback


def default_config_path(
    program: str,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """
    @param program: C{bartos}, C{bartoc} or C{barto-cli}.
    @param environ: the environment; C{os.environ} when C{None}.
    @return: C{$XDG_CONFIG_HOME/<program>/<program>.toml}, with
        C{~/.config} when that variable is unset or relative.
    """
    _check_program(program)
    base = _xdg_dir("XDG_CONFIG_HOME", ".config", environ)
    return base / program / f"{program}.toml"


def default_data_dir(
    program: str,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """
    @param program: C{bartos}, C{bartoc} or C{barto-cli}.
    @param environ: the environment; C{os.environ} when C{None}.
    @return: C{$XDG_DATA_HOME/<program>/}, with C{~/.local/share} when
        that variable is unset or relative.
    """
    _check_program(program)
    return _xdg_dir("XDG_DATA_HOME", ".local/share", environ) / program


# Reading: the layers are merged into one tree of plain values, each leaf
# remembering its source, then the tree is read into the dataclasses.


@dataclass
class _Reader:
    """
    What reading one config needs: where each value came from, and the
    warnings so far.
    """

    label: str
    sources: dict[_Path, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def where(self, path: _Path) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.sources:
                return self.sources[path[:end]]
        return self.label

    def error(self, path: _Path, message: str) -> ConfigError:
        where = self.where(path)
        return ConfigError(_one_line(f"{where}: {_dotted(path)}: {message}"))

    def warn(self, path: _Path, message: str) -> None:
        source = self.where(path)
        key = _dotted(path)
        self.warnings.append(_one_line(f"{source}: {key}: {message}"))
        log.warn(
            "{source}: {key}: {message}",
            source=source,
            key=key,
            message=message,
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dotted(path: _Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            part = json.dumps(part)
        text += f".{part}" if text else part
    return text or "(top level)"


def _show(value: object) -> str:
    if isinstance(value, Secret):
        return "<secret>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return shown if len(shown) <= 80 else shown[:76] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _convert(value: Any, hint: Any, path: _Path, reader: _Reader) -> Any:
    """
    Turn one raw value into the declared type C{hint}.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(value, inner, path, reader)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise reader.error(path, f"{_show(value)} is not a table")
        return _build(typing.cast(type[Any], hint), value, path, reader)
    if origin is tuple:
        return _convert_tuple(value, args[0], path, reader)
    if origin is Mapping:
        return _convert_mapping(value, path, reader)
    if origin is Literal:
        return _convert_choice(value, args, path, reader)
    return _convert_scalar(value, hint, path, reader)


def _convert_scalar(
    value: Any,
    hint: Any,
    path: _Path,
    reader: _Reader,
) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if hint is Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise reader.error(path, "<secret> is not a string")
        return Secret(value)
    shown = _show(value)
    if hint is str:
        if not isinstance(value, str):
            raise reader.error(path, f"{shown} is not a string")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        problem = "is not a boolean (expected true or false)"
        raise reader.error(path, f"{shown} {problem}")
    if isinstance(value, bool):
        raise reader.error(path, f"{shown} is not a number")
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise reader.error(path, f"{shown} is not an integer")
        try:
            return int(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise reader.error(path, f"{shown} is not an integer") from None
    if hint is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise reader.error(path, f"{shown} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise reader.error(path, f"{shown} is not a finite number")
        return number
    raise TypeError(f"no conversion to {hint!r}")  # pragma: no cover


def _convert_tuple(value: Any, item: Any, path: _Path, reader: _Reader) -> Any:
    if not isinstance(value, list):
        raise reader.error(path, f"{_show(value)} is not an array")
    converted = []
    for index, each in enumerate(value):
        converted.append(_convert(each, item, (*path, index), reader))
    return tuple(converted)


def _convert_mapping(value: Any, path: _Path, reader: _Reader) -> Any:
    if not isinstance(value, dict):
        raise reader.error(path, f"{_show(value)} is not a table")
    for key, each in value.items():
        if not isinstance(each, str):
            raise reader.error((*path, key), f"{_show(each)} is not a string")
    return MappingProxyType(dict(value))


def _convert_choice(
    value: Any, choices: tuple[str, ...], path: _Path, reader: _Reader
) -> str:
    if isinstance(value, str):
        for choice in choices:
            if value.strip().lower() == choice.lower():
                return choice
    expected = ", ".join(choices)
    raise reader.error(
        path, f"{_show(value)} is not valid (expected one of {expected})"
    )


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _read_fields(
    cls: type[Any], table: Mapping[str, Any], path: _Path, reader: _Reader
) -> tuple[dict[str, Any], set[str]]:
    """
    Read the non-derived fields of C{cls} from C{table}.

    @return: the keyword arguments read, and the table keys used.
    """
    hints = _hints(cls)
    values: dict[str, Any] = {}
    used: set[str] = set()
    for each in dataclasses.fields(cls):
        if each.metadata.get("derived"):
            continue
        hint = hints[each.name]
        if each.metadata.get("flatten"):
            inner, inner_used = _read_fields(hint, table, path, reader)
            values[each.name] = hint(**inner)
            used |= inner_used
            continue
        used.add(each.name)
        key_path = (*path, each.name)
        if each.name not in table:
            required = (
                each.default is dataclasses.MISSING
                and each.default_factory is dataclasses.MISSING
            )
            if required:
                raise reader.error(key_path, "is missing (required)")
            continue
        value = _convert(table[each.name], hint, key_path, reader)
        _run_check(each, value, key_path, reader)
        values[each.name] = value
    return values, used


def _run_check(
    each: dataclasses.Field[Any], value: Any, path: _Path, reader: _Reader
) -> None:
    check = each.metadata.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem is not None:
        shown = "<secret>" if isinstance(value, Secret) else _show(value)
        if isinstance(value, tuple):
            shown = "an array" if value else "[]"
        raise reader.error(path, f"{shown} {problem}")


def _build(
    cls: type[_T],
    table: Mapping[str, Any],
    path: _Path,
    reader: _Reader,
) -> _T:
    """
    Read C{cls} from C{table}, warn about keys it does not know.
    """
    values, used = _read_fields(cls, table, path, reader)
    _warn_unknown(table, used, path, reader)
    return cls(**values)


_LEGACY_KEYS = {
    "hmac_key": "message signing is replaced by TLS and [[tokens]]",
    "signing_key": "message signing is replaced by TLS and [[tokens]]",
    "server_public_key": "message signing is replaced by TLS and [[tokens]]",
    "replay_window_secs": "message signing is replaced by TLS and [[tokens]]",
    "output_table": "barto has its own schema",
    "status_table": "barto has its own schema",
}


def _warn_unknown(
    table: Mapping[str, Any], used: set[str], path: _Path, reader: _Reader
) -> None:
    for key in table:
        if key in used:
            continue
        if key in _LEGACY_KEYS:
            reason = _LEGACY_KEYS[key]
            reader.warn((*path, key), f"is not supported, ignored ({reason})")
        else:
            reader.warn((*path, key), "is not a known key, ignored")


# Layers: the file, the environment and the flags, each as a tree.


def _read_file(path: Path, reader: _Reader) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if found is None:
            message = f"{path}: invalid TOML: {message}"
            raise ConfigError(_one_line(message)) from None
        message = message[: found.start()].strip()
        line, column = found.groups()
        where = f"{path}: line {line}, column {column}"
        message = f"{where}: invalid TOML: {message}"
        raise ConfigError(_one_line(message)) from None


def _mapping_keys(cls: type[Any], path: _Path = ()) -> Iterator[_Path]:
    """
    Yield the key paths of every mapping field of C{cls}: below them,
    environment variable names keep their case.
    """
    hints = _hints(cls)
    for each in dataclasses.fields(cls):
        hint = hints[each.name]
        nested = [hint, *typing.get_args(hint)]
        if typing.get_origin(hint) is Mapping:
            yield (*path, each.name)
        for inner in nested:
            if dataclasses.is_dataclass(inner) and isinstance(inner, type):
                flat = each.metadata.get("flatten")
                inner_path = path if flat else (*path, each.name)
                yield from _mapping_keys(inner, inner_path)


def _set(
    tree: dict[str, Any], path: tuple[str, ...], value: object, origin: str
) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(path[: depth + 1])
            raise ConfigError(
                f"{origin}: {prefix} is set both as a value and as a table"
            )
        node = child
    if isinstance(node.get(path[-1]), dict):
        raise ConfigError(
            f"{origin}: {'.'.join(path)} is set both as a value and as a table"
        )
    node[path[-1]] = value


def _environment_layer(
    program: str, cls: type[Any], environ: Mapping[str, str], reader: _Reader
) -> dict[str, Any]:
    prefix = _ENV_PREFIXES[program]
    keep_case = set(_mapping_keys(cls))
    tree: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.upper().startswith(prefix):
            continue
        parts = name[len(prefix) :].split("__")
        origin = f"environment variable {name}"
        if not all(parts):
            reader.warnings.append(f"{origin}: not a key name, ignored")
            log.warn("{origin}: not a key name, ignored", origin=origin)
            continue
        path: list[str] = []
        for part in parts:
            path.append(part if tuple(path) in keep_case else part.lower())
        _set(tree, tuple(path), environ[name], origin)
        reader.sources[tuple(path)] = origin
    return tree


def _overrides_layer(
    overrides: Mapping[str, object], reader: _Reader
) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        path = tuple(key.split("."))
        _set(tree, path, value, "command line")
        reader.sources[path] = "command line"
    return tree


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _alias_listen(
    layer: dict[str, Any], origin: str, reader: _Reader
) -> dict[str, Any]:
    """
    Rename C{[actix]} to C{[listen]} in one layer (a file, the environment
    or the flags).
    """
    if "actix" not in layer:
        return layer
    if "listen" in layer:
        problem = "both [actix] and [listen] are set (expected one)"
        raise ConfigError(f"{origin}: actix: {problem}")
    renamed = {}
    for key, value in layer.items():
        renamed["listen" if key == "actix" else key] = value
    for path in list(reader.sources):
        if path[:1] == ("actix",):
            reader.sources[("listen", *path[1:])] = reader.sources.pop(path)
    return renamed


def _layers(
    program: str,
    cls: type[Any],
    path: str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> tuple[dict[str, Any], _Reader, str]:
    """
    Read and merge the layers of one program's config.

    @return: the merged tree, the reader, and the source (a file path or
        C{<defaults>}).
    """
    environ = os.environ if environ is None else environ
    if path is None:
        file = default_config_path(program, environ)
    else:
        file = Path(path)
    if path is None and not file.exists():
        source = "<defaults>"
        reader = _Reader(label=f"{file} (not found)")
        tree: dict[str, Any] = {}
    else:
        source = str(file)
        reader = _Reader(label=source)
        tree = _read_file(file, reader)
        if program == "bartos":
            tree = _alias_listen(tree, source, reader)

    env = _environment_layer(program, cls, environ, reader)
    flags = _overrides_layer(overrides or {}, reader)
    if program == "bartos":
        env = _alias_listen(env, "environment (BARTOS_*)", reader)
        flags = _alias_listen(flags, "command line", reader)
    _merge(tree, env)
    _merge(tree, flags)
    return tree, reader, source


def _table(
    tree: Mapping[str, Any],
    key: str,
    reader: _Reader,
) -> dict[str, Any]:
    value = tree.get(key, {})
    if not isinstance(value, dict):
        raise reader.error((key,), f"{_show(value)} is not a table")
    return value


def _read_schedules(
    tree: Mapping[str, Any], timezone: str, reader: _Reader
) -> Schedules:
    """
    Read C{[schedules.<worker>] schedules = [...]}, parsing each calendar.
    """
    schedules: dict[str, tuple[ScheduleConfig, ...]] = {}
    for worker, table in _table(tree, "schedules", reader).items():
        path: _Path = ("schedules", worker)
        problem = _name(worker)
        if problem is not None:
            raise reader.error(path, f"{_show(worker)} {problem}")
        if not isinstance(table, dict):
            raise reader.error(path, f"{_show(table)} is not a table")
        _warn_unknown(table, {"schedules"}, path, reader)
        entries = table.get("schedules", [])
        if not isinstance(entries, list):
            raise reader.error(
                (*path, "schedules"), f"{_show(entries)} is not an array"
            )
        schedules[worker] = _read_worker_schedules(
            worker,
            entries,
            timezone,
            reader,
        )
    return MappingProxyType(schedules)


def _read_worker_schedules(
    worker: str, entries: list[Any], timezone: str, reader: _Reader
) -> tuple[ScheduleConfig, ...]:
    found: dict[str, int] = {}
    schedules = []
    for index, entry in enumerate(entries):
        path: _Path = ("schedules", worker, "schedules", index)
        if not isinstance(entry, dict):
            raise reader.error(path, f"{_show(entry)} is not a table")
        values, used = _read_fields(ScheduleConfig, entry, path, reader)
        _warn_unknown(entry, used, path, reader)
        name = values["name"]
        if name in found:
            raise reader.error(
                (*path, "name"),
                f"{_show(name)} is already the name of"
                f" schedules[{found[name]}]"
                " (expected names unique per worker)",
            )
        found[name] = index
        zone = zoneinfo.ZoneInfo(values.get("timezone") or timezone)
        expression = values["on_calendar"]
        try:
            spec = parse(expression, key=f"{worker}/{name}", default_zone=zone)
        except CalendarError as e:
            raise reader.error(
                (*path, "on_calendar"),
                f"{_show(expression)} is not a calendar expression ({e})",
            ) from None
        schedules.append(ScheduleConfig(worker=worker, spec=spec, **values))
    return tuple(schedules)


def _read_sqlite_path(
    tree: Mapping[str, Any], environ: Mapping[str, str] | None, reader: _Reader
) -> str:
    table = _table(tree, "sqlite", reader)
    _warn_unknown(table, {"path"}, ("sqlite",), reader)
    if "path" not in table:
        return str(default_data_dir("bartos", environ) / "bartos.sqlite3")
    path = _convert(table["path"], str, ("sqlite", "path"), reader)
    problem = _non_empty(path)
    if problem is not None:
        raise reader.error(("sqlite", "path"), f"{_show(path)} {problem}")
    return typing.cast(str, path)


def _check_server(config: ServerConfig, reader: _Reader) -> None:
    """
    Checks across keys of the server config.
    """
    if not config.listen.plain and config.listen.tls is None:
        expected = "expected true or a [listen.tls]"
        raise reader.error(
            ("listen", "plain"),
            f"false turns off the only listener ({expected})",
        )
    seen: dict[Secret, int] = {}
    for index, token in enumerate(config.tokens):
        if token.token in seen:
            raise reader.error(
                ("tokens", index, "token"),
                f"<secret> is already the token of tokens[{seen[token.token]}]"
                " (expected unique tokens)",
            )
        seen[token.token] = index


def _check_endpoint(endpoint: EndpointConfig, reader: _Reader) -> None:
    if (endpoint.client_cert is None) != (endpoint.client_key is None):
        both = ("client_cert", "client_key")
        missing = both[0] if endpoint.client_cert is None else both[1]
        raise reader.error(
            ("bartos", missing),
            "is missing (expected client_cert and client_key together)",
        )


_Client = TypeVar("_Client", WorkerConfig, CliConfig)


def _load_client(
    program: str,
    cls: type[_Client],
    path: str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> _Client:
    """
    Load the configuration of a program that connects to C{bartos}: the
    fields of C{cls}, unknown keys warned about, C{[bartos]} checked.
    """
    tree, reader, source = _layers(program, cls, path, environ, overrides)
    values, used = _read_fields(cls, tree, (), reader)
    _warn_unknown(tree, used, (), reader)
    warnings = tuple(reader.warnings)
    config = cls(**values, source=source, warnings=warnings)
    _check_endpoint(config.bartos, reader)
    return config


def load_server_config(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServerConfig:
    """
    Load the configuration of C{bartos}.

    @param path: the file; the default file when C{None}, which may be
        missing (then only defaults and the environment count).
    @param environ: the environment; C{os.environ} when C{None}.
    @param overrides: dotted keys from the command line, like
        C{{"listen.port": 8080}}; C{None} values are skipped.
    @raise ConfigError: for anything that cannot be used.
    """
    tree, reader, source = _layers(
        "bartos",
        ServerConfig,
        path,
        environ,
        overrides,
    )
    values, used = _read_fields(ServerConfig, tree, (), reader)
    _warn_unknown(tree, used | {"sqlite", "schedules"}, (), reader)
    timezone = values.get("timezone", "UTC")
    derived: dict[str, Any] = {
        "sqlite_path": _read_sqlite_path(tree, environ, reader),
        "schedules": _read_schedules(tree, timezone, reader),
        "source": source,
    }
    config = ServerConfig(**values, **derived, warnings=tuple(reader.warnings))
    _check_server(config, reader)
    return config


def load_worker_config(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> WorkerConfig:
    """
    Load the configuration of C{bartoc}.

    @param path: the file; the default file when C{None}, which may be
        missing (then C{BARTOC_NAME} must name the worker).
    @param environ: the environment; C{os.environ} when C{None}.
    @param overrides: dotted keys from the command line, like
        C{{"spool_path": "/var/lib/bartoc/spool"}}; C{None} values are
        skipped.
    @raise ConfigError: for anything that cannot be used.
    """
    return _load_client("bartoc", WorkerConfig, path, environ, overrides)


def load_cli_config(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> CliConfig:
    """
    Load the configuration of C{barto-cli}.

    @param path: the file; the default file when C{None}, which may be
        missing.
    @param environ: the environment; C{os.environ} when C{None}.
    @param overrides: dotted keys from the command line; C{None} values
        are skipped.
    @raise ConfigError: for anything that cannot be used.
    """
    return _load_client("barto-cli", CliConfig, path, environ, overrides)
