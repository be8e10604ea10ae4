"""trackerd's options: one parser built from the components, ranges checked while parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from servertracker.paths import PATH_OPTIONS
from trackerd.edges.socket_files import SOCKET_MODE
from trackerd.options import build_parser, parse_config


def test_the_parser_has_every_components_options() -> None:
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    for option in PATH_OPTIONS:
        assert option.flag in flags
    for flag in (
        "--status-interval",
        "--max-exact-entries",
        "--postfix-policy-socket",
        "--allow-uid",
        "--allow-gid",
        "--max-connections",
        "--idle-timeout",
        "--frame-timeout",
        "--log-level",
        "--socket-mode",
        "--postfix-policy-socket-group",
    ):
        assert flag in flags


def test_config_from_a_command_line(tmp_path: Path) -> None:
    config = parse_config(
        [
            "--runtime-dir", str(tmp_path), "--allow-gid", "0", "--allow-uid", "root",
            "--socket-mode", "0600", "--postfix-policy-socket", str(tmp_path / "p"),
            "--status-interval", "1.5", "--log-level", "WARNING",
        ]
    )  # fmt: skip
    assert config.runtime_dir == tmp_path
    assert config.listener.path == tmp_path / "trackerd.sock"
    assert config.listener.file.mode == 0o600
    assert config.postfix_listener.path == tmp_path / "p"
    assert config.postfix_listener.file.mode == SOCKET_MODE
    assert config.allow.uids == frozenset({0}) and config.allow.gids == frozenset({0})
    assert config.status_interval == 1.5
    assert config.logging.level == "warning"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--status-interval", "0"], "--status-interval: must be between 0.01 and 3600"),
        (["--status-interval", "nan"], "--status-interval: must be between"),
        (["--max-exact-entries", "-1"], "--max-exact-entries: must be between 0 and"),
        (["--max-connections", "0"], "--max-connections: must be between 1 and"),
        (["--idle-timeout", "-1"], "--idle-timeout: must be between 0 and"),
        (["--socket-mode", "999"], "--socket-mode: '999' is not an octal mode"),
        (["--allow-gid", "no-such-group-here"], "--allow-gid: no such group: no-such-group"),
        (["--log-level", "loud"], "--log-level: 'loud' is not a log level"),
    ],
)
def test_a_value_out_of_range_is_a_usage_error_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_log_level_in_the_environment_is_a_usage_error_not_a_traceback() -> None:
    env = dict(os.environ, TRACKERD_LOG_LEVEL="bogus")
    result = subprocess.run(
        [sys.executable, "-m", "trackerd"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "$TRACKERD_LOG_LEVEL='bogus' is not a log level" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_config_field_is_either_reloadable_or_named_for_a_restart() -> None:
    """SIGHUP applies RELOADABLE and names the rest in its warning: a new field needs a place."""
    import dataclasses

    from trackerd.options import RELOADABLE, RESTART_ONLY, Config

    names = {field.name for field in dataclasses.fields(Config)}
    assert names == set(RELOADABLE) | set(RESTART_ONLY)
    assert not set(RELOADABLE) & set(RESTART_ONLY)


@pytest.mark.parametrize("via", ["same", "symlink", "socket"])
def test_a_policy_socket_on_the_record_socket_path_is_a_usage_error(
    short_tmp: Path, via: str
) -> None:
    """Not "another trackerd is already listening": the operator named one file twice."""
    runtime = short_tmp / "run"
    runtime.mkdir()
    argv = [
        "--runtime-dir",
        str(runtime),
        "--postfix-policy-socket",
        str(runtime / "trackerd.sock"),
    ]
    if via == "symlink":
        (short_tmp / "link").symlink_to(runtime)
        argv[-1] = str(short_tmp / "link" / "trackerd.sock")
    elif via == "socket":
        argv = ["--runtime-dir", str(runtime), "--socket", str(short_tmp / "t.sock"),
                "--postfix-policy-socket", str(short_tmp / "t.sock")]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "trackerd", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "is the record socket's own path" in result.stderr
    assert "another trackerd" not in result.stderr and "Traceback" not in result.stderr


def test_max_interned_entries_help_says_its_unit_cap_and_floor() -> None:
    """In the "access and limits" group, where README lists it, with the numbers
    computed from the constants the daemon and the client use."""
    from servertracker.batch_encoder import MIN_TABLE_ENTRIES
    from trackerd.core.value_table import DEFAULT_MAX_INTERNED_ENTRIES
    from trackerd.edges.msgpack_server import GRANT_SHARE

    parser = build_parser()
    group = next(g for g in parser._action_groups if g.title == "access and limits")
    action = next(a for a in group._group_actions if "--max-interned-entries" in a.option_strings)
    text = " ".join((action.help or "").split())
    assert "a grant of n ids is two tables of n" in text
    assert f"{DEFAULT_MAX_INTERNED_ENTRIES // (2 * GRANT_SHARE):,} ids at the default" in text
    assert f"{2 * GRANT_SHARE * MIN_TABLE_ENTRIES:,} every grant is under" in text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("socket-mode 0600", "line 2: expected `socket-mode = value`, without leading dashes"),
        ("--log-level=debug", "line 2: expected `log-level = value`, without leading dashes"),
        ("--allow-gid = mail", "line 2: expected `allow-gid = value`, without leading dashes"),
        ("secret-pasted-here 0600", "line 2: not a trackerd option"),
        ("--config = other.conf", "line 2: not a trackerd option"),
    ],
)
def test_a_config_line_written_as_on_the_command_line_says_how_to_write_it(
    tmp_path: Path, line: str, message: str
) -> None:
    """The operator's likely slips name the form the file wants; other lines stay bare
    (no echo of what the line holds)."""
    from trackerd.errors import ConfigError
    from trackerd.options import read_config_file

    config = tmp_path / "trackerd.conf"
    config.write_text(f"# an example\n{line}\n")
    with pytest.raises(ConfigError) as error:
        read_config_file(config, build_parser())
    assert str(error.value) == f"{config}, {message}"
