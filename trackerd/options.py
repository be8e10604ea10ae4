"""trackerd's command line: one parser built from each component's own options, one Config.

Each component adds its own arguments (``add_arguments``) and reads its settings
back from the parsed namespace (``from_args``), as aiosmtpd's ``from_cli`` does;
this module only puts them in order and collects them into a Config. Every range
is checked by a ``type=`` validator while parsing (option_types.py).
build_parser() is also what the man page generator reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from servertracker.paths import RUNTIME_DIR_HELP, SOCKET_HELP, add_path_arguments, paths_from_args
from trackerd import __version__
from trackerd.core.distinct_counter import DEFAULT_MAX_EXACT
from trackerd.edges import access
from trackerd.edges.access import AllowLists, ConnectionLimits
from trackerd.edges.endpoint import ListenerSettings
from trackerd.edges.logs import LogSettings
from trackerd.edges.msgpack_server import TrackerServer
from trackerd.edges.policy_server import PolicyServer
from trackerd.edges.status_writer import STATUS_INTERVAL, StatusWriter
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
    status_interval: float = STATUS_INTERVAL
    max_exact: int = DEFAULT_MAX_EXACT
    allow: AllowLists = field(default_factory=AllowLists)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    logging: LogSettings = field(default_factory=LogSettings)


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


def build_parser() -> argparse.ArgumentParser:
    """trackerd's argument parser, with every component's options."""
    parser = argparse.ArgumentParser(
        prog="trackerd",
        description=DESCRIPTION,
        epilog=f"Runtime directory: {RUNTIME_DIR_HELP}. Socket: {SOCKET_HELP}.",
    )
    add_path_arguments(parser)
    TrackerServer.add_arguments(parser)
    StatusWriter.add_arguments(parser)
    _add_tracker_arguments(parser)
    PolicyServer.add_arguments(parser)
    title, description = access.ARGUMENT_GROUP
    limits = parser.add_argument_group(title, description)
    AllowLists.add_arguments(limits)
    ConnectionLimits.add_arguments(limits)
    LogSettings.add_arguments(parser)
    parser.add_argument("--version", action="version", version=f"trackerd {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    paths = paths_from_args(args)
    return Config(
        runtime_dir=paths.runtime_dir,
        listener=TrackerServer.listener_from_args(args, paths.socket),
        postfix_listener=PolicyServer.listener_from_args(args),
        status_interval=args.status_interval,
        max_exact=args.max_exact_entries,
        allow=AllowLists.from_args(args),
        limits=ConnectionLimits.from_args(args),
        logging=LogSettings.from_args(args),
    )


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """The Config from a command line; a usage error exits 2 with argparse's message."""
    return config_from_args(build_parser().parse_args(argv))
