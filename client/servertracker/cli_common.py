"""What every trackerctl command shares: exit codes, the common options, output, errors.

Commands in other modules (servertracker/cli_*.py) import from here, not from
cli.py, so that cli.py can import them to register them. Kept cheap to import:
typer and the standard library only.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from servertracker.connection import DEFAULT_TIMEOUT
from servertracker.errors import DaemonUnavailable, TrackerError
from servertracker.paths import RUNTIME_DIR_OPTION, SOCKET_OPTION, resolve_paths
from servertracker.status import FILE_PERMISSION_DENIED
from servertracker.status_source import NoStatusAvailable, error_json

# Exit codes: the one place they are defined (README's table, --help and the man page
# list them; tests/test_cli.py checks the README's table against this).
EXIT_OK = 0
EXIT_OUTPUT = 1  # trackerctl could not write its output (a full disk, say)
EXIT_USAGE = 2  # a mistyped command line (typer's own code)
EXIT_FILE_ONLY = 3  # status, watch, metrics: no daemon answer; the counts come from the file
EXIT_UNAVAILABLE = 4  # nothing could answer: no daemon (and, for status, no readable file)
EXIT_FLEET_KEY = 5  # fleet keygen/advance: the key file cannot be used or written
EXIT_REDIS = 6  # fleet push/status: Redis unreachable, slow, refused, empty; or no redis-py
EXIT_NO_FLEET = 7  # fleet push: trackerd answered, but offers no "fleet" (not in fleet mode)
EXIT_INTERRUPTED = 130  # Ctrl-C (watch leaves with its last refresh's code instead)

EXIT_CODES = (
    (EXIT_OK, "the daemon answered"),
    (EXIT_OUTPUT, "trackerctl could not write its output (a full disk, a closed pipe)"),
    (EXIT_USAGE, "usage error (a mistyped command line)"),
    (
        EXIT_FILE_ONLY,
        "status, watch and metrics only: the daemon did not answer; the counts come from "
        "the status file",
    ),
    (
        EXIT_UNAVAILABLE,
        "nothing could answer: no daemon (and, for status, watch and metrics, no readable "
        "status file)",
    ),
    (EXIT_FLEET_KEY, "fleet keygen and advance only: the key file cannot be used or written"),
    (
        EXIT_REDIS,
        "fleet push and status only: Redis unreachable, too slow, refused or empty "
        "(or redis-py not installed)",
    ),
    (
        EXIT_NO_FLEET,
        "fleet push only: trackerd answered but does not offer fleet counts (no "
        "--fleet-key-file, or too old)",
    ),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C), except watch, which leaves with its last code"),
)
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES) + "."


def _given_path(text: str) -> Path:
    """A path option's value: an empty one is a usage error (Path("") is ".").

    Nothing else is checked here: a socket is never "readable", so connecting says
    what is wrong with it, and an unreadable directory is reported as the
    environment's would be."""
    if not text:
        raise typer.BadParameter("empty (give a path)")
    return Path(text)


#: The options every command takes, before the command or after it (defined once here).
SocketOption = Annotated[
    Path | None,
    typer.Option(
        SOCKET_OPTION.flag,
        metavar=SOCKET_OPTION.metavar,
        help=f"{SOCKET_OPTION.help}.",
        show_default=False,
        parser=_given_path,
    ),
]
RuntimeDirOption = Annotated[
    Path | None,
    typer.Option(
        RUNTIME_DIR_OPTION.flag,
        metavar=RUNTIME_DIR_OPTION.metavar,
        help=f"{RUNTIME_DIR_OPTION.help}.",
        show_default=False,
        parser=_given_path,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (errors: one JSON line on stderr).")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        min=0.01,
        max=300,
        help=f"Seconds to wait for the daemon's answer [default: {DEFAULT_TIMEOUT:g}].",
        show_default=False,
    ),
]


class OutputError(TrackerError):
    """trackerctl's own output could not be written."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))
        #: A closed pipe means the reader has gone (``| head``): leave quietly.
        self.quiet = exc.errno == errno.EPIPE


@dataclass(frozen=True)
class Target:
    """Which daemon to ask, and how: the common options, resolved."""

    socket_path: Path
    runtime_dir: Path
    #: Whether the runtime directory's status file is this socket's daemon's. An explicit
    #: socket elsewhere is another daemon: never show one daemon's file for another.
    status_file_matches: bool
    timeout: float
    as_json: bool
    #: How runtime_dir was chosen (paths.runtime_dir_why); "" when given or unsurprising.
    why: str = ""

    @property
    def status_dir(self) -> Path | None:
        """Where to read this daemon's status file from, if anywhere."""
        return self.runtime_dir if self.status_file_matches else None

    def explain(self, error: TrackerError) -> TrackerError:
        """The error, saying how the runtime directory was chosen when access to it was
        denied: a user sent to root's /run/trackerd because it exists would not guess."""
        if not self.why:
            return error
        note = f"runtime directory {self.runtime_dir} {self.why}"
        if self._socket_denied(error):
            assert isinstance(error, DaemonUnavailable)
            return DaemonUnavailable(error.reason, f"{error.detail}; {note}")
        if isinstance(error, NoStatusAvailable) and (
            self._socket_denied(error.daemon_error)
            or error.file_error.reason == FILE_PERMISSION_DENIED
        ):
            return NoStatusAvailable(error.daemon_error, error.file_error, note)
        return error

    def _socket_denied(self, error: TrackerError) -> bool:
        """Access to a socket in the runtime directory was denied (not one given elsewhere)."""
        return (
            isinstance(error, DaemonUnavailable)
            and error.reason == "permission-denied"
            and os.path.abspath(self.socket_path.parent) == os.path.abspath(self.runtime_dir)
        )


def target(
    ctx: typer.Context,
    socket: Path | None,
    runtime_dir: Path | None,
    as_json: bool,
    timeout: float | None,
) -> Target:
    """The command's own options, else those given before the command, else the defaults."""
    before: Target | dict[str, Any] | None = ctx.find_root().obj
    given: dict[str, Any] = before if isinstance(before, dict) else {}
    socket = socket or given.get("socket")
    runtime_dir = runtime_dir or given.get("runtime_dir")
    as_json = as_json or bool(given.get("as_json"))
    if timeout is None:
        timeout = given.get("timeout") or DEFAULT_TIMEOUT
    paths = resolve_paths(socket, runtime_dir)
    directory, socket_path = paths.runtime_dir, paths.socket
    explicit_socket = bool(socket or os.environ.get(SOCKET_OPTION.env))
    explicit_dir = bool(
        runtime_dir or os.environ.get(RUNTIME_DIR_OPTION.env) or os.environ.get("RUNTIME_DIRECTORY")
    )
    matches = (
        not explicit_socket
        or explicit_dir
        or os.path.abspath(socket_path.parent) == os.path.abspath(directory)
    )
    return Target(socket_path, directory, matches, timeout, as_json, paths.why)


def wants_json(ctx: typer.Context, as_json: bool) -> bool:
    """--json given after the command, or before it."""
    before = ctx.find_root().obj
    return as_json or (isinstance(before, dict) and bool(before.get("as_json")))


def echo(text: str, err: bool = False) -> None:
    """Write a line; a failed write becomes OutputError (main() exits 1, no traceback)."""
    try:
        typer.echo(text, err=err)
    except OSError as exc:
        raise OutputError(exc) from exc


def print_json(data: dict[str, Any]) -> None:
    echo(json.dumps(data, sort_keys=True))


def error_payload(error: TrackerError) -> dict[str, Any]:
    """The JSON line for an error on stderr: {"error", "reason", "message"} and details."""
    if isinstance(error, NoStatusAvailable):
        return {
            "error": "no status available",
            "reason": "unavailable",
            "message": error_text(error).removeprefix("error: "),
            "daemon": error_json(error.daemon_error),
            "status_file": error_json(error.file_error),
        }
    return {"error": str(error), **error_json(error)}


def error_text(error: TrackerError) -> str:
    if isinstance(error, NoStatusAvailable):
        note = f"; {error.note}" if error.note else ""
        return f"error: no status: trackerd: {error.daemon_error}; and {error.file_error}{note}"
    return f"error: {error}"


def fail(error: TrackerError, as_json: bool, code: int = EXIT_UNAVAILABLE) -> NoReturn:
    """One line on stderr, then exit."""
    echo(json.dumps(error_payload(error), sort_keys=True) if as_json else error_text(error), True)
    raise typer.Exit(code)


def usage_error(message: str, as_json: bool) -> NoReturn:
    """A usage error found after parsing, reported as typer reports its own."""
    if as_json:
        echo(json.dumps({"error": message, "reason": "usage", "message": message}), True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.BadParameter(message)
