"""The fuzz campaign: mutated and hypothesis-generated inputs against the decoder and a
daemon, and mutated costly domain names against the normaliser.

Besides crashes, a time oracle: an input that takes the decoder or the daemon
longer than time_bound, or a value that takes the normaliser longer than
value_bound, is a finding (issue 12 §1). A slow one is timed twice more and only
the least of the three counts, so that one preemption on a busy machine is not
taken for a finding.
"""

from __future__ import annotations

import contextlib
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz.corpus import mutated_inputs
from fuzz.hostile_names import SHAPES, variant
from fuzz.targets import DaemonTarget, decode_everything
from servertracker.connection import DaemonConnection
from servertracker.errors import ProtocolError
from trackerd.core.normalise import classify_sender

CONTROL = [
    ("192.0.2.1", "user@example.com"),
    ("192.0.2.2", "x@[198.51.100.1]"),
    ("::1", "b@example.org"),
]
CONTROL_COUNTS = (3, 2, 1)
#: Seconds one input may take the decoder, or the daemon from connect to close.
DEFAULT_TIME_BOUND = 1.0
#: Seconds one value may take the normaliser: ten times the target of issue 12
#: (200 us), so that only a real regression, not a busy machine, is a finding.
DEFAULT_VALUE_BOUND = 0.002


@dataclass(frozen=True)
class SlowInput:
    """A finding of the time oracle: where, how long (the least of three), what."""

    where: str  # "decoder", "daemon" or "normaliser"
    seconds: float
    data: bytes


@dataclass
class FuzzReport:
    inputs: int = 0
    decoded: int = 0
    decoder_errors: Counter[str] = field(default_factory=Counter)
    daemon_checks: int = 0
    rss_kib: list[int] = field(default_factory=list)
    seconds: float = 0.0
    values: int = 0
    slow: list[SlowInput] = field(default_factory=list)


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


def _least_time(action: Callable[[], object], first: float) -> float:
    """The least of first and two more timings of action."""
    best = first
    for _ in range(2):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


class Campaign:
    def __init__(
        self,
        socket_path: Path | None,
        daemon_pid: int | None = None,
        check_every: int = 2000,
        time_bound: float = DEFAULT_TIME_BOUND,
        value_bound: float = DEFAULT_VALUE_BOUND,
    ) -> None:
        self.report = FuzzReport()
        self.time_bound = time_bound
        self.value_bound = value_bound
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
        start = time.perf_counter()
        try:
            decode_everything(data)
            self.report.decoded += 1
        except ProtocolError as exc:
            self.report.decoder_errors[exc.code] += 1
        # Anything else propagates: the decoder must raise nothing but ProtocolError.
        self._time("decoder", data, lambda: _decode_quietly(data), start, self.time_bound)
        if self.target is not None:
            target = self.target
            start = time.perf_counter()
            target.send(data)
            self._time("daemon", data, lambda: target.send(data), start, self.time_bound)
            if self.report.inputs % self.check_every == 0:
                self.check_daemon()

    def feed_value(self, value: str) -> None:
        """One sender through the normaliser, timed."""
        self.report.values += 1
        start = time.perf_counter()
        classify_sender(value)
        self._time(
            "normaliser", value.encode(errors="surrogatepass"),
            lambda: classify_sender(value), start, self.value_bound,
        )  # fmt: skip

    def _time(
        self, where: str, data: bytes, again: Callable[[], object], start: float, bound: float
    ) -> None:
        took = time.perf_counter() - start
        if took > bound:
            took = _least_time(again, took)
            if took > bound:
                self.report.slow.append(SlowInput(where, took, data))

    def check_daemon(self) -> None:
        assert self.target is not None
        counts = _counts(self.target.socket_path)
        if counts != CONTROL_COUNTS:
            raise AssertionError(f"the counts changed under fuzzing: {counts} != {CONTROL_COUNTS}")
        self.report.daemon_checks += 1
        self.report.rss_kib.append(_rss_kib(self.daemon_pid))


def _decode_quietly(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_everything(data)


def run_mutations(campaign: Campaign, count: int, seed_value: int) -> None:
    for data in mutated_inputs(count, seed_value):
        campaign.feed(data)


# What a mutation of a name inserts: the code points idna's costly rules look at.
_NAME_PIECES = (
    "\u30fb", "\u30a2", "\u0661", "\u06f1", "\u200c", "\u200d", "\u094d", "\u0628",
    "\u064b", "\u0375", "\u03b1", "\u05f3", "\u05d0", "\u00b7", "l", "\u00e4", "\u4e00",
    "\ufdfa", "\u00ad", "\u3002", ".", "-", "xn--", "a", "\u0301",
)  # fmt: skip


def mutated_names(count: int, seed_value: int) -> list[str]:
    """Senders made from the costly shapes of hostile_names.py, bent: pieces that
    idna's rules look at inserted, runs repeated or cut, lengths around the limits."""
    rng = random.Random(seed_value)
    shapes = list(SHAPES)
    values = []
    for _ in range(count):
        name = variant(rng.choice(shapes), rng.randrange(10_000))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(name) + 1)
            choice = rng.randrange(4)
            if choice == 0:
                name = name[:at] + rng.choice(_NAME_PIECES) * rng.randint(1, 60) + name[at:]
            elif choice == 1:
                name = name[:at] + name[at + rng.randint(1, 40) :]
            elif choice == 2:
                name = name[:at] + name[at : at + rng.randint(1, 30)] * 2 + name[at:]
            else:
                name = name[: rng.choice([63, 64, 200, 253, 254, 255, 300])]
        values.append("u@" + name)
    return values


def run_names(campaign: Campaign, count: int, seed_value: int) -> None:
    for value in mutated_names(count, seed_value):
        campaign.feed_value(value)


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
    names: int = 0,
    time_bound: float = DEFAULT_TIME_BOUND,
    value_bound: float = DEFAULT_VALUE_BOUND,
) -> FuzzReport:
    """count inputs in all: two thirds mutated, one third hypothesis-generated; the
    daemon is checked before, every check_every inputs, and after. Then names
    mutated costly senders through the normaliser. Every one is timed."""
    campaign = Campaign(socket_path, daemon_pid, check_every, time_bound, value_bound)
    start = time.monotonic()
    run_mutations(campaign, count - count // 3, seed_value)
    run_hypothesis(campaign, count // 3, seed_value)
    run_names(campaign, names, seed_value)
    if campaign.target is not None:
        campaign.check_daemon()
    campaign.report.seconds = time.monotonic() - start
    return campaign.report
