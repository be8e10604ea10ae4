"""bench.slow_calls says where the recording thread was during a slow call only
as far as its counters show it was inside the call (rev-fair, findings 1-2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

from bench import slow_calls
from bench.slow_calls import BEHIND_OTHERS, BEHIND_OURS, UNCLEAR, WAITING, SlowCall


def call(us: float, outside: float, cpu: float, waited: float, voluntary: int = 0) -> SlowCall:
    return SlowCall(start_ns=0, us=us, window_us=us + outside, cpu_us=cpu,
                    run_delay_us=waited, voluntary=voluntary, involuntary=1)  # fmt: skip


def test_a_wait_between_calls_is_not_the_calls() -> None:
    # rev-fair's: a 1,037 µs call that spun on the CPU, in a window that waited
    # 18,776 µs for a core between calls: it was labelled "waiting for a core".
    spun = call(1037, outside=18_776 + 100, cpu=1037 + 100, waited=18_776)
    assert spun.where() == UNCLEAR
    # The same window around a call that did wait, inside it: the wait must be the call's.
    assert call(20_000, outside=100, cpu=200, waited=19_000).where() == WAITING


def test_each_part_is_the_calls_only_where_it_must_be() -> None:
    assert call(1000, outside=0, cpu=990, waited=0).where() == "running"
    assert call(1000, outside=300, cpu=990, waited=300).where() == "running"  # 690 at least
    assert call(1000, outside=600, cpu=990, waited=600).where() == UNCLEAR  # 390 at least
    assert call(1000, outside=10, cpu=5, waited=0, voluntary=1).where() == "blocked"
    assert call(1000, outside=10, cpu=5, waited=0).where() == "VM steal"


def test_a_traced_wait_says_behind_whom() -> None:
    waited = call(2000, outside=50, cpu=100, waited=1800)
    waited.held = {"daemon": 1300, "its flusher": 200, "other: sh": 500}
    assert waited.where() == BEHIND_OURS
    waited.held = {"daemon": 300, "other: sh": 1700, "idle": 100}
    assert waited.where() == BEHIND_OTHERS
    # perf's own view of the recording thread on a core decides "running".
    unclear = call(1000, outside=20_000, cpu=1000, waited=19_000)
    unclear.held = {"recording thread": 950, "other: sh": 1000}
    assert unclear.where() == "running"
    assert set(slow_calls.WHERE) >= {BEHIND_OURS, BEHIND_OTHERS, UNCLEAR, WAITING}


#: Each of these calls spins for this much of the thread's CPU time; the others do nothing.
SPIN_NS = 900_000
EVERY = 2000


def test_a_call_that_spins_on_the_cpu_is_never_said_to_wait() -> None:
    """A live ground truth: a busy process shares the test thread's core, so the
    thread waits for it, between calls and inside them. A spin call is labelled
    waiting, blocked or VM steal only where most of it really was not on the CPU
    (its own CPU time, measured inside it, under half the call)."""
    spun: dict[int, int] = {}  # call start (perf_counter_ns, at the body) -> CPU ns in the body

    def record(ip: str | None, value: str | None) -> None:
        if ip is not None and int(ip) % EVERY == EVERY - 1:
            start, cpu = time.perf_counter_ns(), time.thread_time_ns()
            while time.thread_time_ns() - cpu < SPIN_NS:
                pass
            spun[start] = time.thread_time_ns() - cpu

    def values() -> Iterator[tuple[str, str]]:
        return ((str(i), "x") for i in range(40 * EVERY))

    core = min(os.sched_getaffinity(0))
    busy = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    hog = subprocess.Popen([sys.executable, "-c", busy])
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {core})  # this thread only
        _, slow = slow_calls.timed_calls(record, values(), 0, 200)
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()
    starts = sorted(spun)
    checked = 0
    for c in slow:
        body = [s for s in starts if c.start_ns <= s <= c.start_ns + c.us * 1000]
        if not body:
            continue  # a call the busy process delayed: no truth to check against
        checked += 1
        if c.where() not in ("running", UNCLEAR):
            assert spun[body[0]] / 1000 < c.us / 2, (c, c.where(), spun[body[0]])
    assert checked == len(spun)  # every spin call is slow: it spins 900 µs of CPU
