"""trackerctl: the admin's command line (a first version: `trackerctl status`)."""

from __future__ import annotations

import sys

import typer

from servertracker.connection import DaemonConnection
from servertracker.errors import DaemonUnavailable, StatusFileError
from servertracker.paths import resolve_runtime_dir, resolve_socket_path
from servertracker.status import read_status_file

app = typer.Typer(
    help="Ask trackerd how many distinct mail servers it has seen.", no_args_is_help=True
)


@app.command()
def status(
    runtime_dir: str | None = typer.Option(None, help="trackerd's runtime directory"),
    socket: str | None = typer.Option(None, help="trackerd's socket"),
) -> None:
    """Show the counts, from the daemon or else from its status file."""
    directory = resolve_runtime_dir(runtime_dir)
    try:
        with DaemonConnection(resolve_socket_path(socket, directory)) as conn:
            current = conn.status()
    except DaemonUnavailable as exc:
        typer.echo(f"trackerd not reachable: {exc}; reading the status file", err=True)
        try:
            current = read_status_file(directory)
        except StatusFileError as file_error:
            typer.echo(f"error: {file_error}", err=True)
            raise typer.Exit(3) from None
    typer.echo(f"Connection IPs: {current.unique_conn_ips}")
    typer.echo(f"Domain servers: {current.unique_domains}")
    typer.echo(f"IP servers:     {current.unique_ip_servers}")


def main() -> None:
    sys.exit(app())
