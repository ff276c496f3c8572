"""
Tests for L{barto.config}: files, environment, flags, checks and secrets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from twisted.logger import LogEvent, formatEvent

from barto import config
from barto.calendar import CalendarError, CalendarSpec
from barto.config import (
    ConfigError,
    EndpointConfig,
    MariaDBConfig,
    Secret,
    ServerConfig,
    load_cli_config,
    load_server_config,
    load_worker_config,
    parse_directives,
)

ORIGINAL = Path(__file__).parent / "data" / "original"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """
    An environment with an empty home and no XDG variables.
    """
    return {"HOME": str(tmp_path / "home")}


def write(tmp_path: Path, text: str, name: str = "barto.toml") -> str:
    """
    Write a config file and return its path.
    """
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def server(
    tmp_path: Path,
    text: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServerConfig:
    """
    Load a server config from C{text}.
    """
    return load_server_config(
        write(tmp_path, text),
        environ={"HOME": str(tmp_path), **(environ or {})},
        overrides=overrides,
    )


def server_error(tmp_path: Path, text: str, **kwargs: Any) -> str:
    """
    The message of the L{ConfigError} loading C{text} raises.
    """
    with pytest.raises(ConfigError) as caught:
        server(tmp_path, text, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


SCHEDULE = """
[schedules.w1]
schedules = [
  { name = "a", on_calendar = "daily", cmds = ["true"] },
]
"""


class TestOriginals:
    """
    The three example files of the original README load as they are.
    """

    def test_server(self, home: dict[str, str]) -> None:
        """
        bartos.toml: [actix] is the listener, string ports are numbers.
        """
        path = str(ORIGINAL / "bartos.toml")
        loaded = load_server_config(path, environ=home)

        assert loaded.source == path
        assert loaded.warnings == ()
        assert loaded.listen == config.ListenConfig(
            ip="0.0.0.0",
            port=20000,
            workers=8,
            tls=config.TlsListenConfig(
                ip="0.0.0.1",
                port=20000,
                cert_file_path="/path/cert.pem",
                key_file_path="/path/key.pem",
            ),
        )
        assert loaded.mariadb == MariaDBConfig(
            host="localhost",
            port=3307,
            username="user",
            password=Secret("pass"),
            database="db",
            options="ssl=true",
        )
        assert dict(loaded.mariadb.options_dict) == {"ssl": "true"}
        assert loaded.tracing.file.verbose == 3
        assert loaded.tracing.stdout.directives == (
            "actix_server=error,actix_tls=error"
        )
        (echo,) = loaded.schedules["barto"]
        assert (echo.worker, echo.name, echo.on_calendar, echo.cmds) == (
            "barto",
            "echo",
            "*-*-* 10:R:R",
            ('echo -n "barto"',),
        )

    def test_worker(self, home: dict[str, str]) -> None:
        """
        bartoc.toml: retry_count is the string "10".
        """
        loaded = load_worker_config(str(ORIGINAL / "bartoc.toml"), environ=home)

        assert loaded.name == "vader"
        assert loaded.retry_count == 10
        assert loaded.missed_tick == "Burst"
        assert loaded.bartos == EndpointConfig(
            prefix="wss", host="localhost.ozias.net", port=21526
        )
        assert loaded.bartos.url_base == "wss://localhost.ozias.net:21526"
        assert loaded.warnings == ()

    def test_cli(self, home: dict[str, str]) -> None:
        """
        barto-cli.toml loads with its name and endpoint.
        """
        path = str(ORIGINAL / "barto-cli.toml")
        loaded = load_cli_config(path, environ=home)

        assert loaded.name == "vader-cli"
        assert loaded.bartos.prefix == "wss"
        assert loaded.tracing.file.layer.with_level is True
        assert loaded.warnings == ()


class TestFiles:
    """
    Where the config file is, and what happens when it is not there.
    """

    def test_default_paths(self, tmp_path: Path) -> None:
        """
        XDG variables win; a relative one is ignored for the home default.
        """
        env = {
            "HOME": "/home/u",
            "XDG_CONFIG_HOME": "/cfg",
            "XDG_DATA_HOME": "relative",
        }
        assert config.default_config_path("bartos", env) == Path(
            "/cfg/bartos/bartos.toml"
        )
        assert config.default_data_dir("barto-cli", env) == Path(
            "/home/u/.local/share/barto-cli"
        )
        assert config.default_config_path("bartoc", {"HOME": "/h"}) == Path(
            "/h/.config/bartoc/bartoc.toml"
        )

    def test_unknown_program(self) -> None:
        """
        Only the three programs have config paths.
        """
        with pytest.raises(ValueError):
            config.default_config_path("barto")

    def test_missing_default_file(self, home: dict[str, str]) -> None:
        """
        Without a default file the config is the defaults.
        """
        loaded = load_server_config(environ=home)

        assert loaded.source == "<defaults>"
        assert loaded.listen == config.ListenConfig()
        assert loaded.mariadb is None
        assert loaded.schedules == {}
        assert loaded.sqlite_path == str(
            Path(home["HOME"]) / ".local/share/bartos/bartos.sqlite3"
        )
        assert load_cli_config(environ=home).name == "barto-cli"

    def test_default_file_is_read(self, tmp_path: Path) -> None:
        """
        The file under XDG_CONFIG_HOME is the default.
        """
        directory = tmp_path / "bartoc"
        directory.mkdir()
        write(directory, 'name = "w9"\n', "bartoc.toml")
        environ = {"XDG_CONFIG_HOME": str(tmp_path)}

        loaded = load_worker_config(environ=environ)

        assert loaded.name == "w9"
        assert loaded.source == str(directory / "bartoc.toml")

    def test_missing_explicit_file(self, tmp_path: Path) -> None:
        """
        A file asked for by name must exist.
        """
        path = tmp_path / "nope.toml"
        with pytest.raises(ConfigError, match=f"^{path}: cannot read: "):
            load_server_config(str(path), environ={})

    def test_syntax_error(self, tmp_path: Path) -> None:
        """
        A TOML syntax error names the file and the line.
        """
        path = write(tmp_path, 'name = "a"\nport = = 3\n')
        with pytest.raises(ConfigError) as caught:
            load_worker_config(path, environ={})
        assert str(caught.value).startswith(f"{path}: line 2, column ")
        assert "invalid TOML" in str(caught.value)

    def test_not_utf8(self, tmp_path: Path) -> None:
        """
        A file that is not UTF-8 is an error, not a crash.
        """
        path = tmp_path / "bad.toml"
        path.write_bytes(b'name = "\xff"\n')
        with pytest.raises(ConfigError, match="not UTF-8"):
            load_worker_config(str(path), environ={})

    def test_worker_name_required(self, home: dict[str, str]) -> None:
        """
        A worker without a name does not start, and the error says where
        the file was looked for.
        """
        with pytest.raises(ConfigError) as caught:
            load_worker_config(environ=home)
        expected = config.default_config_path("bartoc", home)
        assert str(caught.value) == (
            f"{expected} (not found): name: is missing (required)"
        )

    def test_exit_code(self) -> None:
        """
        Programs exit 2 on a config error.
        """
        assert ConfigError.exit_code == 2


class TestEnvironment:
    """
    Environment variables under the program's prefix set keys.
    """

    def test_nesting_and_typing(self, tmp_path: Path) -> None:
        """
        C{__} nests, names are case-insensitive, values take the key's type.
        """
        environ = {
            "HOME": str(tmp_path),
            "BARTOC_NAME": "w1",
            "BARTOC_RETRY_COUNT": "0",
            "BARTOC_CLIENT_TIMEOUT": "2.5",
            "BARTOC_MISSED_TICK": "delay",
            "BARTOC_Bartos__Port": "4000",
            "BARTOC_BARTOS__PREFIX": "WSS",
            "BARTOC_BARTOS__API_KEY": "k3y",
            "BARTOC_TRACING__STDOUT__WITH_LEVEL": "no",
            "BARTOC_ENV__PATH": "/opt/bin",
        }
        loaded = load_worker_config(environ=environ)

        assert loaded.name == "w1"
        assert loaded.retry_count == 0
        assert loaded.client_timeout == 2.5
        assert loaded.missed_tick == "Delay"
        assert loaded.bartos.port == 4000
        assert loaded.bartos.prefix == "wss"
        assert loaded.bartos.api_key == Secret("k3y")
        assert loaded.tracing.stdout.with_level is False
        assert dict(loaded.runner.env) == {"PATH": "/opt/bin"}
        assert loaded.warnings == ()

    def test_server_password(self, tmp_path: Path) -> None:
        """
        BARTOS_MARIADB__PASSWORD fills the password the file leaves out.
        """
        text = '[mariadb]\nhost = "h"\nusername = "u"\ndatabase = "d"\n'
        loaded = server(tmp_path, text, environ={"BARTOS_MARIADB__PASSWORD": "s3cret"})
        assert loaded.mariadb is not None
        assert loaded.mariadb.password.reveal() == "s3cret"

    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ("true", True),
            ("TRUE", True),
            ("1", True),
            ("yes", True),
            ("false", False),
            ("0", False),
            ("No", False),
        ],
    )
    def test_booleans(self, text: str, value: bool) -> None:
        """
        Booleans are true/false, 1/0 or yes/no in any case.
        """
        environ = {"BARTO_CLI_TRACING__STDOUT__WITH_THREAD_IDS": text}
        loaded = load_cli_config(environ=environ)
        assert loaded.tracing.stdout.with_thread_ids is value

    @pytest.mark.parametrize(
        ("name", "value", "message"),
        [
            ("BARTOC_BARTOS__PORT", "abc", '"abc" is not an integer'),
            ("BARTOC_BARTOS__PORT", "0", "0 is not a port (expected 1..65535)"),
            ("BARTOC_KILL_GRACE", "soon", '"soon" is not a number'),
            (
                "BARTOC_TRACING__FILE__LAYER__WITH_TARGET",
                "maybe",
                '"maybe" is not a boolean (expected true or false)',
            ),
            (
                "BARTOC_MISSED_TICK",
                "Later",
                '"Later" is not valid (expected one of Burst, Delay, Skip)',
            ),
        ],
    )
    def test_bad_value_names_variable(
        self, name: str, value: str, message: str
    ) -> None:
        """
        A bad value is an error naming the variable and the key.
        """
        key = name.removeprefix("BARTOC_").lower().replace("__", ".")
        environ = {"BARTOC_NAME": "w", name: value}
        with pytest.raises(ConfigError) as caught:
            load_worker_config(environ=environ)
        assert str(caught.value) == (f"environment variable {name}: {key}: {message}")

    def test_unknown_and_foreign_variables(self, tmp_path: Path) -> None:
        """
        Unknown keys under the prefix are warned about; other prefixes and
        the worker's run variables are not.
        """
        environ = {
            "HOME": str(tmp_path),
            "BARTOC_NAME": "w",
            "BARTOC_COLOUR": "blue",
            "BARTO_RUN_ID": "17",
            "BARTO_CLI_NAME": "cli",
            "BARTOS_TIMEZONE": "Nowhere/Land",
            "BARTOC_": "x",
        }
        loaded = load_worker_config(environ=environ)

        assert loaded.warnings == (
            "environment variable BARTOC_: not a key name, ignored",
            "environment variable BARTOC_COLOUR: colour: is not a known key, ignored",
        )
        assert load_cli_config(environ=environ).name == "cli"

    def test_value_and_table(self) -> None:
        """
        A key cannot be both a value and a table.
        """
        environ = {
            "BARTO_CLI_TRACING": "1",
            "BARTO_CLI_TRACING__STDOUT__WITH_LEVEL": "1",
        }
        with pytest.raises(
            ConfigError, match="tracing is set both as a value and as a table"
        ):
            load_cli_config(environ=environ)

    def test_alias_section(self, tmp_path: Path) -> None:
        """
        BARTOS_LISTEN__PORT overrides the port of a file's [actix].
        """
        text = '[actix]\nip = "0.0.0.0"\nport = "20000"\n'
        loaded = server(tmp_path, text, environ={"BARTOS_LISTEN__PORT": "9"})
        assert (loaded.listen.ip, loaded.listen.port) == ("0.0.0.0", 9)


class TestPrecedence:
    """
    Flags beat the environment, which beats the file, which beats defaults.
    """

    @pytest.mark.parametrize(
        ("in_file", "in_env", "in_flags", "expected"),
        [
            (False, False, False, 21526),
            (True, False, False, 1001),
            (True, True, False, 1002),
            (False, True, False, 1002),
            (True, True, True, 1003),
            (False, False, True, 1003),
        ],
    )
    def test_layers(
        self,
        tmp_path: Path,
        in_file: bool,
        in_env: bool,
        in_flags: bool,
        expected: int,
    ) -> None:
        """
        The highest layer that sets listen.port wins.
        """
        text = "[listen]\nport = 1001\n" if in_file else ""
        environ = {"BARTOS_LISTEN__PORT": "1002"} if in_env else {}
        overrides = {"listen.port": 1003} if in_flags else {}

        loaded = server(tmp_path, text, environ=environ, overrides=overrides)

        assert loaded.listen.port == expected

    def test_none_flags_are_skipped(self, tmp_path: Path) -> None:
        """
        A flag the user did not give (C{None}) does not hide the file.
        """
        loaded = load_worker_config(
            write(tmp_path, 'name = "w"\nspool_path = "/var/spool.db"\n'),
            environ={},
            overrides={"spool_path": None, "retry_count": 3},
        )
        assert (loaded.spool_path, loaded.retry_count) == ("/var/spool.db", 3)

    def test_flag_error_says_command_line(self, tmp_path: Path) -> None:
        """
        A bad flag value is blamed on the command line.
        """
        message = server_error(tmp_path, "", overrides={"listen.port": 0})
        assert message == (
            "command line: listen.port: 0 is not a port (expected 1..65535)"
        )

    def test_path_like_flag(self) -> None:
        """
        A path object is accepted where a string is expected.
        """
        loaded = load_worker_config(
            environ={"BARTOC_NAME": "w"},
            overrides={"spool_path": Path("/tmp/s.db")},
        )
        assert loaded.spool_file() == Path("/tmp/s.db")


class TestValidation:
    """
    Every value is checked at load, with a one-line error.
    """

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "[listen]\nport = 70000\n",
                "listen.port: 70000 is not a port (expected 1..65535)",
            ),
            (
                '[actix]\nport = "twenty"\n',
                'listen.port: "twenty" is not an integer',
            ),
            ("[listen]\nport = 80.5\n", "listen.port: 80.5 is not an integer"),
            ("[listen]\nport = true\n", "listen.port: true is not a number"),
            (
                "[listen]\nip = 4\n",
                "listen.ip: 4 is not a string",
            ),
            ("listen = 3\n", "listen: 3 is not a table"),
            (
                "[listen]\nplain = false\n",
                "listen.plain: false turns off the only listener"
                " (expected true or a [listen.tls])",
            ),
            (
                '[listen.tls]\nip = "::"\nport = 1\nkey_file_path = "k"\n',
                "listen.tls.cert_file_path: is missing (required)",
            ),
            (
                "[actix]\nport = 1\n[listen]\nport = 2\n",
                "actix: both [actix] and [listen] are set (expected one)",
            ),
            (
                'timezone = "Mars/Olympus"\n',
                'timezone: "Mars/Olympus" is not a time zone'
                " (expected an IANA name like Europe/Berlin)",
            ),
            (
                "[retention]\nhour = 24\n",
                "retention.hour: 24 is not an hour (expected 0..23)",
            ),
            (
                "[retention]\ndays = 0\n",
                "retention.days: 0 is too small (expected > 0)",
            ),
            (
                "[runs]\nlost_grace = -1.0\n",
                "runs.lost_grace: -1.0 is too small (expected > 0)",
            ),
            (
                '[websocket]\nping_timeout = "nan"\n',
                'websocket.ping_timeout: "nan" is not a finite number',
            ),
            (
                "[store]\nbatch_size = 0\n",
                "store.batch_size: 0 is too small (expected > 0)",
            ),
            (
                '[mariadb]\nhost = "h"\nusername = "u"\npassword = ""\n',
                "mariadb.database: is missing (required)",
            ),
            (
                '[mariadb]\nhost = "h"\nusername = "u"\npassword = ""\n'
                'database = "d"\noptions = "ssl"\n',
                'mariadb.options: "ssl" is not a list of options'
                " (expected key=value, got 'ssl')",
            ),
            (
                '[tracing.stdout]\ndirectives = "barto=loud"\n',
                'tracing.stdout.directives: "barto=loud" are not tracing'
                " directives ('barto=loud' has no level (expected one of"
                " trace, debug, info, warn, error, critical, off))",
            ),
            (
                "[tracing.file]\nquiet = -1\n",
                "tracing.file.quiet: -1 is negative (expected >= 0)",
            ),
            (
                '[[tokens]]\nname = "w"\ntoken = "t"\nrole = "root"\n',
                'tokens[0].role: "root" is not valid'
                " (expected one of worker, cli-read, cli-admin)",
            ),
            (
                '[local_worker]\nname = "local"\nmissed_tick = "Never"\n',
                'local_worker.missed_tick: "Never" is not valid'
                " (expected one of Burst, Delay, Skip)",
            ),
            (
                '[local_worker]\nname = "local"\nkill_grace = 0\n',
                "local_worker.kill_grace: 0.0 is too small (expected > 0)",
            ),
            (
                '[local_worker]\nname = "local"\n[local_worker.env]\nA = 1\n',
                "local_worker.env.A: 1 is not a string",
            ),
        ],
    )
    def test_server_values(
        self,
        tmp_path: Path,
        text: str,
        expected: str,
    ) -> None:
        """
        Each bad value is reported with the file, key, value and rule.
        """
        path = tmp_path / "barto.toml"
        assert server_error(tmp_path, text) == f"{path}: {expected}"

    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            (
                '{ name = "a", on_calendar = "daily", cmds = [] }',
                "cmds: [] is empty (expected at least one command)",
            ),
            (
                '{ name = "a", on_calendar = "daily", cmds = ["ls", " "] }',
                "cmds: an array has an empty command (expected non-empty strings)",
            ),
            (
                '{ name = "a", on_calendar = "daily", cmds = "ls" }',
                'cmds: "ls" is not an array',
            ),
            ('{ name = "a", on_calendar = "daily" }', "cmds: is missing (required)"),
            (
                '{ name = "a/b", on_calendar = "daily", cmds = ["ls"] }',
                'name: "a/b" is not a name'
                " (expected no '/' and no control characters)",
            ),
            (
                '{ name = "a", on_calendar = "daily", cmds = ["ls"], timeout = 0 }',
                "timeout: 0.0 is too small (expected > 0)",
            ),
            (
                '{ name = "a", on_calendar = "daily", cmds = ["ls"],'
                ' overlap = "never" }',
                'overlap: "never" is not valid (expected one of allow, skip, queue)',
            ),
            (
                '{ name = "a", on_calendar = "daily", cmds = ["ls"],'
                ' timezone = "Europe/Nowhere" }',
                'timezone: "Europe/Nowhere" is not a time zone'
                " (expected an IANA name like Europe/Berlin)",
            ),
        ],
    )
    def test_schedule_values(
        self,
        tmp_path: Path,
        entry: str,
        expected: str,
    ) -> None:
        """
        Schedules are checked field by field.
        """
        text = f"[schedules.w1]\nschedules = [ {entry} ]\n"
        path = tmp_path / "barto.toml"
        assert server_error(tmp_path, text) == (
            f"{path}: schedules.w1.schedules[0].{expected}"
        )

    def test_schedule_names_unique(self, tmp_path: Path) -> None:
        """
        Two schedules of one worker cannot share a name.
        """
        text = (
            "[schedules.w1]\nschedules = [\n"
            '  { name = "a", on_calendar = "daily", cmds = ["x"] },\n'
            '  { name = "a", on_calendar = "hourly", cmds = ["y"] },\n'
            "]\n[schedules.w2]\nschedules = [\n"
            '  { name = "a", on_calendar = "daily", cmds = ["x"] },\n'
            "]\n"
        )
        message = server_error(tmp_path, text)
        assert message.endswith(
            'schedules.w1.schedules[1].name: "a" is already the name of'
            " schedules[0] (expected names unique per worker)"
        )

    def test_bad_calendar(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A calendar the parser refuses is reported on its key, one line.
        """

        def refuse(expression: str, **kwargs: object) -> object:
            raise CalendarError("bad hour field\n'25'")

        monkeypatch.setattr(config, "parse", refuse)
        text = SCHEDULE.replace("daily", "*-*-* 25:00")
        message = server_error(tmp_path, text)
        assert message.endswith(
            'schedules.w1.schedules[0].on_calendar: "*-*-* 25:00" is not a'
            " calendar expression (bad hour field '25')"
        )

    def test_calendar_key_and_zone(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        Each calendar is parsed with key "worker/name" and the schedule's
        zone, else the server's.
        """
        calls: list[tuple[str, str, object]] = []

        def record(expression: str, *, key: str, default_zone: object) -> str:
            calls.append((expression, key, default_zone))
            return f"spec of {key}"

        monkeypatch.setattr(config, "parse", record)
        text = (
            'timezone = "Europe/Berlin"\n[schedules.w1]\nschedules = [\n'
            '  { name = "a", on_calendar = "daily", cmds = ["x"] },\n'
            '  { name = "b", on_calendar = "hourly", cmds = ["y"],'
            ' timezone = "Asia/Tokyo" },\n]\n'
        )
        loaded = server(tmp_path, text)

        assert calls == [
            ("daily", "w1/a", ZoneInfo("Europe/Berlin")),
            ("hourly", "w1/b", ZoneInfo("Asia/Tokyo")),
        ]
        specs: list[object] = [each.spec for each in loaded.schedules["w1"]]
        assert specs == [
            "spec of w1/a",
            "spec of w1/b",
        ]

    def test_real_calendar(self, tmp_path: Path) -> None:
        """
        With the real parser, a schedule's spec is a parsed calendar and a
        nonsense expression is refused.
        """
        loaded = server(tmp_path, SCHEDULE)
        assert isinstance(loaded.schedules["w1"][0].spec, CalendarSpec)
        message = server_error(tmp_path, SCHEDULE.replace("daily", "every blue moon"))
        assert "schedules.w1.schedules[0].on_calendar:" in message

    def test_schedule_options(self, tmp_path: Path) -> None:
        """
        Optional schedule keys are read and normalized.
        """
        text = SCHEDULE.replace(
            'cmds = ["true"]',
            'cmds = ["true"], timeout = 90, overlap = "Skip"',
        )
        (schedule,) = server(tmp_path, text).schedules["w1"]
        assert (schedule.timeout, schedule.overlap) == (90.0, "skip")

    def test_tokens(self, tmp_path: Path) -> None:
        """
        Tokens are read in order; their values must be unique.
        """
        text = (
            '[[tokens]]\nname = "w1"\ntoken = "t1"\nrole = "worker"\n'
            '[[tokens]]\nname = "ops"\ntoken = "t2"\nrole = "cli-admin"\n'
        )
        loaded = server(tmp_path, text)
        assert [(t.name, t.token.reveal(), t.role) for t in loaded.tokens] == [
            ("w1", "t1", "worker"),
            ("ops", "t2", "cli-admin"),
        ]

        message = server_error(tmp_path, text.replace('"t2"', '"t1"'))
        assert message.endswith(
            "tokens[1].token: <secret> is already the token of tokens[0]"
            " (expected unique tokens)"
        )
        assert "t1" not in message

    def test_client_certificate_pair(self, tmp_path: Path) -> None:
        """
        A client certificate needs its key, and the other way round.
        """
        path = write(tmp_path, '[bartos]\nclient_key = "/k.pem"\n')
        with pytest.raises(ConfigError) as caught:
            load_cli_config(path, environ={})
        assert str(caught.value) == (
            f"{path}: bartos.client_cert: is missing"
            " (expected client_cert and client_key together)"
        )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('name = ""\n', 'name: "" is not a name'),
            ('name = "w"\nretry_count = -1\n', "retry_count: -1 is negative"),
            ('name = "w"\nretry_count = "ten"\n', '"ten" is not an integer'),
            ('name = "w"\nclient_timeout = 0\n', "client_timeout: 0.0 is too"),
            ('name = "w"\nshell = ""\n', 'shell: "" is empty'),
            ('name = "w"\nmax_output_bytes = 0\n', "max_output_bytes: 0 is"),
            ('name = "w"\nspool_max_bytes = -5\n', "spool_max_bytes: -5 is"),
            ('name = "w"\nenv = "PATH=/bin"\n', 'env: "PATH=/bin" is not a'),
            (
                'name = "w"\n[bartos]\nprefix = "http"\n',
                'bartos.prefix: "http" is not valid (expected one of ws, wss)',
            ),
        ],
    )
    def test_worker_values(
        self,
        tmp_path: Path,
        text: str,
        expected: str,
    ) -> None:
        """
        Worker keys are checked too.
        """
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_worker_config(path, environ={})
        assert str(caught.value).startswith(f"{path}: ")
        assert expected in str(caught.value)


class TestSecrets:
    """
    Secrets are never shown.
    """

    def test_secret(self) -> None:
        """
        A secret hides its value from repr, str and format.
        """
        secret = Secret("hunter2")
        assert secret.reveal() == "hunter2"
        assert repr(secret) == str(secret) == "Secret('********')"
        assert f"{secret}" == "Secret('********')"
        assert secret == Secret("hunter2")
        assert secret != Secret("hunter3")
        assert secret != "hunter2"
        assert len({secret, Secret("hunter2")}) == 1

    def test_config_repr(self, tmp_path: Path) -> None:
        """
        The repr of a whole config shows no secret.
        """
        text = (
            'api_key = "AK-1"\n[[tokens]]\nname = "w"\ntoken = "TK-2"\n'
            'role = "worker"\n[mariadb]\nhost = "h"\nusername = "u"\n'
            'password = "PW-3"\ndatabase = "d"\n'
        )
        shown = repr(server(tmp_path, text))
        for value in ("AK-1", "TK-2", "PW-3"):
            assert value not in shown
        assert "Secret('********')" in shown

    def test_bad_secret_is_not_shown(self, tmp_path: Path) -> None:
        """
        An error about a secret's value says <secret>, not the value.
        """
        text = (
            '[mariadb]\nhost = "h"\nusername = "u"\ndatabase = "d"\npassword = 987654\n'
        )
        message = server_error(tmp_path, text)
        assert message.endswith("mariadb.password: <secret> is not a string")
        assert "987654" not in message

    def test_unknown_key_value_is_not_shown(self, tmp_path: Path) -> None:
        """
        A misspelt secret key is warned about without its value.
        """
        text = '[mariadb]\nhost = "h"\nusername = "u"\ndatabase = "d"\n'
        text += 'password = ""\npasword = "PW-4"\n'
        loaded = server(tmp_path, text)
        assert loaded.warnings == (
            f"{tmp_path / 'barto.toml'}: mariadb.pasword: is not a known key, ignored",
        )
        assert "PW-4" not in repr(loaded)


class TestWarnings:
    """
    Unknown keys are warned about, not refused.
    """

    def test_unknown_keys(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        Each unknown key is named by its path, in the config's warnings
        and in the log.
        """
        events: list[LogEvent] = []
        monkeypatch.setattr(config.log, "observer", events.append)
        text = (
            'colour = "blue"\nhmac_key = "k"\n[listen]\nport = 1\nwide = 2\n'
            '[schedules.w1]\nschedules = [ { name = "a",'
            ' on_calendar = "daily", cmds = ["x"], nice = 5 } ]\nextra = 1\n'
            '[schedules."odd.name"]\n'
        )
        path = tmp_path / "barto.toml"

        loaded = server(tmp_path, text)

        expected = (
            f"{path}: listen.wide: is not a known key, ignored",
            f"{path}: colour: is not a known key, ignored",
            f"{path}: hmac_key: is not supported, ignored (message signing"
            " is replaced by TLS and [[tokens]])",
            f"{path}: schedules.w1.extra: is not a known key, ignored",
            f"{path}: schedules.w1.schedules[0].nice: is not a known key, ignored",
        )
        assert loaded.warnings == expected
        assert [formatEvent(event) for event in events] == list(expected)
        assert loaded.schedules["odd.name"] == ()

    def test_workers_key_accepted(self, tmp_path: Path) -> None:
        """
        [actix] workers is known (and unused), so not warned about.
        """
        loaded = server(tmp_path, "[actix]\nworkers = 4\n")
        assert (loaded.listen.workers, loaded.warnings) == (4, ())


class TestShapes:
    """
    The config objects: immutable, with defaults and helpers.
    """

    def test_immutable(self, tmp_path: Path) -> None:
        """
        Configs cannot be changed after loading.
        """
        loaded = load_worker_config(
            write(tmp_path, 'name = "w"\n[env]\nA = "1"\n'), environ={}
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            loaded.name = "x"  # type: ignore[misc]
        with pytest.raises(TypeError):
            loaded.runner.env["B"] = "2"  # type: ignore[index]
        schedules = server(tmp_path, SCHEDULE).schedules
        with pytest.raises(TypeError):
            schedules["w2"] = ()  # type: ignore[index]

    def test_worker_runner_keys(self, tmp_path: Path) -> None:
        """
        A worker's runner keys are top-level keys.
        """
        text = (
            'name = "w"\nshell = "/bin/bash"\nworkdir = "/srv"\n'
            "max_line_bytes = 100\nkill_grace = 1\nshutdown_grace = 2\n"
            '[env]\nLANG = "C"\n'
        )
        loaded = load_worker_config(write(tmp_path, text), environ={})
        assert loaded.runner == config.RunnerConfig(
            shell="/bin/bash",
            workdir="/srv",
            env={"LANG": "C"},
            max_line_bytes=100,
            kill_grace=1.0,
            shutdown_grace=2.0,
        )

    def test_local_worker(self, tmp_path: Path) -> None:
        """
        [local_worker] holds the runner keys directly.
        """
        text = '[local_worker]\nname = "here"\nshell = "/bin/dash"\n'
        text += 'missed_tick = "skip"\n'
        loaded = server(tmp_path, text, environ={"XDG_DATA_HOME": "/d"})
        local = loaded.local_worker
        assert local is not None
        assert (local.name, local.missed_tick) == ("here", "Skip")
        assert local.runner.shell == "/bin/dash"
        assert local.spool_file({"XDG_DATA_HOME": "/d"}) == Path(
            "/d/bartos/local-worker.sqlite3"
        )

    def test_spool_file_default(self) -> None:
        """
        Without spool_path the spool is in the worker's data directory.
        """
        loaded = load_worker_config(environ={"BARTOC_NAME": "w"})
        assert loaded.spool_path is None
        assert loaded.spool_file({"XDG_DATA_HOME": "/data"}) == Path(
            "/data/bartoc/bartoc.sqlite3"
        )

    def test_sqlite_path(self, tmp_path: Path) -> None:
        """
        [sqlite] path sets the embedded database file.
        """
        loaded = server(tmp_path, '[sqlite]\npath = "/var/b.db"\n')
        assert loaded.sqlite_path == "/var/b.db"

    def test_url_base(self) -> None:
        """
        url_base joins prefix, host and port; IPv6 hosts get brackets.
        """
        assert EndpointConfig().url_base == "ws://127.0.0.1:21526"
        endpoint = EndpointConfig(prefix="wss", host="::1", port=9)
        assert endpoint.url_base == "wss://[::1]:9"

    def test_options_dict(self) -> None:
        """
        MariaDB options split on & and =.
        """
        mariadb = MariaDBConfig(
            host="h",
            username="u",
            password=Secret(""),
            database="d",
            options="ssl=true&&charset=utf8mb4",
        )
        assert dict(mariadb.options_dict) == {
            "ssl": "true",
            "charset": "utf8mb4",
        }

    def test_parse_directives(self) -> None:
        """
        Directives become (namespace, level) pairs.
        """
        assert parse_directives(" info, a::b=DEBUG ,,c=off") == (
            ("", "info"),
            ("a.b", "debug"),
            ("c", "off"),
        )
        with pytest.raises(ValueError, match="no namespace"):
            parse_directives("=info")
