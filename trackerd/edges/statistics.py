"""The statistics line: counts only (never a value), logged at an interval and at SIGHUP.

As Postfix's anvil does, one line says what the daemon has seen and done: the
distinct counts, records, and what the listeners did with connections. It is
also what systemd's STATUS= shows, in its short form (summarise()).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import anyio

from servertracker.error_codes import ERR_BUSY, ERR_FORBIDDEN
from servertracker.status import Health, Status
from trackerd.core.wording import plural
from trackerd.edges.status_writer import StatusWriter
from trackerd.edges.stream_server import StreamServer

log = logging.getLogger("trackerd")


def summarise(status: Status) -> str:
    """One line of counts, for logs and systemd's STATUS=: "1 connection IP, 2 domains"."""
    return (
        f"{plural(status.unique_conn_ips, 'connection IP')}, "
        f"{plural(status.unique_domains, 'domain')}, "
        f"{plural(status.unique_ip_servers, 'IP server')}; {plural(status.records, 'record')}"
    )


def statistics_line(status: Status, servers: Sequence[StreamServer], writer: StatusWriter) -> str:
    connections = sum(s.connections_total for s in servers)
    rejected = status.rejected_conn_ips + status.rejected_senders
    return (
        f"statistics: {summarise(status)}, {plural(rejected, 'rejected value')}; "
        f"{plural(connections, 'connection')} ({sum(s.connections_open for s in servers)} "
        f"open), {sum(s.refused for s in servers)} refused by the allow-lists, "
        f"{sum(s.busy for s in servers)} turned away busy, "
        f"{sum(s.timeouts for s in servers)} timed out, "
        f"{plural(sum(s.protocol_errors for s in servers), 'protocol error')}; "
        f"{plural(writer.writes, 'status write')}, {writer.failures} failed"
    )


def collect_health(servers: Sequence[StreamServer], writer: StatusWriter) -> Health:
    """The daemon's health counters, every listener summed (for the status and metrics)."""
    stats = [server.stats() for server in servers]
    errors: Counter[str] = Counter()
    for each in stats:
        errors.update(each.protocol_errors)
    return Health(
        connections_accepted=sum(s.connections_total for s in stats),
        connections_refused={
            ERR_FORBIDDEN: sum(s.refused for s in stats),
            ERR_BUSY: sum(s.busy for s in stats),
        },
        connection_timeouts=sum(s.timeouts for s in stats),
        protocol_errors=dict(errors),
        status_writes=writer.writes,
        status_write_failures=writer.failures,
        interned_messages=sum(s.interned_messages for s in stats),
    )


class StatisticsLog:
    """Logs statistics_line() every interval seconds; the interval can change meanwhile."""

    def __init__(self, line: Callable[[], str], interval: float) -> None:
        self._line = line
        self._interval = interval
        self._waiting: anyio.CancelScope | None = None

    def log_now(self) -> None:
        log.info("%s", self._line())

    def set_interval(self, interval: float) -> None:
        """Takes effect at once: the wait under way starts again with the new interval."""
        self._interval = interval
        if self._waiting is not None:
            self._waiting.cancel()

    async def run(self) -> None:
        """Cancel to stop."""
        while True:
            with anyio.CancelScope() as self._waiting:
                if self._interval > 0:
                    await anyio.sleep(self._interval)
                    self.log_now()
                else:
                    await anyio.sleep_forever()
