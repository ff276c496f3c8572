"""
Tests for L{barto.logs}: levels, directives, fields, destinations, twistd.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.app import AppLogger
from twisted.application.service import IServiceMaker
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.usage import Options
from twisted.scripts.twistd import (  # type: ignore[attr-defined]
    ServerOptions,
)

from barto import logs
from barto.config import (
    ConfigError,
    FileTracingConfig,
    LayerConfig,
    MariaDBConfig,
    Secret,
    TracingConfig,
)

BARE = LayerConfig(with_target=False, with_level=False)


def observe(
    layer: LayerConfig = BARE, verbose: int = 0, quiet: int = 0
) -> tuple[ILogObserver, io.StringIO]:
    """
    An observer to a fresh standard output with the given settings.
    """
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", stream)
        observer = logs.build_observer(
            TracingConfig(stdout=layer),
            verbose=verbose,
            quiet=quiet,
            stdout=True,
            path=None,
        )
    return observer, stream


def messages(stream: io.StringIO) -> list[str]:
    """
    The logged lines without their timestamps.
    """
    return [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]


def emit_all(observer: ILogObserver, namespace: str = "barto.test") -> None:
    """
    Log one event at each level.
    """
    log = Logger(namespace=namespace, observer=observer)
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    log.critical("c")


class TestLevels:
    """
    -v and -q move the level from info.
    """

    @pytest.mark.parametrize(
        ("verbose", "quiet", "level"),
        [
            (0, 0, LogLevel.info),
            (1, 0, LogLevel.debug),
            (5, 0, LogLevel.debug),
            (0, 1, LogLevel.warn),
            (0, 2, LogLevel.error),
            (0, 9, LogLevel.critical),
            (2, 1, LogLevel.debug),
        ],
    )
    def test_level_for(
        self,
        verbose: int,
        quiet: int,
        level: LogLevel,
    ) -> None:
        """
        Each -v is one step down, each -q one step up, clamped.
        """
        assert logs.level_for(verbose, quiet) is level

    @pytest.mark.parametrize(
        ("verbose", "quiet", "shown"),
        [
            (0, 0, ["i", "w", "e", "c"]),
            (1, 0, ["d", "i", "w", "e", "c"]),
            (0, 2, ["e", "c"]),
        ],
    )
    def test_filtered(
        self,
        verbose: int,
        quiet: int,
        shown: list[str],
    ) -> None:
        """
        Events below the level are dropped.
        """
        observer, stream = observe(verbose=verbose, quiet=quiet)
        emit_all(observer)
        assert messages(stream) == shown

    def test_file_adds_its_counts(self, tmp_path: Path) -> None:
        """
        [tracing.file] verbose and quiet add to the flags for the file.
        """
        path = tmp_path / "b.log"
        tracing = TracingConfig(file=FileTracingConfig(verbose=3, quiet=1, layer=BARE))
        observer = logs.build_observer(
            tracing, verbose=0, quiet=1, stdout=False, path=str(path)
        )
        emit_all(observer)
        lines = path.read_text().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            "d",
            "i",
            "w",
            "e",
            "c",
        ]


class TestDirectives:
    """
    Directives set levels per namespace.
    """

    def test_namespaces(self) -> None:
        """
        A namespace's level covers its children; others keep the default.
        """
        layer = LayerConfig(
            with_level=False,
            directives="barto.server=error,actix_server=error,barto.w=debug",
        )
        observer, stream = observe(layer)
        Logger("barto.server.store", observer=observer).warn("hidden")
        Logger("barto.server.store", observer=observer).error("shown")
        Logger("barto.w.runner", observer=observer).debug("deep")
        Logger("barto.cli", observer=observer).debug("not this")
        Logger("barto.cli", observer=observer).info("this")
        assert messages(stream) == [
            "barto.server.store: shown",
            "barto.w.runner: deep",
            "barto.cli: this",
        ]

    def test_bare_level_is_the_base(self) -> None:
        """
        A bare level replaces info as the base that -v and -q move from.
        """
        observer, stream = observe(LayerConfig(directives="error"), verbose=1)
        emit_all(observer)
        assert [line.split()[0] for line in messages(stream)] == [
            "WARN",
            "ERROR",
            "CRITICAL",
        ]

    def test_off(self) -> None:
        """
        "off" silences a namespace and its children entirely.
        """
        observer, stream = observe(
            LayerConfig(with_level=False, directives="noisy=off")
        )
        Logger("noisy.child", observer=observer).critical("no")
        Logger("noisier", observer=observer).info("yes")
        assert messages(stream) == ["noisier: yes"]

    def test_bad_directive(self) -> None:
        """
        A bad directive is a one-line config error.
        """
        with pytest.raises(ConfigError) as caught:
            observe(LayerConfig(directives="barto=loud"))
        assert str(caught.value) == (
            "tracing.stdout.directives: 'barto=loud' has no level"
            " (expected one of trace, debug, info, warn, error, critical,"
            " off)"
        )


class TestFormat:
    """
    Each line shows what its layer asks for.
    """

    def test_default_fields(self) -> None:
        """
        By default: UTC time, level and namespace.
        """
        observer, stream = observe(LayerConfig())
        Logger("barto.x", observer=observer).info("run {run} due", run=7)
        line = stream.getvalue()
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO     "
            r"barto\.x: run 7 due\n",
            line,
        )

    def test_threads(self) -> None:
        """
        Thread names and ids are shown when asked for.
        """
        layer = LayerConfig(
            with_target=False,
            with_level=False,
            with_thread_names=True,
            with_thread_ids=True,
        )
        observer, stream = observe(layer)
        Logger(observer=observer).info("hi")
        thread = threading.current_thread()
        assert messages(stream) == [f"{thread.name} #{thread.ident} hi"]

    def test_failure(self) -> None:
        """
        A logged failure comes with its traceback.
        """
        observer, stream = observe()
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            Logger(observer=observer).failure("tick failed", Failure())
        text = stream.getvalue()
        assert "tick failed" in text
        assert "ZeroDivisionError" in text

    def test_secrets_not_logged(self) -> None:
        """
        Logging a config or a secret shows no secret value.
        """
        observer, stream = observe()
        mariadb = MariaDBConfig(
            host="h", username="u", password=Secret("PW-9"), database="d"
        )
        log = Logger(observer=observer)
        log.info("config {config}", config=mariadb)
        log.info("config {config!r}", config=mariadb)
        log.info("password {p}", p=mariadb.password)
        log.info("{config.password}", config=mariadb)
        text = stream.getvalue()
        assert "PW-9" not in text
        assert text.count("Secret('********')") == 4


class TestDestinations:
    """
    Where the log goes.
    """

    def test_file_and_stdout(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        With -e and -t both destinations get the events, each its way.
        """
        stdout = io.StringIO()
        monkeypatch.setattr("sys.stdout", stdout)
        path = tmp_path / "b.log"
        tracing = TracingConfig(
            stdout=LayerConfig(with_level=False),
            file=FileTracingConfig(layer=BARE),
        )
        observer = logs.build_observer(
            tracing, verbose=0, quiet=0, stdout=True, path=str(path)
        )
        Logger("ns", observer=observer).info("both")
        assert messages(stdout) == ["ns: both"]
        assert path.read_text().endswith(" both\n")

    def test_stderr_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        Without -e or -t the log goes to standard error.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        monkeypatch.setattr("sys.stdout", stdout)
        monkeypatch.setattr("sys.stderr", stderr)
        observer = logs.build_observer(
            TracingConfig(), verbose=0, quiet=0, stdout=False, path=None
        )
        Logger(observer=observer).info("here")
        assert "here" in stderr.getvalue()
        assert stdout.getvalue() == ""

    def test_unwritable_file(self, tmp_path: Path) -> None:
        """
        A log file that cannot be opened is a config error.
        """
        path = tmp_path / "missing" / "b.log"
        with pytest.raises(ConfigError, match=f"^{path}: cannot open"):
            logs.build_observer(
                TracingConfig(), verbose=0, quiet=0, stdout=False, path=str(path)
            )

    def test_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        install begins global logging without redirecting standard IO.
        """
        calls: list[tuple[Any, ...]] = []

        class Beginner:
            def beginLoggingTo(self, observers: Any, **kwargs: Any) -> None:
                calls.append((observers, kwargs))

        observer, _ = observe()
        monkeypatch.setattr(logs, "globalLogBeginner", Beginner())
        logs.install(observer)
        assert calls == [([observer], {"redirectStandardIO": False})]


class FakeOptions(Options):
    """
    A plugin's options that claim twistd's logging.
    """

    def postOptions(self) -> None:
        """
        Claim the log, as the bartos and bartoc plugins do.
        """
        logs.claim_twistd_logging(self)


class FakePlugin:
    """
    A stand-in for a twistd plugin's service maker.
    """

    tapname = "fake"
    description = "a plugin for tests"
    options = FakeOptions


class PluginServerOptions(ServerOptions):
    """
    twistd's options, knowing only the fake plugin.
    """

    def _getPlugins(  # type: ignore[override]
        self, interface: type[Any]
    ) -> list[Any]:
        assert interface is IServiceMaker
        return [FakePlugin()]


@pytest.fixture
def twistd_slot(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """
    An empty slot for the observer handed to twistd.
    """
    monkeypatch.setattr(logs, "_twistd", [])
    yield


@pytest.mark.usefixtures("twistd_slot")
class TestTwistd:
    """
    The plugins hand twistd their observer through its --logger option.
    """

    def test_claim(self) -> None:
        """
        Parsing a plugin's options makes twistd use barto's factory, and the
        factory returns the observer set later.
        """
        config = PluginServerOptions()
        config.parseOptions(["fake"])

        assert config["logger"] is logs.twistd_observer
        assert AppLogger(config)._observerFactory is logs.twistd_observer
        observer, _ = observe()
        logs.set_twistd_observer(observer)
        assert logs.twistd_observer() is observer

    def test_user_logger_wins(self) -> None:
        """
        A --logger given by the user is left alone.
        """
        config = PluginServerOptions()
        config.parseOptions(["--logger", "twisted.logger.textFileLogObserver", "fake"])
        assert config["logger"].__name__ == "textFileLogObserver"

    def test_no_parent(self) -> None:
        """
        Options parsed on their own (as in tests) are not touched.
        """
        options = FakeOptions()
        options.parseOptions([])
        assert "logger" not in options

    def test_fallback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        If no observer was set, twistd still gets one, to standard error.
        """
        stderr = io.StringIO()
        monkeypatch.setattr("sys.stderr", stderr)
        observer = logs.twistd_observer()
        Logger(observer=observer).info("fallback")
        Logger(observer=observer).debug("not at info")
        assert "fallback" in stderr.getvalue()
        assert "not at info" not in stderr.getvalue()
