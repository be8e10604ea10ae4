"""What one record_server() call costs an SMTP worker, and why its slowest calls are slow.

Run: ``python -m bench.record_cost [--rounds 5] [--calls 200000] [--baseline DIR] [--trace]``.

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
outside the timed span), and every cyclic garbage collection timed
(gc.callbacks: its span, generation and thread), to explain the calls over
``--slow-us``, in this order: "gc" (a collection ran during the call, in any
thread: it holds the interpreter lock throughout), "waited, flusher held" (a
voluntary switch, the thread blocked on the interpreter lock, during one of the
flusher's holds; preempted too, maybe), "preempted" (an involuntary switch: the
kernel gave the core to another task), "waited" (blocked otherwise), "page
fault", or none of these. The calls over 1 ms with the daemon up are then split
by /proc/thread-self/schedstat's run delay (read around each call too): the time
the thread was runnable but waited for a core (the machine's load, our own
daemon and flusher included), against the rest of the call, blocked (on the
interpreter lock) or running.
The timed passes explain their own calls over ``--attribute-us`` (200 µs) without
slowing the others (bench.slow_calls): every 256 calls, and just after a slow one,
outside the timed spans, the loop reads the thread's CPU time, run-queue wait and
context switches, and says where the thread was during each slow call: running,
waiting for a core, blocked, or none of these (VM steal: the host ran something
else on the virtual CPU), each only where over half the call must have been so
(the window's time between calls taken off), else "unclear". ``--trace`` also
runs perf (sched_switch events, as root) around each timed pass and names the
tasks that held the cores meanwhile (the daemon, the flusher, another process,
idle), and so splits "waiting for a core" into behind our own threads (the daemon,
the flusher) and behind other processes; without perf it says so.
(The explain passes come after the timed one on the same client, so they never
saw what happened only once: the C queue's rings growing, see
docs/performance.md.)
With the daemon up, the flusher thread's interpreter-lock holds are timed too:
from taking a batch off the queue, or from a pause without the lock, to the
next pause or the send() (an instrumented subclass), in wall time and in the
flusher thread's CPU time (the longest of these is the longest the flusher kept
the lock from the worker's thread).

Each process's client is warmed up before the rounds: its first record_server()
and flush() (the connection, its value tables) are timed and reported on their
own row, once a process. numpy is already loaded then (bench.compare imports
trackerd's normalise, which loads it), so that row does not hold numpy's import,
which a worker's first interned connection pays (about 0.1 s, once a process).
``--numpy-import`` times that one-off from the recording thread's side: in a
fresh process importing servertracker only (numpy not loaded), a first
connection's calls, each timed, and the longest gap between two of them while
the flusher imports numpy, against a fresh process that imported numpy first.

``--baseline DIR`` (and ``--pure-python``: this tree with the pure-Python fallback
forced) runs each round again, in fresh processes alternated in
order: once with the servertracker and trackerd checked out in DIR (its bench/
need not have this file) and once with this tree's, and reports both. Only the
library and daemon come from DIR: the child loads this tree's bench/ (this file,
bench/workload.py's senders and bench/_support.py's launcher); see bench.trees.
Each child's round checks that it and its daemon mapped the extension modules
its tree and path say and no other (bench.trees.check_ran, as bench.compare).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bench import slow_calls
from bench._support import (
    BenchDaemon,
    arguments,
    percentile,
    real_number,
    summary,
    table,
    whole_number,
)
from bench.slow_calls import Trace, timed_calls
from bench.trees import (
    BENCH_DIR,
    BENCH_PACKAGE,
    Description,
    Tree,
    baseline_tree,
    check_ran,
    describe,
    extensions_mapped,
    this_tree,
)
from bench.workload import FORMS, loadavg, sender
from servertracker import Client
from servertracker.record_queue import PyRecordQueue

TimedSlow = slow_calls.SlowCall

CALLS = 200_000
SLOW_US = 50.0
#: The timed passes' calls over this are attributed (bench.slow_calls).
ATTRIBUTE_US = 200.0
FIRST_CALLS = 20
_clock = time.perf_counter_ns
_cpu = time.thread_time_ns

Record = Callable[[str | None, str | None], None]
#: A flusher hold: start and end (perf_counter_ns), whether the kernel took the
#: core from the flusher meanwhile (an involuntary switch while it held the
#: lock), and the flusher thread's CPU time during it (ns).
Hold = tuple[int, int, bool, int]


def _nothing(conn_ip: str | None, sender: str | None) -> None:
    """The control: a call that records nothing."""


class TimedClient(Client):
    """A Client that notes how long its flusher holds the interpreter lock per batch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.holds: list[Hold] = []
        self._hold_start = 0
        self._hold_cpu = 0
        self._switches = 0

    def _take_batch(self, size: int) -> Any:
        # This tree's C queue makes a columns batch's frame without the lock
        # (take_columns): its hold starts once the batch is taken. The pure queue,
        # and a baseline's, hold it throughout. What it returns (a baseline's
        # returns the batch) is passed on.
        encodes_free = hasattr(self._queue, "take_columns") and not isinstance(
            self._queue, PyRecordQueue
        )
        if not encodes_free:
            self._begin_hold()
        batch = getattr(super(), "_take_batch")(size)  # noqa: B009 - None here, a batch in a baseline
        if encodes_free:
            self._begin_hold()
        return batch

    def _begin_hold(self) -> None:
        self._switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        self._hold_cpu = _cpu()
        self._hold_start = _clock()

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
            self._begin_hold()

    def _end_hold(self) -> None:
        if self._hold_start:
            end, cpu = _clock(), _cpu()
            switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            self.holds.append(
                (self._hold_start, end, switches > self._switches, cpu - self._hold_cpu)
            )
            self._hold_start = 0


class Collections:
    """Every cyclic garbage collection while installed (a ``with`` block): its
    span in perf_counter_ns, generation and thread, through gc.callbacks."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int, str]] = []
        self._started: dict[int, int] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started[threading.get_ident()] = _clock()
            return
        start = self._started.pop(threading.get_ident(), None)
        if start is not None:
            name = threading.current_thread().name
            self.spans.append((start, _clock(), info["generation"], name))

    def summary(self) -> list[tuple[float, int, str]]:
        """Each collection's µs, generation and thread."""
        return [((end - start) / 1000, gen, thread) for start, end, gen, thread in self.spans]

    def __enter__(self) -> Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        gc.callbacks.remove(self)


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


def time_calls(
    record: Record, calls: int = CALLS, senders: str = "mix", attribute_us: float = ATTRIBUTE_US
) -> tuple[list[float], list[TimedSlow]]:
    """Per-call cost in microseconds, and the calls over attribute_us with where the
    thread was meanwhile (bench.slow_calls: read outside the timed spans)."""
    return timed_calls(record, _values(calls, senders), _timer_overhead(), attribute_us)


@dataclass
class SlowCall:
    start_ns: int
    us: float
    voluntary: int  # the thread blocked (the interpreter lock, another lock)
    involuntary: int  # the kernel gave its core to another task
    faults: int
    #: Set after the pass: the generation of a collection during the call (-1:
    #: none) and its thread; the longest flusher hold during it (µs, 0: none).
    gc: int = -1
    gc_thread: str = ""
    hold_us: float = 0.0
    hold_cpu_us: float = 0.0
    #: Time the thread was runnable but waited for a core (/proc/thread-self/schedstat's
    #: run delay; -1: not read): the kernel's share of the call, apart from waiting
    #: blocked (the interpreter lock), which is not on a run queue.
    run_delay_us: float = -1.0

    def overlaps(self, start: int, end: int) -> bool:
        return start < self.start_ns + self.us * 1000 and self.start_ns < end

    def why(self) -> str:
        """The first explanation that fits (see the module's docstring)."""
        if self.gc >= 0:
            return "gc"
        if self.voluntary and self.hold_us:
            return "waited, flusher held"
        if self.involuntary:
            return "preempted"
        if self.voluntary:
            return "waited"
        return "page fault" if self.faults else "none of these"


WHY = ("gc", "waited, flusher held", "preempted", "waited", "page fault", "none of these")


def explain_calls(
    record: Record, calls: int, slow_us: float, senders: str = "mix"
) -> list[SlowCall]:
    """The calls over slow_us, with what happened to the calling thread during each."""
    overhead = _timer_overhead()
    clock, usage, thread = _clock, resource.getrusage, resource.RUSAGE_THREAD
    slow_ns = slow_us * 1000 + overhead
    slow = []
    # This thread's schedstat (run time, run-queue wait, timeslices; ns): opened here,
    # as /proc/thread-self names the thread that opens it.
    schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    read = os.pread
    try:
        for ip, value in _values(calls, senders):
            before = usage(thread)
            queued = read(schedstat, 128, 0)
            t0 = clock()
            record(ip, value)
            t1 = clock()
            if t1 - t0 > slow_ns:
                after = usage(thread)
                waited = int(read(schedstat, 128, 0).split()[1]) - int(queued.split()[1])
                slow.append(SlowCall(t0, (t1 - t0 - overhead) / 1000,
                                     after.ru_nvcsw - before.ru_nvcsw,
                                     after.ru_nivcsw - before.ru_nivcsw,
                                     after.ru_minflt + after.ru_majflt
                                     - before.ru_minflt - before.ru_majflt,
                                     run_delay_us=waited / 1000))  # fmt: skip
    finally:
        os.close(schedstat)
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
    holds_cpu_us: list[float] = field(default_factory=list)
    preempted_holds_us: list[float] = field(default_factory=list)
    #: Collections in the explain passes: (µs, generation, thread).
    collections: list[tuple[float, int, str]] = field(default_factory=list)
    #: The timed passes' calls over --attribute-us (bench.slow_calls).
    timed_slow: list[TimedSlow] = field(default_factory=list)
    #: The machine's steal time during each timed pass (/proc/stat, 10 ms ticks).
    steal_ticks: list[int] = field(default_factory=list)
    #: Why a timed pass was not traced with perf ("" where it was, or not asked).
    trace_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Condition:
        fields = dict(data, slow=[SlowCall(**call) for call in data["slow"]])
        fields["timed_slow"] = [TimedSlow(**call) for call in data["timed_slow"]]
        fields["collections"] = [tuple(c) for c in data["collections"]]
        return cls(**fields)


def _attribute(slow: list[SlowCall], holds: list[Hold], collections: Collections) -> None:
    """Note, for each slow call, a collection and the longest flusher hold during it."""
    for call in slow:
        for start, end, generation, thread in collections.spans:
            if call.overlaps(start, end) and generation > call.gc:
                call.gc, call.gc_thread = generation, thread
        for start, end, _, cpu in holds:
            if call.overlaps(start, end) and (end - start) / 1000 > call.hold_us:
                call.hold_us, call.hold_cpu_us = (end - start) / 1000, cpu / 1000


CONDITIONS = ("daemon up", "control: no recording", "daemon down", "daemon stalled")
#: The warm-up's row: one record_server() and flush(), once a process.
WARM_UP = "first connection's warm-up: record_server + flush, once (numpy loaded)"


def run(
    rounds: int = 1,
    calls: int = CALLS,
    slow_us: float = SLOW_US,
    senders: str = "mix",
    first_round: int = 0,
    mapped: list[str] | None = None,
    attribute_us: float = ATTRIBUTE_US,
    trace: bool = False,
) -> dict[str, Condition]:
    """The rounds, in this process; ``mapped`` (if given) gets the extension modules
    this process and its daemon mapped (bench.trees.extensions_mapped); ``trace``:
    each timed pass under perf (bench.slow_calls.Trace)."""
    results = {
        name: Condition() for name in (*CONDITIONS, "first call (starts the thread)", WARM_UP)
    }
    daemon = BenchDaemon().start()
    try:
        client = TimedClient(daemon.socket_path, max_buffered=1_000_000)
        # The first connection (its value tables): here, outside the rounds, timed
        # and reported on its own row. numpy is loaded already (bench.compare's
        # import); --numpy-import times a fresh worker's first connection, numpy
        # not loaded, on its own.
        t0 = _clock()
        client.record_server("192.0.2.1", "warm@up.example")
        client.flush()
        results[WARM_UP].costs.append(summary([(_clock() - t0) / 1000]))
        for round_ in range(first_round, first_round + rounds):
            shift = round_ % len(CONDITIONS)
            for name in CONDITIONS[shift:] + CONDITIONS[:shift]:
                _one(name, results[name], client, daemon, calls, slow_us, senders,
                     attribute_us, trace)  # fmt: skip
            results["first call (starts the thread)"].costs.append(
                summary(first_calls(daemon.socket_path))
            )
        client.close(5)
        if mapped is not None and daemon.process is not None:
            mapped += extensions_mapped(daemon.process.pid) + extensions_mapped(os.getpid())
    finally:
        daemon.stop()
    return results


def _one(name: str, into: Condition, client: TimedClient, daemon: BenchDaemon, calls: int,
         slow_us: float, senders: str, attribute_us: float = ATTRIBUTE_US,
         trace: bool = False) -> None:  # fmt: skip
    watch = _Watch(into, attribute_us, trace, client, daemon)
    if name == "daemon down":
        for timed in (True, False):
            down = Client(Path("/tmp/stb-nowhere/trackerd.sock"), max_buffered=100_000)
            watch.client = down
            with Collections() as collections:
                slow = _measure(down.record_server, into, calls, slow_us, timed, senders, watch)
            _attribute(slow, [], collections)
            if not timed:
                into.collections += collections.summary()
            down.close(0)
        return
    record: Record = _nothing if name.startswith("control") else client.record_server
    if name == "daemon stalled":
        daemon.signal(signal.SIGSTOP)
    try:
        for timed in (True, False):
            client.holds.clear()
            with Collections() as collections:
                slow = _measure(record, into, calls, slow_us, timed, senders, watch)
            # Holds in the daemon-down and stalled conditions are another client's,
            # or none: only the daemon-up ones are the recording client's.
            holds = client.holds if name == "daemon up" else []
            _attribute(slow, holds, collections)
            if not timed:
                into.collections += collections.summary()
            if name == "daemon up":
                into.holds_us += [(stop - start) / 1000 for start, stop, _, _ in holds]
                into.holds_cpu_us += [cpu / 1000 for _, _, _, cpu in holds]
                into.preempted_holds_us += [
                    (stop - start) / 1000 for start, stop, preempted, _ in holds if preempted
                ]
    finally:
        if name == "daemon stalled":
            daemon.signal(signal.SIGCONT)
    client.flush(120)


class _Watch:
    """What a timed pass needs to attribute its slow calls: the thresholds, perf
    or not, and the threads to name (this one, the client's flusher, the daemon's)."""

    def __init__(self, into: Condition, attribute_us: float, trace: bool, client: Client,
                 daemon: BenchDaemon) -> None:  # fmt: skip
        self.into, self.attribute_us, self.trace = into, attribute_us, trace
        self.client, self.daemon = client, daemon

    def names(self) -> dict[int, str]:
        names = {threading.get_native_id(): "recording thread"}
        if self.daemon.process is not None:
            names |= dict.fromkeys(slow_calls.daemon_threads(self.daemon.process.pid), "daemon")
        flusher = getattr(self.client, "_thread", None)
        if flusher is not None and flusher.native_id is not None:
            names[flusher.native_id] = "its flusher"
        return names

    def timed(self, record: Record, calls: int, senders: str) -> None:
        tracer = Trace() if self.trace else None
        steal = slow_calls.steal_ticks()
        if tracer is not None:
            with tracer:
                costs, slow = time_calls(record, calls, senders, self.attribute_us)
            for call in slow if tracer.available else []:
                call.held = tracer.held(call, self.names())
            self.into.trace_errors.append(tracer.error)
        else:
            costs, slow = time_calls(record, calls, senders, self.attribute_us)
        self.into.steal_ticks.append(slow_calls.steal_ticks() - steal)
        self.into.costs.append(summary(costs))
        self.into.timed_slow += slow


def _measure(record: Record, into: Condition, calls: int, slow_us: float,
             timed: bool, senders: str, watch: _Watch) -> list[SlowCall]:  # fmt: skip
    if timed:
        watch.timed(record, calls, senders)
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


def report(
    results: dict[str, Condition], slow_us: float = SLOW_US, attribute_us: float = ATTRIBUTE_US
) -> str:
    rows: list[list[object]] = []
    for name, condition in results.items():
        stats = medians(condition)
        maxima = " / ".join(f"{c['max']:,.0f}" for c in condition.costs)
        rows.append([name, *(f"{v:.2f}" for v in stats.values()), maxima])
    lines = [table(["record_server() cost, µs (median of rounds)", "p50", "p99", "p99.9",
                    "max", "max each round"], rows)]  # fmt: skip
    rows = []
    for name, condition in results.items():
        if name.startswith("first"):  # the first call, the warm-up: no explain pass
            continue
        slow = condition.slow
        why = [call.why() for call in slow]
        over_ms = [call.why() for call in slow if call.us > 1000]
        rows.append([name, len(slow), len(over_ms), *(f"{why.count(w)} ({over_ms.count(w)})"
                                                      for w in WHY),
                     f"{max((c.us for c in slow), default=0):,.0f}"])  # fmt: skip
    lines += ["", table([f"calls over {slow_us:g} µs (explain passes; over 1 ms in brackets)",
                         "calls", "over 1 ms", *WHY, "max µs"], rows)]  # fmt: skip
    lines += _timed_report(results, attribute_us)
    up = results["daemon up"]
    if up.holds_us:
        holds, cpu = sorted(up.holds_us), sorted(up.holds_cpu_us)
        lines.append(
            f"\nflusher's interpreter-lock holds (a batch taken or a pause .. the next pause "
            f"or send), daemon up: {len(holds):,}; wall median {statistics.median(holds):.0f} "
            f"µs, p99 {percentile(holds, 0.99):.0f}, max {holds[-1]:,.0f}; flusher CPU "
            f"median {statistics.median(cpu):.0f} µs, p99 {percentile(cpu, 0.99):.0f}, max "
            f"{cpu[-1]:,.0f} (the longest it kept the lock); holds during which the kernel "
            f"preempted the flusher: {len(up.preempted_holds_us)}, max "
            f"{max(up.preempted_holds_us, default=0):,.0f} µs"
        )
        long_calls = [call for call in up.slow if call.us > 1000 and call.run_delay_us >= 0]
        if long_calls:
            queued = sum(c.run_delay_us for c in long_calls)
            spent = sum(c.us for c in long_calls)
            lines.append(
                f"calls over 1 ms, daemon up: {len(long_calls)}, {spent:,.0f} "
                f"µs in all; the calling thread waited for a core (runnable, on the kernel's "
                f"run queue) {queued:,.0f} µs around them (from just before to just after "
                f"each); calls whose run-queue wait was under half their time (so mostly "
                f"blocked, on the interpreter lock): "
                f"{sum(c.run_delay_us < c.us / 2 for c in long_calls)}"
            )
        held = [call for call in up.slow if call.hold_us]
        if held:
            lines.append(
                f"slow calls during a hold: {len(held)} of {len(up.slow)}; that hold's "
                f"flusher CPU, median {statistics.median(c.hold_cpu_us for c in held):.0f} µs"
            )
    for name, condition in results.items():
        if not condition.collections:
            continue
        by: dict[tuple[int, str], list[float]] = {}
        for us, generation, thread in condition.collections:
            by.setdefault((generation, thread), []).append(us)
        lines.append(f"garbage collections in the explain passes, {name}: " + "; ".join(
            f"generation {g} in {t}: {len(spans)}, longest {max(spans):,.0f} µs"
            for (g, t), spans in sorted(by.items())))  # fmt: skip
    return "\n".join(lines)


def _held(call: TimedSlow) -> str:
    """Who held the cores during the call, longest first (perf), or "-"."""
    if not call.held:
        return "-"
    return ", ".join(f"{name} {us:,.0f}" for name, us in
                     sorted(call.held.items(), key=lambda item: -item[1]))  # fmt: skip


def _timed_report(results: dict[str, Condition], attribute_us: float) -> list[str]:
    """The timed passes' slow calls: where the recording thread was, per condition;
    then each of them (the slowest 40), window by window."""
    rows: list[list[object]] = []
    listed: list[tuple[str, TimedSlow]] = []
    for name, condition in results.items():
        if name.startswith("first"):
            continue
        slow = condition.timed_slow
        where = [call.where() for call in slow]
        over = [call.where() for call in slow if call.us > 1000]
        rows.append([name, len(slow), len(over),
                     *(f"{where.count(w)} ({over.count(w)})" for w in slow_calls.WHERE),
                     f"{max((c.us for c in slow), default=0):,.0f}",
                     sum(condition.steal_ticks)])  # fmt: skip
        listed += [(name, call) for call in slow]
    lines = ["", table([f"timed passes: calls over {attribute_us:g} µs (over 1 ms), where "
                        "the recording thread was", "calls", "over 1 ms",
                        *slow_calls.WHERE, "max µs", "steal ticks (10 ms)"], rows)]  # fmt: skip
    errors = {e for c in results.values() for e in c.trace_errors if e}
    if errors:
        lines.append(f"perf trace: not taken ({'; '.join(sorted(errors))}): who held the "
                     f"cores is not known")  # fmt: skip
    listed.sort(key=lambda item: -item[1].us)
    if listed:
        lines += ["", table([f"slow timed calls, µs (window: <= {slow_calls.WINDOW} calls)", "call",
                             "where", "window", "its CPU", "waiting for a core",
                             "rest", "switches vol/invol", "cores held by (perf, µs)"],
                            [[name, f"{c.us:,.0f}", c.where(), f"{c.window_us:,.0f}",
                              f"{c.cpu_us:,.0f}", f"{c.run_delay_us:,.0f}", f"{c.rest_us:,.0f}",
                              f"{c.voluntary}/{c.involuntary}", _held(c)]
                             for name, c in listed[:40]])]  # fmt: skip
    return lines


def _merge(rounds: list[dict[str, Condition]]) -> dict[str, Condition]:
    """One Condition per name from the rounds' (each from its own process)."""
    merged: dict[str, Condition] = {}
    for results in rounds:
        for name, condition in results.items():
            into = merged.setdefault(name, Condition())
            for item in dataclasses.fields(Condition):
                getattr(into, item.name).extend(getattr(condition, item.name))
    return merged


# The child: this tree's bench/ is the "bench" package (bench.trees.BENCH_PACKAGE: a
# baseline's bench/ may not have this file), with servertracker and trackerd from the
# tree's PYTHONPATH.
_CHILD = (
    BENCH_PACKAGE
    + """
import json
from bench import record_cost
round_, calls, slow_us = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
mapped = []
results = record_cost.run(1, calls, slow_us, sys.argv[5], first_round=round_, mapped=mapped,
                          attribute_us=float(sys.argv[6]), trace=sys.argv[7] == "trace")
print(json.dumps({"mapped": mapped,
                  "conditions": {name: c.to_json() for name, c in results.items()}}))
"""
)


def run_in_child(tree: Tree, about: Description, round_: int, calls: int, slow_us: float,
                 senders: str, name: str = "", attribute_us: float = ATTRIBUTE_US,
                 trace: bool = False) -> dict[str, Condition]:  # fmt: skip
    """One round in a fresh process running the tree's code (bench.trees); a
    RuntimeError if it or its daemon ran other code than ``about`` says."""
    command = [sys.executable, "-P", "-c", _CHILD, str(BENCH_DIR), str(round_), str(calls),
               str(slow_us), senders, str(attribute_us), "trace" if trace else "no"]  # fmt: skip
    out = subprocess.run(
        command, env=tree.environment(), capture_output=True, text=True, check=True
    ).stdout
    data: dict[str, Any] = json.loads(out)
    check_ran(name or str(tree.root), tree, about, data["mapped"],
              ("trackerd.", "servertracker."))  # fmt: skip
    return {key: Condition.from_json(condition) for key, condition in data["conditions"].items()}


# A fresh process's first connection, timed call by call from the recording thread.
# It imports servertracker only (bench/ would load numpy), and numpy first if told.
_NUMPY_CHILD = """
import json, sys, time
if sys.argv[3] == "numpy first":
    import numpy
from servertracker import Client
loaded_before = "numpy" in sys.modules
clock = time.perf_counter_ns
client = Client(sys.argv[1], max_buffered=1_000_000)
calls, costs, gaps = int(sys.argv[2]), [], []
last = clock()
for i in range(calls):
    t0 = clock()
    client.record_server(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", f"a@m{i}.example")
    t1 = clock()
    costs.append(t1 - t0)
    gaps.append(t0 - last)
    last = t1
flushed = client.flush(30)
client.close(5)
print(json.dumps({"numpy_before": loaded_before, "numpy_after": "numpy" in sys.modules,
                  "flushed": flushed, "first_us": costs[0] / 1000,
                  "max_call_us": max(costs) / 1000, "max_gap_us": max(gaps) / 1000,
                  "calls_over_1ms": sum(c > 1_000_000 for c in costs)}))
"""


def numpy_import(calls: int) -> str:
    """A first connection's calls in fresh processes: numpy not loaded, then loaded
    first (the control), each against its own fresh daemon."""
    rows = []
    for kind in ("numpy not loaded", "numpy first"):
        daemon = BenchDaemon().start()
        try:
            command = [sys.executable, "-P", "-c", _NUMPY_CHILD, str(daemon.socket_path),
                       str(calls), kind]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        finally:
            daemon.stop()
        got = json.loads(out)
        assert got["flushed"], "the calls were not all sent"
        rows.append([kind, "yes" if got["numpy_before"] else "no", f"{got['first_us']:,.0f}",
                     f"{got['max_call_us']:,.0f}", f"{got['max_gap_us']:,.0f}",
                     got["calls_over_1ms"]])  # fmt: skip
    return table([f"a fresh process's first {calls:,} calls", "numpy loaded before",
                  "first call µs", "longest call µs", "longest gap between calls µs",
                  "calls over 1 ms"], rows)  # fmt: skip


def main() -> None:
    parser = arguments("bench.record_cost", __doc__)
    parser.add_argument(
        "--rounds", type=whole_number(), default=3, help="rounds, conditions alternated"
    )
    parser.add_argument(
        "--calls", type=whole_number(), default=CALLS, help="calls per condition a round"
    )
    parser.add_argument("--slow-us", type=real_number(), default=SLOW_US,
                        help="explain the calls slower than this")  # fmt: skip
    parser.add_argument("--attribute-us", type=real_number(), default=ATTRIBUTE_US,
                        help="say where the recording thread was during each call of the "
                        "timed passes slower than this (bench.slow_calls)")  # fmt: skip
    parser.add_argument("--trace", action="store_true",
                        help="also run perf (sched_switch events, as root) around each timed "
                        "pass, to say which task held each core during its slow calls")  # fmt: skip
    parser.add_argument("--senders", choices=SENDER_FORMS, default="mix",
                        help="bench.compare's sender form the calls record")  # fmt: skip
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the trees checked out in DIR")  # fmt: skip
    parser.add_argument("--pure-python", action="store_true",
                        help="also run this tree with the pure-Python fallback forced "
                        "(SERVERTRACKER_PURE_PYTHON=1)")  # fmt: skip
    parser.add_argument("--numpy-import", action="store_true",
                        help="only time a fresh process's first connection's --calls calls "
                        "(numpy not loaded, then loaded first) and their longest gap")  # fmt: skip
    args = parser.parse_args()
    if args.numpy_import:
        print(f"load average before: {loadavg()}", flush=True)
        print(numpy_import(args.calls))
        print(f"load average after: {loadavg()}")
        return
    print(f"load average before: {loadavg()}; senders: {args.senders}", flush=True)
    entrants: list[tuple[str, Tree]] = []
    if args.baseline is not None:
        entrants.append((f"baseline ({args.baseline.resolve()})", baseline_tree(args.baseline)))
    if args.pure_python:
        entrants.append(("this tree, pure Python forced", this_tree(pure=True)))
    if not entrants:
        trees = {
            "this tree": run(
                args.rounds,
                args.calls,
                args.slow_us,
                args.senders,
                attribute_us=args.attribute_us,
                trace=args.trace,
            )
        }
    else:
        entrants.append(("this tree", this_tree()))
        described = {tree: describe(tree) for _, tree in entrants}
        for name, tree in entrants:
            about = described[tree]
            print(f"{name}: {about.path} ({tree.root}, {about.revision}; extension modules "
                  f"loaded: {', '.join(about.extensions) or 'none'})")  # fmt: skip
        per_round: dict[str, list[dict[str, Condition]]] = {name: [] for name, _ in entrants}
        for round_ in range(args.rounds):
            for name, tree in entrants if round_ % 2 == 0 else entrants[::-1]:
                per_round[name].append(
                    run_in_child(
                        tree,
                        described[tree],
                        round_,
                        args.calls,
                        args.slow_us,
                        args.senders,
                        name,
                        args.attribute_us,
                        args.trace,
                    )
                )
                print(f"round {round_ + 1}, {name}: done (load average {loadavg()})", flush=True)
        trees = {name: _merge(rounds) for name, rounds in per_round.items()}
    for name, results in trees.items():
        if len(trees) > 1:
            print(f"\n=== {name}")
        print(report(results, args.slow_us, args.attribute_us))
    print(f"load average after: {loadavg()}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "record_cost.json").write_text(json.dumps(
        {tree: {name: {"rounds": c.costs, "slow": [vars(s) for s in c.slow],
                       "timed_slow": [vars(s) for s in c.timed_slow]}
                for name, c in results.items()} for tree, results in trees.items()},
        indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
