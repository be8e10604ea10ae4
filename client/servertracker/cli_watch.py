"""trackerctl watch: a refreshing view of the counts and how fast they grow.

Rates are per second, on screen as in --json's ``per_second``; the first refresh
has no rate yet (nothing to compare with) and shows none. watch leaves with the
exit code its last refresh would have given as `trackerctl status`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from servertracker._format import uptime_text
from servertracker._watch_screen import WatchScreen
from servertracker.cli_common import (
    EXIT_FILE_ONLY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    JsonOption,
    RuntimeDirOption,
    SocketOption,
    TimeoutOption,
    echo,
    error_payload,
    error_text,
    print_json,
    target,
)
from servertracker.status_source import NoStatusAvailable, StatusReport, fetch_status

#: The fields whose growth watch shows.
RATE_FIELDS = ("unique_conn_ips", "unique_domains", "unique_ip_servers", "records")


def watch(
    ctx: typer.Context,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            "-n",
            metavar="SECONDS",
            min=0.1,
            max=3600,
            help="Seconds between refreshes.",
        ),
    ] = 2.0,
    count: Annotated[
        int,
        typer.Option(
            "--count", metavar="N", min=0, help="Stop after this many refreshes (0: until Ctrl-C)."
        ),
    ] = 0,
    socket: SocketOption = None,
    runtime_dir: RuntimeDirOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """A refreshing view of the counts and how fast they grow (per second). Ctrl-C leaves.

    With --json, one JSON object per refresh, one per line; "per_second" is empty in
    the first. Exits with the code the last refresh would have given as `status`.
    """
    where = target(ctx, socket, runtime_dir, as_json, timeout)
    clear = sys.stdout.isatty() and not where.as_json
    previous: tuple[float, dict[str, int]] | None = None
    screen = WatchScreen(unicode=(sys.stdout.encoding or "").lower().replace("-", "") == "utf8")
    shown = 0
    code = EXIT_INTERRUPTED
    try:
        while True:
            report: StatusReport | None = None
            try:
                report = fetch_status(where.socket_path, where.status_dir, where.timeout)
            except NoStatusAvailable as exc:
                code = EXIT_UNAVAILABLE
                error = where.explain(exc)
                if where.as_json:
                    echo(json.dumps(error_payload(error), sort_keys=True), err=True)
                else:
                    echo(error_text(error), err=True)
            if report is not None:
                code = EXIT_OK if report.source == "live" else EXIT_FILE_ONLY
                values = {f: getattr(report.status, f) for f in RATE_FIELDS}
                now = time.monotonic()
                rates: dict[str, float] | None = None
                if previous is not None and now > previous[0]:
                    rates = {f: (values[f] - previous[1][f]) / (now - previous[0]) for f in values}
                previous = (now, values)
                if where.as_json:
                    data = report.to_json()
                    data["per_second"] = {f: round(r, 3) for f, r in (rates or {}).items()}
                    print_json(data)
                else:
                    note = None
                    if report.source == "file":
                        # Own line: a socket path makes it long (status says it alike).
                        note = f"trackerd is not answering: {report.daemon_error}."
                    last = bool(count) and shown + 1 >= count
                    text = screen.render(
                        report.status, rates, uptime_text(report), note, leave_hint=not last
                    )
                    echo(("\x1b[H\x1b[2J" if clear else "") + text + ("" if clear else "\n"))
            shown += 1
            if count and shown >= count:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        if not where.as_json:
            echo("")
    raise typer.Exit(code)
