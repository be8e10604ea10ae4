"""Prometheus and OpenMetrics text from a Status snapshot. Pure, no I/O.

trackerctl metrics prints it; trackerd --metrics-textfile writes it for
node_exporter's textfile collector. Both render one Status (the live daemon's,
or the status file's, said in servertracker_status_source), so the names are
defined here once. prometheus_client builds the text: it checks names and
escapes label values, and speaks OpenMetrics too. It is imported only here, and
this module only by trackerctl's metrics command and by trackerd: a worker that
imports servertracker never loads it.

Labels come from fixed sets only (categories, window names from trackerd's own
--windows, refusal reasons, protocol error codes), never from a peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from servertracker.error_codes import PROTOCOL_ERROR_CODES, REFUSAL_REASONS
from servertracker.status import Status

PREFIX = "servertracker"
#: The since-boot count's window label.
BOOT_WINDOW = "boot"
#: Status field -> the category label (what is counted, in Prometheus's lower_snake).
CATEGORIES = {
    "unique_conn_ips": "connection_ip",
    "unique_domains": "domain",
    "unique_ip_servers": "ip_literal",
}
Source = Literal["live", "file"]
#: The unit of every *_seconds family: OpenMetrics says it in a UNIT line (and
#: Prometheus's parser checks the name ends with it); the 0.0.4 text has no such line.
SECONDS = "seconds"

#: Every metric name this module can emit (the Grafana example's test checks them).
METRIC_NAMES = frozenset(
    f"{PREFIX}_{name}"
    for name in (
        "distinct_servers",
        "window_seconds",
        "estimated",
        "records_total",
        "rejected_total",
        "boot_time_seconds",
        "status_updated_time_seconds",
        "status_source",
        "build_info",
        "connections_accepted_total",
        "connections_refused_total",
        "connection_timeouts_total",
        "protocol_errors_total",
        "status_writes_total",
        "status_write_failures_total",
        "interned_messages_total",
    )
)


class _StatusCollector(Collector):
    def __init__(self, status: Status, source: Source, version: str) -> None:
        self._status = status
        self._source = source
        self._version = version

    def collect(self) -> Iterator[Metric]:
        status = self._status
        distinct = GaugeMetricFamily(
            f"{PREFIX}_distinct_servers",
            "Distinct values seen, by category, since boot or over a sliding window.",
            labels=["category", "window"],
        )
        for field, category in CATEGORIES.items():
            distinct.add_metric([category, BOOT_WINDOW], getattr(status, field))
            for counts in status.windows:
                distinct.add_metric([category, counts.window], getattr(counts, field))
        yield distinct
        lengths = GaugeMetricFamily(
            f"{PREFIX}_window_seconds",
            "Length of each sliding window.",
            labels=["window"],
            unit=SECONDS,
        )
        for counts in status.windows:
            lengths.add_metric([counts.window], counts.seconds)
        yield lengths
        estimated = GaugeMetricFamily(
            f"{PREFIX}_estimated",
            "1 if the category's counts are HyperLogLog estimates, 0 if exact.",
            labels=["category"],
        )
        for field, category in CATEGORIES.items():
            estimated.add_metric([category], 1 if field in status.estimated else 0)
        yield estimated
        yield CounterMetricFamily(
            f"{PREFIX}_records", "(connection IP, sender) pairs received.", value=status.records
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected",
            "Values not counted because they were malformed, by field.",
            labels=["field"],
        )
        rejected.add_metric(["conn_ip"], status.rejected_conn_ips)
        rejected.add_metric(["sender"], status.rejected_senders)
        yield rejected
        yield GaugeMetricFamily(
            f"{PREFIX}_boot_time_seconds",
            "Unix time the daemon started; the counts start again there.",
            value=status.boot_time,
            unit=SECONDS,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_status_updated_time_seconds",
            "Unix time of this snapshot.",
            value=status.updated_time,
            unit=SECONDS,
        )
        source = GaugeMetricFamily(
            f"{PREFIX}_status_source",
            "1 for where these numbers come from: the live daemon, or its status file.",
            labels=["source"],
        )
        source.add_metric([self._source], 1)
        yield source
        # An info family: OpenMetrics types it `info` (its sample is still
        # servertracker_build_info); the 0.0.4 text types it gauge, as before.
        yield InfoMetricFamily(
            f"{PREFIX}_build", "The version that rendered this.", value={"version": self._version}
        )
        yield from self._health()

    def _health(self) -> Iterator[Metric]:
        health = self._status.health
        if health is None:
            return
        yield CounterMetricFamily(
            f"{PREFIX}_connections_accepted",
            "Connections accepted on every listener (served or refused after).",
            value=health.connections_accepted,
        )
        refused = CounterMetricFamily(
            f"{PREFIX}_connections_refused",
            "Connections turned away, by reason.",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], health.connections_refused.get(reason, 0))
        yield refused
        yield CounterMetricFamily(
            f"{PREFIX}_connection_timeouts",
            "Connections closed for being idle, slow to send a frame or to read a reply.",
            value=health.connection_timeouts,
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_protocol_errors",
            "Connections closed after a protocol error, by error code.",
            labels=["code"],
        )
        for code in PROTOCOL_ERROR_CODES:
            errors.add_metric([code], health.protocol_errors.get(code, 0))
        yield errors
        yield CounterMetricFamily(
            f"{PREFIX}_status_writes", "Status file writes.", value=health.status_writes
        )
        yield CounterMetricFamily(
            f"{PREFIX}_status_write_failures",
            "Status file writes that failed (the daemon keeps counting and retries).",
            value=health.status_write_failures,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_interned_messages",
            "Record messages that came as references into value tables ('interned').",
            value=health.interned_messages,
        )


def render(status: Status, *, source: Source, version: str, openmetrics: bool = False) -> bytes:
    """The text exposition of one status snapshot (Prometheus 0.0.4, or OpenMetrics 1.0)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status, source, version))
    if openmetrics:
        text: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        return text
    return generate_latest(registry)
