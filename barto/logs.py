"""
Log observers for the barto programs, built from C{[tracing.*]} and flags.

A program asks L{build_observer} for one observer that writes to standard
output (C{-e}), to a file (C{-t PATH}), or to standard error when neither
is asked for. Each destination has its own level, filter and fields. The
CLI starts logging with L{install}; the twistd plugins hand the observer to
twistd with L{claim_twistd_logging} and L{set_twistd_observer}, because
twistd starts logging itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, NoReturn

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
)
from twisted.python import usage
from zope.interface import implementer

from barto.config import (
    ConfigError,
    LayerConfig,
    TracingConfig,
    parse_directives,
)

if TYPE_CHECKING:
    from twisted.python.usage import Options

__all__ = [
    "TWISTD_LOGGER",
    "build_observer",
    "claim_twistd_logging",
    "install",
    "level_for",
    "set_twistd_observer",
    "twistd_observer",
]

_LEVELS = (
    LogLevel.debug,
    LogLevel.info,
    LogLevel.warn,
    LogLevel.error,
    LogLevel.critical,
)

_BY_NAME = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

TWISTD_LOGGER = "barto.logs.twistd_observer"
"""The name twistd's C{--logger} option is set to by the plugins."""


def level_for(
    verbose: int,
    quiet: int,
    base: LogLevel = LogLevel.info,
) -> LogLevel:
    """
    The level that C{-v} and C{-q} counts select.

    @param verbose: steps down from C{base}, towards debug.
    @param quiet: steps up from C{base}, towards critical.
    @param base: the level with neither flag.
    @return: the level, clamped to debug..critical.
    """
    index = _LEVELS.index(base) - verbose + quiet
    return _LEVELS[max(0, min(index, len(_LEVELS) - 1))]


@implementer(ILogFilterPredicate)
class _Silenced:
    """
    Drop events from namespaces whose directive level is C{off}.
    """

    def __init__(self, namespaces: Iterable[str]) -> None:
        self._namespaces = tuple(namespaces)

    def __call__(self, event: LogEvent) -> PredicateResult:
        namespace = event.get("log_namespace") or ""
        for silenced in self._namespaces:
            if namespace == silenced or namespace.startswith(silenced + "."):
                return PredicateResult.no
        return PredicateResult.maybe


def _predicates(
    layer: LayerConfig, verbose: int, quiet: int, key: str
) -> list[ILogFilterPredicate]:
    """
    The filters of one destination: its directives, shifted by the flags.

    A bare level in the directives replaces the base level (info) that
    C{-v} and C{-q} move from; a namespace's level is kept as written.
    """
    try:
        directives = parse_directives(layer.directives)
    except ValueError as e:
        raise ConfigError(f"{key}.directives: {e}") from None

    base = LogLevel.info
    namespaces: dict[str, LogLevel] = {}
    silenced: list[str] = []
    for namespace, name in directives:
        if name == "off":
            silenced.append(namespace)
        elif namespace:
            namespaces[namespace] = _BY_NAME[name]
        else:
            base = _BY_NAME[name]

    levels = LogLevelFilterPredicate(level_for(verbose, quiet, base))
    for namespace, level in namespaces.items():
        levels.setLogLevelForNamespace(namespace, level)
    predicates: list[ILogFilterPredicate] = [levels]
    if silenced:
        predicates.insert(0, _Silenced(silenced))
    return predicates


class _Formatter:
    """
    Format an event as one line (plus any traceback) with the fields a
    L{LayerConfig} asks for.
    """

    def __init__(self, layer: LayerConfig) -> None:
        self._layer = layer

    def __call__(self, event: LogEvent) -> str | None:
        text = eventAsText(
            event,
            includeTraceback=True,
            includeTimestamp=False,
            includeSystem=False,
        )
        if not text:
            return None
        return " ".join(self._prefix(event)) + " " + text + "\n"

    def _prefix(self, event: LogEvent) -> list[str]:
        """
        The fields before the message: time, level, thread, namespace.
        """
        when = datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
        stamp = when.isoformat(timespec="milliseconds")
        fields = [stamp.replace("+00:00", "Z")]
        layer = self._layer
        if layer.with_level:
            level = event.get("log_level")
            name = level.name.upper() if level is not None else "-"
            fields.append(f"{name:<8}")
        # FIXME: with_line_number ignored: events carry no source line
        if layer.with_thread_names:
            fields.append(threading.current_thread().name)
        if layer.with_thread_ids:
            fields.append(f"#{threading.get_ident()}")
        if layer.with_target:
            fields.append(f"{event.get('log_namespace') or '-'}:")
        return fields


def _destination(
    stream: IO[str], layer: LayerConfig, verbose: int, quiet: int, key: str
) -> ILogObserver:
    writer = FileLogObserver(stream, _Formatter(layer))
    predicates = _predicates(layer, verbose, quiet, key)
    return FilteringLogObserver(writer, predicates)


def build_observer(
    tracing: TracingConfig,
    *,
    verbose: int,
    quiet: int,
    stdout: bool,
    path: str | None,
) -> ILogObserver:
    """
    Build the observer a program logs to.

    Standard output (C{stdout}) uses C{[tracing.stdout]} at the level of
    the flags. The file (C{path}) uses C{[tracing.file.layer]} at the
    level of the flags plus C{[tracing.file] verbose} and C{quiet}. With
    neither, the log goes to standard error as standard output would.
    The streams are taken now, so that twistd redirecting C{sys.stdout}
    into the log later cannot make a loop.

    @param tracing: the C{[tracing]} config.
    @param verbose: how many C{-v} were given.
    @param quiet: how many C{-q} were given.
    @param stdout: whether C{-e} was given.
    @param path: the log file of C{-t}, appended to; C{None} for none.
    @raise ConfigError: for bad directives or a file that cannot be opened.
    @return: one observer that feeds every destination.
    """
    observers = []
    if stdout or path is None:
        stream = sys.stdout if stdout else sys.stderr
        observers.append(
            _destination(
                stream,
                tracing.stdout,
                verbose,
                quiet,
                "tracing.stdout",
            )
        )
    if path is not None:
        try:
            # FIXME: not reopened on a signal; logrotate needs copytruncate
            stream = open(path, "a", encoding="utf-8", buffering=1)
        except OSError as e:
            raise ConfigError(
                f"{path}: cannot open the log file: {e.strerror or e}"
            ) from None
        observers.append(
            _destination(
                stream,
                tracing.file.layer,
                verbose + tracing.file.verbose,
                quiet + tracing.file.quiet,
                "tracing.file.layer",
            )
        )
    return LogPublisher(*observers)


def install(observer: ILogObserver) -> None:
    """
    Start the global log with C{observer}, for programs not run by twistd.

    Buffered events from before (such as config warnings) are replayed to
    it. Standard output and error are left alone.

    @param observer: usually from L{build_observer}.
    """
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


_twistd: list[ILogObserver] = []


class ProgramOptions(usage.Options):
    """
    The flags C{twistd bartos} and C{twistd bartoc} share with the
    original programs: C{-v}/C{-q} (repeatable), C{-e}, C{-c}, C{-t}.

    Subclasses add their own flags and load their config in
    C{postOptions}, calling L{fail} on a L{ConfigError}.

    @cvar program: the program's name, for error messages.
    """

    program = "barto"

    optFlags: list[list[str | None]] = [
        ["enable-std-output", "e", "Also log to standard output."]
    ]
    optParameters: list[list[str | None]] = [
        [
            "config-absolute-path",
            "c",
            None,
            "The config file [default: $XDG_CONFIG_HOME/<program>/<program>.toml].",
        ],
        ["tracing-absolute-path", "t", None, "Append the log to this file."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["verbose"] = 0
        self["quiet"] = 0

    def opt_verbose(self) -> None:
        """
        Log more (repeatable).
        """
        self["verbose"] += 1

    opt_v = opt_verbose

    def opt_quiet(self) -> None:
        """
        Log less (repeatable).
        """
        self["quiet"] += 1

    opt_q = opt_quiet

    def fail(self, message: str, status: int) -> NoReturn:
        """
        L{exit_with} this program's name.
        """
        exit_with(self.program, message, status)


def exit_with(program: str, message: str, status: int) -> NoReturn:
    """
    Print C{program: message} on standard error and exit with C{status}.

    Programs use it for configuration errors (status 2) rather than a
    C{UsageError}, which twistd turns into status 1 and the usage text.
    """
    sys.stderr.write(f"{program}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def claim_twistd_logging(options: Options) -> None:
    """
    Make twistd log through barto's observer instead of its own.

    Call it from a plugin's C{Options.postOptions}. twistd reads its
    C{--logger} option (the name of an observer factory) before it calls
    C{makeService} and calls the factory after, so this sets that option
    to L{TWISTD_LOGGER} unless the user gave one; C{makeService} then
    hands over the observer with L{set_twistd_observer}. Does nothing
    when the options have no twistd parent (as in tests).

    @param options: the plugin's parsed options.
    """
    parent = getattr(options, "parent", None)
    if parent is not None and parent.get("logger") is None:
        parent["logger"] = TWISTD_LOGGER


def set_twistd_observer(observer: ILogObserver) -> None:
    """
    Give twistd the observer to start logging with.

    @param observer: usually from L{build_observer}.
    """
    _twistd[:] = [observer]


def twistd_observer() -> ILogObserver:
    """
    The observer factory named by L{TWISTD_LOGGER}, called by twistd.

    @return: the observer from L{set_twistd_observer}, or one that logs at
        info level to standard error if none was set.
    """
    if _twistd:
        return _twistd[0]
    return build_observer(
        TracingConfig(),
        verbose=0,
        quiet=0,
        stdout=False,
        path=None,
    )
