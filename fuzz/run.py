"""The fuzz campaign: mutated and hypothesis-generated inputs against the decoder and a daemon."""

from __future__ import annotations

import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz.corpus import mutated_inputs
from fuzz.targets import DaemonTarget, decode_everything
from servertracker.connection import DaemonConnection
from servertracker.errors import ProtocolError

CONTROL = [
    ("192.0.2.1", "user@example.com"),
    ("192.0.2.2", "x@[198.51.100.1]"),
    ("::1", "b@example.org"),
]
CONTROL_COUNTS = (3, 2, 1)


@dataclass
class FuzzReport:
    inputs: int = 0
    decoded: int = 0
    decoder_errors: Counter[str] = field(default_factory=Counter)
    daemon_checks: int = 0
    rss_kib: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _counts(socket_path: Path) -> tuple[int, int, int]:
    with DaemonConnection(socket_path, timeout=10) as conn:
        status = conn.status()
    return (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)


def _rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Campaign:
    def __init__(
        self, socket_path: Path | None, daemon_pid: int | None = None, check_every: int = 2000
    ) -> None:
        self.report = FuzzReport()
        self.target = DaemonTarget(socket_path) if socket_path else None
        self.daemon_pid = daemon_pid
        self.check_every = check_every
        if socket_path is not None:
            with DaemonConnection(socket_path) as conn:
                conn.record(CONTROL)
                conn.ping()
            self.check_daemon()

    def feed(self, data: bytes) -> None:
        self.report.inputs += 1
        try:
            decode_everything(data)
            self.report.decoded += 1
        except ProtocolError as exc:
            self.report.decoder_errors[exc.code] += 1
        # Anything else propagates: the decoder must raise nothing but ProtocolError.
        if self.target is not None:
            self.target.send(data)
            if self.report.inputs % self.check_every == 0:
                self.check_daemon()

    def check_daemon(self) -> None:
        assert self.target is not None
        counts = _counts(self.target.socket_path)
        if counts != CONTROL_COUNTS:
            raise AssertionError(f"the counts changed under fuzzing: {counts} != {CONTROL_COUNTS}")
        self.report.daemon_checks += 1
        self.report.rss_kib.append(_rss_kib(self.daemon_pid))


def run_mutations(campaign: Campaign, count: int, seed_value: int) -> None:
    for data in mutated_inputs(count, seed_value):
        campaign.feed(data)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Message-shaped values find the deeper paths sooner than arbitrary ones.
_types = st.sampled_from(["record", "status", "ping", "pong", "error", "x"])
_pair_items = st.one_of(st.none(), st.text(max_size=30), st.integers(-(2**63), 2**63))
_messages = st.one_of(
    _values,
    st.tuples(st.integers(0, 3), _types, _values).map(list),
    st.tuples(
        st.just(1), st.just("record"), st.lists(st.lists(_pair_items, max_size=3), max_size=8)
    ).map(list),
)


def run_hypothesis(campaign: Campaign, count: int, seed_value: int) -> None:
    @seed(seed_value)
    @settings(
        max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(_messages, st.booleans())
    def one(value: object, lie_about_length: bool) -> None:
        body = msgpack.packb(value, use_bin_type=True)
        size = len(body) + 1 if lie_about_length else len(body)
        campaign.feed(struct.pack(">I", size) + body)

    one()


def run(
    count: int,
    seed_value: int,
    socket_path: Path | None,
    daemon_pid: int | None,
    check_every: int = 2000,
) -> FuzzReport:
    """count inputs in all: two thirds mutated, one third hypothesis-generated; the
    daemon is checked before, every check_every inputs, and after."""
    campaign = Campaign(socket_path, daemon_pid, check_every)
    start = time.monotonic()
    run_mutations(campaign, count - count // 3, seed_value)
    run_hypothesis(campaign, count // 3, seed_value)
    if campaign.target is not None:
        campaign.check_daemon()
    campaign.report.seconds = time.monotonic() - start
    return campaign.report
