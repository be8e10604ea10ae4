"""trackerctl: the admin's command line for trackerd (typer).

Commands: status, ping, watch, record. Every command takes --socket,
--runtime-dir (resolved exactly as the daemon resolves them) and --json.
Starting must stay fast: this module imports neither anyio nor trackerd.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from servertracker import _format
from servertracker.cli_fleet import fleet_app
from servertracker.connection import DEFAULT_TIMEOUT, DaemonConnection
from servertracker.errors import DaemonUnavailable, ProtocolError, TrackerError
from servertracker.paths import RUNTIME_DIR_OPTION, SOCKET_OPTION, resolve_paths
from servertracker.status_source import NoStatusAvailable, error_json, fetch_status

# Exit codes: the one place they are defined (README and --help list them).
EXIT_OK = 0
EXIT_USAGE = 2  # typer's own, for a mistyped command line
EXIT_FILE_ONLY = 3  # status: the daemon did not answer; the counts come from the file
EXIT_UNAVAILABLE = 4  # nothing could answer: no daemon (and, for status, no readable file)

EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} answered by the daemon; {EXIT_USAGE} usage error; "
    f"{EXIT_FILE_ONLY} status only from the status file (daemon not reachable); "
    f"{EXIT_UNAVAILABLE} neither the daemon nor the status file could answer."
)

app = typer.Typer(
    help="Ask trackerd how many distinct mail servers have talked to this SMTP endpoint.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SocketOption = Annotated[
    Path | None,
    typer.Option(
        SOCKET_OPTION.flag,
        help=f"{SOCKET_OPTION.help}.",
        show_default=False,
    ),
]
RuntimeDirOption = Annotated[
    Path | None,
    typer.Option(
        RUNTIME_DIR_OPTION.flag,
        help=f"{RUNTIME_DIR_OPTION.help}.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object (errors: one JSON line on stderr).")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.01, max=300, help="Seconds to wait for the daemon's answer."),
]


def _paths(socket: Path | None, runtime_dir: Path | None) -> tuple[Path, Path]:
    paths = resolve_paths(socket, runtime_dir)
    return paths.socket, paths.runtime_dir


def _print_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, sort_keys=True))


def _fail(error: TrackerError, as_json: bool, code: int = EXIT_UNAVAILABLE) -> NoReturn:
    """One line on stderr, then exit."""
    if isinstance(error, NoStatusAvailable):
        details = {
            "daemon": error_json(error.daemon_error),
            "status_file": error_json(error.file_error),
        }
        text = f"error: no status: trackerd: {error.daemon_error}; and {error.file_error}"
        payload: dict[str, Any] = {"error": "no status available", **details}
    else:
        payload = {"error": str(error), **error_json(error)}
        text = f"error: {error}"
    typer.echo(json.dumps(payload, sort_keys=True) if as_json else text, err=True)
    raise typer.Exit(code)


@app.command()
def status(
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Show the counts: from the daemon, or else from its status file (and say so)."""
    socket_path, directory = _paths(socket, runtime_dir)
    try:
        report = fetch_status(socket_path, directory, timeout)
    except NoStatusAvailable as exc:
        _fail(exc, as_json)
    if as_json:
        _print_json(report.to_json())
    else:
        typer.echo(_format.render_status(report))
    if report.source == "file":
        raise typer.Exit(EXIT_FILE_ONLY)


@app.command()
def ping(
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Health check for monitoring: exit 0 and the round-trip time if trackerd answers."""
    socket_path, _ = _paths(socket, runtime_dir)
    try:
        with DaemonConnection(socket_path, timeout=timeout) as conn:
            rtt = conn.ping()
    except (DaemonUnavailable, ProtocolError) as exc:
        _fail(exc, as_json)
    if as_json:
        _print_json({"ok": True, "rtt_ms": round(rtt * 1000, 3), "socket": str(socket_path)})
    else:
        typer.echo(f"pong from {socket_path} in {rtt * 1000:.2f} ms")


@app.command()
def record(
    conn_ip: Annotated[
        str, typer.Argument(help="The SMTP client's IP address.", show_default=False)
    ],
    sender: Annotated[
        str,
        typer.Argument(
            help='The MAIL FROM address or its domain ("" or "<>" for the null sender).'
        ),
    ],
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Record one connection (for shell scripts and MTA hooks). Silent on success."""
    socket_path, _ = _paths(socket, runtime_dir)
    try:
        with DaemonConnection(socket_path, timeout=timeout) as conn:
            conn.record([(conn_ip, sender)])
            conn.ping()  # the reply comes after the record is applied
    except (DaemonUnavailable, ProtocolError) as exc:
        _fail(exc, as_json)
    if as_json:
        _print_json({"ok": True})


@app.command()
def watch(
    interval: Annotated[
        float,
        typer.Option("--interval", "-n", min=0.1, max=3600, help="Seconds between refreshes."),
    ] = 2.0,
    count: Annotated[
        int,
        typer.Option("--count", min=0, help="Stop after this many refreshes (0: until Ctrl-C)."),
    ] = 0,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """A refreshing view of the counts and how fast they grow. Ctrl-C leaves.

    With --json, one JSON object per refresh, one per line.
    """
    socket_path, directory = _paths(socket, runtime_dir)
    clear = sys.stdout.isatty() and not as_json
    previous: tuple[float, dict[str, int]] | None = None
    shown = 0
    try:
        while True:
            try:
                report = fetch_status(socket_path, directory, timeout)
            except NoStatusAvailable as exc:
                report = None
                problem = str(exc)
            if report is not None:
                values = {
                    f: getattr(report.status, f)
                    for f in ("unique_conn_ips", "unique_domains", "unique_ip_servers", "records")
                }
                now = time.monotonic()
                rates: dict[str, float] = {}
                if previous is not None and now > previous[0]:
                    rates = {f: (values[f] - previous[1][f]) / (now - previous[0]) for f in values}
                previous = (now, values)
                if as_json:
                    data = report.to_json()
                    data["per_second"] = {f: round(r, 3) for f, r in rates.items()}
                    _print_json(data)
                else:
                    note = (
                        "(live)"
                        if report.source == "live"
                        else f"(from the file: {report.daemon_error})"
                    )
                    screen = _format.render_watch(report.status, rates, note)
                    typer.echo(
                        ("\x1b[H\x1b[2J" if clear else "") + screen + ("" if clear else "\n")
                    )
            elif as_json:
                typer.echo(json.dumps({"error": problem}), err=True)
            else:
                typer.echo(f"no status: {problem}", err=True)
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if not as_json:
            typer.echo("")


app.add_typer(fleet_app, name="fleet")  # trackerctl fleet: cli_fleet.py, docs/fleet.md


def main() -> None:
    """The trackerctl console script."""
    sys.exit(app())


if __name__ == "__main__":
    main()
