"""trackerctl metrics: the Prometheus (or OpenMetrics) text of the live daemon.

When the daemon does not answer, the text of its status file instead, with
``servertracker_status_source{source="file"} 1`` and exit code 3, as `status`
does. prometheus_client is imported only when this command runs, so trackerctl's
other commands start as fast as before.
"""

from __future__ import annotations

from typing import Annotated

import typer

from servertracker.cli_common import (
    EXIT_FILE_ONLY,
    RuntimeDirOption,
    SocketOption,
    TimeoutOption,
    echo,
    fail,
    target,
)
from servertracker.status_source import NoStatusAvailable, fetch_status


def metrics(
    ctx: typer.Context,
    openmetrics: Annotated[
        bool,
        typer.Option("--openmetrics", help="OpenMetrics 1.0 text instead of Prometheus 0.0.4."),
    ] = False,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    timeout: TimeoutOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Errors as one JSON line on stderr (the metrics stay in their format)."
        ),
    ] = False,
) -> None:
    """Print the metrics in Prometheus's text format: from the daemon, or else from its
    status file (marked servertracker_status_source{source="file"}, exit code 3).
    promtool check metrics reads the default output only: it rejects --openmetrics's
    text (unknown metric type "info"; docs/monitoring.md)."""
    from importlib.metadata import version

    from servertracker import exposition  # prometheus_client: only here

    where = target(ctx, socket, runtime_dir, as_json, timeout)
    try:
        report = fetch_status(where.socket_path, where.status_dir, where.timeout)
    except NoStatusAvailable as exc:
        fail(where.explain(exc), where.as_json)
    text = exposition.render(
        report.status,
        source=report.source,
        version=version("servertracker"),
        openmetrics=openmetrics,
    )
    echo(text.decode().rstrip("\n"))
    if report.source == "file":
        raise typer.Exit(EXIT_FILE_ONLY)
