"""trackerd's command line and config file: one parser built from each component's
own options, one Config.

Each component adds its own arguments (``add_arguments``) and reads its settings
back from the parsed namespace (``from_args``), as aiosmtpd's ``from_cli`` does;
this module only puts them in order and collects them into a Config. Every range
is checked by a ``type=`` validator while parsing (option_types.py).
build_parser() is also what the man page generator reads.

``--config FILE`` names a file of the same options, one per line without the
leading dashes (``allow-gid = mail``); SIGHUP reads it again (reload.py).
Options on the command line come after the file's, so they win; repeatable ones
(the allow-lists) add up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from servertracker import accel
from servertracker.paths import RUNTIME_DIR_HELP, SOCKET_HELP, add_path_arguments, paths_from_args
from trackerd import __version__
from trackerd.core.distinct_counter import DEFAULT_MAX_EXACT
from trackerd.core.value_table import DEFAULT_MAX_INTERNED_ENTRIES
from trackerd.core.windows import DEFAULT_WINDOWS, Window, parse_windows
from trackerd.edges import access
from trackerd.edges.access import AllowLists, ConnectionLimits
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.fleet import FleetSettings
from trackerd.edges.logs import LogSettings
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.policy_server import PolicyServer
from trackerd.edges.status_writer import STATUS_INTERVAL, StatusWriter
from trackerd.errors import ConfigError
from trackerd.option_types import Arguments, int_between

DESCRIPTION = (
    "Count the distinct mail servers that talk to this SMTP endpoint, keeping only "
    "salted hashes in memory. Workers send records over a Unix socket; the counts "
    "are written to server_tracker.json in the runtime directory."
)


@dataclass(frozen=True)
class Config:
    """Everything the command line decides, component by component."""

    runtime_dir: Path
    listener: ListenerSettings
    #: Its path is None unless --postfix-policy-socket is given; systemd may still pass one.
    postfix_listener: ListenerSettings
    #: Why runtime_dir was chosen, for start-up errors (see servertracker.paths).
    runtime_dir_why: str = ""
    status_interval: float = STATUS_INTERVAL
    max_exact: int = DEFAULT_MAX_EXACT
    #: The interned tables' budget (TrackerServer's --max-interned-entries).
    max_interned: int = DEFAULT_MAX_INTERNED_ENTRIES
    allow: AllowLists = field(default_factory=AllowLists)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    logging: LogSettings = field(default_factory=LogSettings)
    windows: tuple[Window, ...] = ()
    metrics_textfile: Path | None = None
    fleet: FleetSettings = field(default_factory=FleetSettings)
    config_file: Path | None = None
    #: The config file's options that the command line gives again (its flags): the
    #: command line wins, or adds to a list option; a reload says so.
    overridden: tuple[str, ...] = ()


#: What each signal does, for trackerd(8)'s SIGNALS (tools/manpages.py).
SIGNALS = (
    (
        "SIGHUP",
        "Reload: read the command line and --config file again and apply the allow-lists "
        "and the log level; options that need a restart are logged as such. Counts, "
        "sockets and connections are kept.",
    ),
    (
        "SIGTERM, SIGINT",
        "Drain and stop: stop accepting, apply what workers already sent, write the "
        "final status file, remove the socket files, exit 0. A second SIGINT while "
        "stopping exits at once with 130.",
    ),
)

#: Config fields SIGHUP applies; the others need a restart (the option that sets each).
#: A new Config field goes in one of the two (tests/test_options.py checks).
RELOADABLE = ("allow", "logging", "overridden")
RESTART_ONLY = {
    "runtime_dir": "--runtime-dir",
    "runtime_dir_why": "--runtime-dir",
    "listener": "--socket*",
    "postfix_listener": "--postfix-policy-socket*",
    "status_interval": "--status-interval",
    "max_exact": "--max-exact-entries",
    "max_interned": "--max-interned-entries",
    "limits": "--max-connections/--idle-timeout/--frame-timeout",
    "config_file": "--config",
    "fleet": "--fleet-key-file",
    "windows": "--windows",
    "metrics_textfile": "--metrics-textfile",
}
CONFIG_OPTION = "--config"
#: Options a config file may not hold: they are about the command line itself.
_NOT_IN_A_FILE = frozenset({CONFIG_OPTION, "--help", "--version", "-h"})
#: Longest config file read: a few dozen lines are expected.
MAX_CONFIG_FILE = 64 * 1024


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that can raise ConfigError instead of exiting (for SIGHUP)."""

    raise_errors = False

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise ConfigError(message)
        super().error(message)


def _add_tracker_arguments(arguments: Arguments) -> None:
    # The tracker is pure (trackerd/core) and knows no command line; its one option is here.
    arguments.add_argument(
        "--max-exact-entries",
        type=int_between(0, 1 << 32),
        default=DEFAULT_MAX_EXACT,
        metavar="N",
        help=(
            "distinct values counted exactly per category; past this a category is "
            "estimated (HyperLogLog, ~0.4%% error) so that floods cannot grow memory "
            "(default: %(default)s, a 32 MiB table each)"
        ),
    )
    arguments.add_argument(
        "--windows",
        type=_windows,
        default=DEFAULT_WINDOWS,
        metavar="LIST",
        help=(
            "sliding windows to count over besides since boot: durations with a unit "
            "(s, m, h, d), comma-separated, or 'none' (default: %(default)s). Each category "
            "then keeps a last-seen time per value (+50%% of its table; 12.5 MiB once estimated)"
        ),
    )


def _windows(text: str) -> tuple[Window, ...]:
    try:
        return parse_windows(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """trackerd's argument parser, with every component's options."""
    parser = _Parser(
        prog="trackerd",
        description=DESCRIPTION,
        epilog=f"Runtime directory: {RUNTIME_DIR_HELP}. Socket: {SOCKET_HELP}. "
        "SIGHUP reloads; SIGTERM or SIGINT drains and stops (see trackerd(8), SIGNALS).",
    )
    parser.add_argument(
        CONFIG_OPTION,
        metavar="FILE",
        help=(
            "read options from FILE too, one per line as on the command line without the "
            "leading dashes ('allow-gid = mail'; # starts a comment). SIGHUP reads it again "
            "and applies the log level, the statistics interval and the allow-lists; "
            "options given on the command line win"
        ),
    )
    add_path_arguments(parser)
    TrackerServer.add_arguments(parser)
    StatusWriter.add_arguments(parser)
    _add_tracker_arguments(parser)
    PolicyServer.add_arguments(parser)
    FleetSettings.add_arguments(parser)
    title, description = access.ARGUMENT_GROUP
    limits = parser.add_argument_group(title, description)
    AllowLists.add_arguments(limits)
    TrackerServer.add_limit_arguments(limits)
    ConnectionLimits.add_arguments(limits)
    LogSettings.add_arguments(parser)
    parser.add_argument(
        "--version",
        action=_PrintVersion,
        help="print the version and which code path runs (the C extension, or pure "
        f"Python and why; ${accel.PURE_PYTHON_VARIABLE} set to anything but empty or 0 "
        "forces pure Python), then exit",
    )
    return parser


class _PrintVersion(argparse.Action):
    """--version: version_line() as is (argparse's own action wraps it at 80 columns)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``trackerd 0.1.0; hot path: C extension`` (or ``pure Python: why``, or ``partly
    pure Python:`` and which modules): which code counts records and answers Postfix
    matters to operators and bug reports (servertracker/accel.py)."""
    return f"trackerd {__version__}; hot path: {accel.describe(accel.DAEMON_MODULES)}"


def config_from_args(args: argparse.Namespace) -> Config:
    paths = paths_from_args(args)
    return Config(
        runtime_dir=paths.runtime_dir,
        runtime_dir_why=paths.why,
        listener=TrackerServer.listener_from_args(args, paths.socket),
        postfix_listener=PolicyServer.listener_from_args(args),
        status_interval=args.status_interval,
        max_exact=args.max_exact_entries,
        max_interned=args.max_interned_entries,
        allow=AllowLists.from_args(args),
        limits=ConnectionLimits.from_args(args),
        logging=LogSettings.from_args(args),
        windows=args.windows,
        metrics_textfile=args.metrics_textfile,
        fleet=FleetSettings.from_args(args),
        config_file=Path(args.config) if args.config else None,
    )


def _check_sockets(config: Config, parser: argparse.ArgumentParser) -> Config:
    """Refuse a policy socket on the record socket's own path.

    Each path is fine alone, so argparse cannot see it; left to the bind, the
    second listener found the first's file and blamed "another trackerd".
    """
    policy, record = config.postfix_listener.path, config.listener.path
    if (
        policy is not None
        and record is not None
        and os.path.realpath(policy) == os.path.realpath(record)
    ):
        parser.error(
            f"--postfix-policy-socket {policy} is the record socket's own path "
            "(--socket, or trackerd.sock in --runtime-dir): give the policy socket "
            "a path of its own"
        )
    return config


def read_config_file(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """The file's options as command-line arguments. ConfigError says which line is wrong."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_FILE:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_FILE} bytes")
    known = parser._option_string_actions
    arguments: list[str] = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, equals, value = line.partition("=")
        flag = "--" + name.strip()
        if flag not in known or flag in _NOT_IN_A_FILE:
            # Only the line number (and an option's own name): a stray secret pasted in
            # the wrong file stays out of the log.
            words = name.replace("=", " ").split()
            option = "--" + words[0].lstrip("-") if words else ""
            if option in known and option not in _NOT_IN_A_FILE:
                # `socket-mode 0600`, `--log-level=debug`: an option written as on the
                # command line.
                raise ConfigError(
                    f"{path}, line {number}: expected `{option[2:]} = value`, "
                    "without leading dashes"
                )
            raise ConfigError(f"{path}, line {number}: not a trackerd option")
        arguments += [flag, value.strip()] if equals else [flag]
    return arguments


def parse_config(argv: Sequence[str] | None = None, *, raise_errors: bool = False) -> Config:
    """The Config from a command line (and the config file it names).

    A usage error exits 2 with argparse's message, or raises ConfigError if
    raise_errors (a reload must not end the daemon).
    """
    parser = build_parser()
    assert isinstance(parser, _Parser)
    parser.raise_errors = raise_errors
    command_line = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(command_line)
    if args.config:
        path = Path(args.config)
        try:
            from_file = read_config_file(path, parser)
            parser.raise_errors = True
            try:
                parser.parse_args(from_file)  # alone first: its errors are the file's
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        except ConfigError as exc:
            if raise_errors:
                raise
            parser.raise_errors = False
            parser.error(str(exc))
        parser.raise_errors = raise_errors
        args = parser.parse_args([*from_file, *command_line])
        both = _given(from_file, parser).keys() & _given(command_line, parser).keys()
        flags = _given(from_file, parser)
        return dataclasses.replace(
            _check_sockets(config_from_args(args), parser),
            overridden=tuple(sorted(flags[dest] for dest in both)),
        )
    return _check_sockets(config_from_args(args), parser)


def _given(arguments: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """{dest: long flag} of the options among arguments."""
    given: dict[str, str] = {}
    for argument in arguments:
        action = parser._option_string_actions.get(argument.split("=", 1)[0])
        if argument.startswith("--") and action is not None:
            given[action.dest] = action.option_strings[-1]
    return given
