"""Human-readable rendering for trackerctl, in the spirit of the Go original's CLI."""

from __future__ import annotations

import time

from servertracker.status import Status
from servertracker.status_source import StatusReport

#: (label, Status field) for the three counts, in the original's order.
COUNTS = (
    ("Connection IPs", "unique_conn_ips"),
    ("Domain servers", "unique_domains"),
    ("IP servers", "unique_ip_servers"),
)


def format_duration(seconds: float) -> str:
    """``2d 5h 3m``; seconds only under a minute."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if not (days or hours or minutes):
        return f"{secs}s"
    parts = [f"{days}d" if days else "", f"{hours}h" if days or hours else "", f"{minutes}m"]
    return " ".join(p for p in parts if p)


def format_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _count(status: Status, field: str) -> str:
    value = getattr(status, field)
    estimated = field in getattr(status, "estimated", ())
    return f"~{value:,} (estimate)" if estimated else f"{value:,}"


def uptime_text(report: StatusReport) -> str:
    """ "up 3 h 2 min", or "... at that write" for a status file (status and watch say it alike)."""
    up = f"up {format_duration(report.uptime)}"
    return up if report.source == "live" else f"{up} at that write"


def render_status(report: StatusReport) -> str:
    status = report.status
    lines = []
    if report.source == "file":
        lines += [
            f"trackerd is not answering: {report.daemon_error}.",
            f"These counts come from {report.status_file}, written "
            f"{format_duration(report.file_age or 0)} ago.",
            "",
        ]
    lines.append(f"Boot time: {format_time(status.boot_time)} ({uptime_text(report)})")
    lines.append("Email servers seen (since last restart):")
    for label, field in COUNTS:
        lines.append(f"  {label + ':':<16}{_count(status, field)}")
    from servertracker._watch_screen import window_lines  # it imports this module

    lines += window_lines(status)
    lines.append(
        f"Records received: {status.records:,} (rejected: "
        f"{plural(status.rejected_conn_ips, 'connection IP')}, "
        f"{plural(status.rejected_senders, 'sender')})"
    )
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    """``1 connection IP``, ``2 connection IPs``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
