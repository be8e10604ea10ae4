"""What one record_server() call costs an SMTP worker, and why its slowest calls are slow.

Run: ``python -m bench.record_cost [--rounds 5] [--calls 200000]``.

The calls record distinct connection IPs with bench.compare's senders of one
form (``--senders``, default ``mix``: what the flusher then splits and numbers,
so its interpreter-lock holds are as long as a real worker's; ``constant`` is
one sender throughout, as this benchmark used before). Each round runs every
condition once, in a rotated order: the daemon up, down
(the queue fills, then drops), stalled (SIGSTOP), and a control that calls a
function doing nothing in the same loop, daemon up and idle: what the machine
alone does to a busy loop. Each call is timed alone with perf_counter_ns; the
timer's own cost (the median of empty timings) is subtracted.

Every condition then runs a second time with the calling thread's context
switches and page faults read around each call (getrusage(RUSAGE_THREAD),
outside the timed span), to explain the calls over ``--slow-us``: "preempted"
(an involuntary switch: the kernel gave the core to another task), "waited" (a
voluntary switch: the thread blocked, on the interpreter lock or another lock),
"page fault", or none of these. With the daemon up, the flusher thread's
interpreter-lock holds are timed too: from taking a batch off the queue to the
send() that lets go of the lock, or to a pause between the steps of encoding a
batch (an instrumented subclass; two clock reads a hold), and
each slow call is checked for overlap with one.
"""

from __future__ import annotations

import json
import resource
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._support import BenchDaemon, arguments, summary, table
from bench.compare import FORMS, loadavg, sender
from servertracker import Client

CALLS = 200_000
SLOW_US = 50.0
FIRST_CALLS = 20
_clock = time.perf_counter_ns

Record = Callable[[str | None, str | None], None]


def _nothing(conn_ip: str | None, sender: str | None) -> None:
    """The control: a call that records nothing."""


class TimedClient(Client):
    """A Client that notes how long its flusher holds the interpreter lock per batch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # (start, end) in perf_counter_ns, and whether the kernel took the core away
        # from the flusher meanwhile (an involuntary switch while it held the lock).
        self.holds: list[tuple[int, int, bool]] = []
        self._hold_start = 0
        self._switches = 0

    def _take_batch(self, size: int) -> tuple[list[str | None], list[str | None]]:
        self._switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        self._hold_start = _clock()
        return super()._take_batch(size)

    def _write_out(self) -> None:
        self._end_hold()
        super()._write_out()

    def _pause(self) -> None:
        # The flusher pauses without the lock between the steps of encoding a
        # batch it has held long too: a hold ends there, and another starts after.
        holding = self._hold_start != 0
        self._end_hold()
        super()._pause()
        if holding:
            self._switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            self._hold_start = _clock()

    def _end_hold(self) -> None:
        if self._hold_start:
            end = _clock()
            switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            self.holds.append((self._hold_start, end, switches > self._switches))
            self._hold_start = 0


SENDER_FORMS = (*FORMS, "constant")


def _values(calls: int, senders: str) -> list[tuple[str, str]]:
    """Fresh (connection IP, sender) pairs: distinct IPs, senders of one form."""
    return [
        (
            f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "user@example.com" if senders == "constant" else sender(senders, i),
        )
        for i in range(calls)
    ]


def _timer_overhead() -> int:
    empty = []
    for _ in range(10_000):
        t0 = _clock()
        empty.append(_clock() - t0)
    return sorted(empty)[len(empty) // 2]


def time_calls(record: Record, calls: int = CALLS, senders: str = "mix") -> list[float]:
    """Per-call cost in microseconds."""
    overhead = _timer_overhead()
    clock = _clock
    costs = []
    for ip, value in _values(calls, senders):
        t0 = clock()
        record(ip, value)
        costs.append(max(0, clock() - t0 - overhead) / 1000)
    return costs


@dataclass
class SlowCall:
    start_ns: int
    us: float
    voluntary: int  # the thread blocked (the interpreter lock, another lock)
    involuntary: int  # the kernel gave its core to another task
    faults: int


def explain_calls(
    record: Record, calls: int, slow_us: float, senders: str = "mix"
) -> list[SlowCall]:
    """The calls over slow_us, with what happened to the calling thread during each."""
    overhead = _timer_overhead()
    clock, usage, thread = _clock, resource.getrusage, resource.RUSAGE_THREAD
    slow_ns = slow_us * 1000 + overhead
    slow = []
    for ip, value in _values(calls, senders):
        before = usage(thread)
        t0 = clock()
        record(ip, value)
        t1 = clock()
        if t1 - t0 > slow_ns:
            after = usage(thread)
            slow.append(SlowCall(t0, (t1 - t0 - overhead) / 1000,
                                 after.ru_nvcsw - before.ru_nvcsw,
                                 after.ru_nivcsw - before.ru_nivcsw,
                                 after.ru_minflt + after.ru_majflt
                                 - before.ru_minflt - before.ru_majflt))  # fmt: skip
    return slow


def first_calls(socket_path: Path, count: int = FIRST_CALLS) -> list[float]:
    """A process's first record_server(): it starts the flusher thread."""
    costs = []
    for i in range(count):
        client = Client(socket_path)
        t0 = _clock()
        client.record_server(f"192.0.2.{i}", "first@call.example")
        costs.append((_clock() - t0) / 1000)
        client.close(5)
    return costs


@dataclass
class Condition:
    costs: list[dict[str, float]] = field(default_factory=list)  # one summary a round
    slow: list[SlowCall] = field(default_factory=list)
    holds_us: list[float] = field(default_factory=list)
    preempted_holds_us: list[float] = field(default_factory=list)
    slow_in_hold: int = 0


def _overlaps(call: SlowCall, holds: list[tuple[int, int, bool]]) -> bool:
    end = call.start_ns + call.us * 1000
    return any(start < end and call.start_ns < stop for start, stop, _ in holds)


CONDITIONS = ("daemon up", "control: no recording", "daemon down", "daemon stalled")


def run(
    rounds: int = 1, calls: int = CALLS, slow_us: float = SLOW_US, senders: str = "mix"
) -> dict[str, Condition]:
    results = {name: Condition() for name in (*CONDITIONS, "first call (starts the thread)")}
    daemon = BenchDaemon().start()
    try:
        client = TimedClient(daemon.socket_path, max_buffered=1_000_000)
        client.record_server("192.0.2.1", "warm@up.example")
        client.flush()
        for round_ in range(rounds):
            shift = round_ % len(CONDITIONS)
            for name in CONDITIONS[shift:] + CONDITIONS[:shift]:
                _one(name, results[name], client, daemon, calls, slow_us, senders)
            results["first call (starts the thread)"].costs.append(
                summary(first_calls(daemon.socket_path))
            )
        client.close(5)
    finally:
        daemon.stop()
    return results


def _one(name: str, into: Condition, client: TimedClient, daemon: BenchDaemon, calls: int,
         slow_us: float, senders: str) -> None:  # fmt: skip
    if name == "daemon down":
        for timed in (True, False):
            down = Client(Path("/tmp/stb-nowhere/trackerd.sock"), max_buffered=100_000)
            _measure(down.record_server, into, calls, slow_us, timed, senders)
            down.close(0)
        return
    record: Record = _nothing if name.startswith("control") else client.record_server
    if name == "daemon stalled":
        daemon.signal(signal.SIGSTOP)
    try:
        for timed in (True, False):
            client.holds.clear()
            slow = _measure(record, into, calls, slow_us, timed, senders)
            if name == "daemon up":
                into.holds_us += [(stop - start) / 1000 for start, stop, _ in client.holds]
                into.preempted_holds_us += [
                    (stop - start) / 1000 for start, stop, preempted in client.holds if preempted
                ]
                into.slow_in_hold += sum(_overlaps(call, client.holds) for call in slow)
    finally:
        if name == "daemon stalled":
            daemon.signal(signal.SIGCONT)
    client.flush(120)


def _measure(record: Record, into: Condition, calls: int, slow_us: float,
             timed: bool, senders: str) -> list[SlowCall]:  # fmt: skip
    if timed:
        into.costs.append(summary(time_calls(record, calls, senders)))
        return []
    slow = explain_calls(record, calls, slow_us, senders)
    into.slow += slow
    return slow


def medians(condition: Condition) -> dict[str, float]:
    """The median of each statistic over the rounds; max is the largest of them."""
    keys = condition.costs[0].keys()
    out = {key: statistics.median(c[key] for c in condition.costs) for key in keys}
    out["max"] = max(c["max"] for c in condition.costs)
    return out


def report(results: dict[str, Condition], slow_us: float = SLOW_US) -> str:
    rows = []
    for name, condition in results.items():
        stats = medians(condition)
        maxima = " / ".join(f"{c['max']:,.0f}" for c in condition.costs)
        rows.append([name, *(f"{v:.2f}" for v in stats.values()), maxima])
    lines = [table(["record_server() cost, µs (median of rounds)", "p50", "p99", "p99.9",
                    "max", "max each round"], rows)]  # fmt: skip
    rows = []
    for name, condition in results.items():
        if name.startswith("first"):
            continue
        slow = condition.slow
        preempted = sum(1 for c in slow if c.involuntary)
        waited = sum(1 for c in slow if c.voluntary and not c.involuntary)
        faulted = sum(1 for c in slow if c.faults and not c.voluntary and not c.involuntary)
        other = len(slow) - preempted - waited - faulted
        over_ms = sum(1 for c in slow if c.us > 1000)
        rows.append([name, len(slow), over_ms, preempted, waited, faulted, other,
                     f"{max((c.us for c in slow), default=0):,.0f}"])  # fmt: skip
    lines += ["", table([f"calls over {slow_us:g} µs (explain passes)", "calls", "over 1 ms",
                         "preempted", "waited", "page fault", "none of these", "max µs"],
                        rows)]  # fmt: skip
    up = results["daemon up"]
    if up.holds_us:
        holds = sorted(up.holds_us)
        lines.append(
            f"\nflusher's interpreter-lock holds (take a batch .. send), daemon up: "
            f"{len(holds):,} batches, median {statistics.median(holds):.0f} µs, "
            f"p99 {holds[int(0.99 * (len(holds) - 1))]:.0f} µs, max {holds[-1]:.0f} µs; "
            f"slow calls overlapping one: {up.slow_in_hold} of {len(up.slow)}; holds during "
            f"which the kernel preempted the flusher: {len(up.preempted_holds_us)}, max "
            f"{max(up.preempted_holds_us, default=0):.0f} µs"
        )
    return "\n".join(lines)


def main() -> None:
    parser = arguments("bench.record_cost", __doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, conditions alternated")
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per condition a round")
    parser.add_argument("--slow-us", type=float, default=SLOW_US,
                        help="explain the calls slower than this")  # fmt: skip
    parser.add_argument("--senders", choices=SENDER_FORMS, default="mix",
                        help="bench.compare's sender form the calls record")  # fmt: skip
    args = parser.parse_args()
    print(f"load average before: {loadavg()}; senders: {args.senders}", flush=True)
    results = run(args.rounds, args.calls, args.slow_us, args.senders)
    print(report(results, args.slow_us))
    print(f"load average after: {loadavg()}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "record_cost.json").write_text(json.dumps(
        {name: {"rounds": c.costs, "slow": [vars(s) for s in c.slow]}
         for name, c in results.items()}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
