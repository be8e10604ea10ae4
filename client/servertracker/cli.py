"""trackerctl: the admin's command line for trackerd (typer).

Commands: status, ping, record, watch; the common options (--socket,
--runtime-dir, --timeout, --json) go before or after the command. Commands
that live in their own modules (servertracker/cli_*.py, built on cli_common)
are registered at the end of this file, one line each. main() turns every
error into one line and an exit code from cli_common's table: no tracebacks.
Starting must stay fast: this module imports neither anyio nor trackerd.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from servertracker import _format, cli_fleet, cli_metrics, cli_watch
from servertracker.cli_common import (
    EXIT_CODES_HELP,
    EXIT_FILE_ONLY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    JsonOption,
    OutputError,
    RuntimeDirOption,
    SocketOption,
    TimeoutOption,
    echo,
    fail,
    print_json,
    target,
)
from servertracker.cli_record import record
from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable, ProtocolError
from servertracker.status_source import NoStatusAvailable, fetch_status

__all__ = [
    "EXIT_FILE_ONLY",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "app",
    "main",
]

app = typer.Typer(
    name="trackerctl",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # only here: it costs milliseconds

        from servertracker import accel

        # The library's path: what a worker's import of servertracker gets here.
        path = accel.describe(accel.LIBRARY_MODULES)
        echo(f"trackerctl {version('servertracker')}; servertracker library: {path}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def common_options(
    ctx: typer.Context,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_show_version,
            help="Print trackerctl's version and which code path the servertracker "
            "library runs here (its C extension, or pure Python and why), and exit.",
        ),
    ] = False,
) -> None:
    """Ask trackerd how many distinct mail servers have talked to this SMTP endpoint.

    The options below may also follow the command: trackerctl --json status and
    trackerctl status --json are the same.
    """
    ctx.obj = {"socket": socket, "runtime_dir": runtime_dir, "as_json": as_json, "timeout": timeout}


@app.command()
def status(
    ctx: typer.Context,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Show the counts: from the daemon, or else from its status file (and say so)."""
    where = target(ctx, socket, runtime_dir, as_json, timeout)
    try:
        report = fetch_status(where.socket_path, where.status_dir, where.timeout)
    except NoStatusAvailable as exc:
        fail(where.explain(exc), where.as_json)
    if where.as_json:
        print_json(report.to_json())
    else:
        echo(_format.render_status(report))
    if report.source == "file":
        raise typer.Exit(EXIT_FILE_ONLY)


@app.command()
def ping(
    ctx: typer.Context,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Health check for monitoring: exit 0 and the round-trip time if trackerd answers."""
    where = target(ctx, socket, runtime_dir, as_json, timeout)
    try:
        with DaemonConnection(where.socket_path, timeout=where.timeout) as conn:
            rtt = conn.ping()
    except (DaemonUnavailable, ProtocolError) as exc:
        fail(where.explain(exc), where.as_json)
    if where.as_json:
        print_json({"ok": True, "rtt_ms": round(rtt * 1000, 3), "socket": str(where.socket_path)})
    else:
        echo(f"pong from {where.socket_path} in {rtt * 1000:.2f} ms")


# Commands from other modules (built on cli_common) register here, one line each:
# app.command()(function) for a command, app.add_typer(sub_app, name=...) for a group.
app.command()(record)
app.command()(cli_watch.watch)
app.add_typer(cli_fleet.app, name="fleet")
app.command()(cli_metrics.metrics)


#: What a failed write of trackerctl's own output raises (a full disk, a closed pipe).
_WRITE_ERRORS = (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EBADF)


def _wants_json(args: Sequence[str]) -> bool:
    """--json among the options (before any "--"): usage errors are then JSON too."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """The trackerctl console script: every failure is one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(args, prog_name="trackerctl", standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except OutputError as exc:
        code = _output_failed(exc, _wants_json(args))
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        code = _output_failed(OutputError(exc), _wants_json(args))  # typer's own (--help)
    except Exception as exc:
        # click's errors (typer's vendored copy): UsageError, BadParameter, ...
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", 0), int)):
            raise
        message: str = exc.format_message()
        code = exc.exit_code  # type: ignore[attr-defined]
        if _wants_json(args):
            reason = "usage" if code == EXIT_USAGE else "error"
            line = {"error": message, "reason": reason, "message": message}
            print(json.dumps(line, sort_keys=True), file=sys.stderr)
        else:
            exc.show()  # type: ignore[attr-defined]
    return code


def _output_failed(error: OutputError, as_json: bool) -> int:
    # Point stdout at /dev/null so that the interpreter's final flush cannot fail again.
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        text = f"cannot write the output: {error}"
        if error.quiet:
            pass
        elif as_json:
            line = {"error": text, "reason": "output", "message": text}
            print(json.dumps(line, sort_keys=True), file=sys.stderr)
        else:
            print(f"trackerctl: {text}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return EXIT_OUTPUT


if __name__ == "__main__":
    sys.exit(main())
