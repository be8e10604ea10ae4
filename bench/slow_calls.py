"""Where the recording thread was during each slow call of a timed pass.

bench.record_cost's timed passes time each call alone. To say why a call was
slow without slowing the others, the loop (``timed_calls``) reads, every
``WINDOW`` calls and again just after a slow one, outside every timed span:
the thread's CPU time (CLOCK_THREAD_CPUTIME_ID, which in this kind of VM leaves
out the time the host ran something else on the virtual CPU: the guest
scheduler's clock excludes steal), its run-queue wait (/proc/thread-self/
schedstat's run delay: runnable, no core free for it) and its context switches
(getrusage(RUSAGE_THREAD)). The window from the last reading to just after the
slow call then splits into: running (CPU time: its own work, or an interrupt
handled on its core), waiting for a core, and the rest, in which the guest did
not run the thread although it was neither queued nor running: blocked (a
voluntary switch: the interpreter lock, a futex) or, with no voluntary switch,
VM steal. The window holds the loop's own time between calls too, so a part is
the call's only as far as the window cannot hold it outside the call: each part's
share of the call is at least the part less the window's time outside the call
(the loop knows it: the window less the call). A call gets the part that must
be over half of it, else "unclear" (``SlowCall.where``): a call that spun on the
CPU is not labelled "waiting" because the thread waited between calls.
"Waiting for a core" is the machine's load, our own threads' included: with a
trace it is split into behind our own threads (the daemon, the flusher) and
behind other processes, by who held the cores during the call, and the
recording thread's own time on a core (perf's) shows "running" directly.

``Trace`` (optional: ``perf`` and root) records the kernel's
``sched:sched_switch`` events with CLOCK_MONOTONIC time stamps, the clock of
perf_counter_ns, and ``held`` says which task held each core during each slow
call: the recording thread, its flusher, the daemon, another process, or idle.
"""

from __future__ import annotations

import bisect
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Calls between two readings of the thread's counters: a window holds the
#: slow call and at most this many ordinary ones (~0.1 µs each).
WINDOW = 256
#: The labels, in the reports' order. A traced call waiting for a core is "behind
#: ours" (the daemon and the flusher held the cores more than other processes
#: did) or "behind others"; an untraced one is just "waiting for a core".
WAITING = "waiting for a core"
BEHIND_OURS = "waiting, behind ours"
BEHIND_OTHERS = "waiting, behind others"
UNCLEAR = "unclear"
WHERE = ("running", WAITING, BEHIND_OURS, BEHIND_OTHERS, "blocked", "VM steal", UNCLEAR)
#: Our own threads' names in ``held`` (bench.record_cost's names()) but the
#: recording thread's: those it can wait behind.
OURS = ("daemon", "its flusher")

Record = Callable[[str | None, str | None], None]


@dataclass
class SlowCall:
    """A timed pass's slow call and its window (µs; perf_counter_ns start)."""

    start_ns: int
    us: float
    window_us: float
    cpu_us: float
    run_delay_us: float
    voluntary: int
    involuntary: int
    #: µs each kind of task held a core during the call (both cores), from Trace.
    held: dict[str, float] = field(default_factory=dict)

    @property
    def rest_us(self) -> float:
        return max(0.0, self.window_us - self.cpu_us - self.run_delay_us)

    @property
    def outside_us(self) -> float:
        """The window's time outside the call: the loop's between calls."""
        return max(0.0, self.window_us - self.us)

    def least_us(self) -> dict[str, float]:
        """Each part's least share of the call: what the window's time outside the
        call cannot hold (0 where it can hold it all)."""
        parts = {
            "running": self.cpu_us,
            WAITING: self.run_delay_us,
            "blocked" if self.voluntary else "VM steal": self.rest_us,
        }
        return {part: max(0.0, us - self.outside_us) for part, us in parts.items()}

    def where(self) -> str:
        """The part that must be over half the call (see the docstring), else "unclear"."""
        if self.held.get("recording thread", 0.0) > self.us / 2:
            return "running"  # perf saw it on a core for most of the call
        least = self.least_us()
        part = max(least, key=lambda name: least[name])
        if least[part] <= self.us / 2:
            return UNCLEAR
        if part != WAITING or not self.held:
            return part
        ours = sum(self.held.get(name, 0.0) for name in OURS)
        others = sum(us for name, us in self.held.items() if name.startswith("other: "))
        return BEHIND_OURS if ours >= others else BEHIND_OTHERS


class _Counters:
    """This thread's CPU time, run delay (ns) and switches, read together."""

    def __init__(self) -> None:
        # /proc/thread-self names the thread that opens it: this one.
        self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def read(self) -> tuple[int, int, int, int, int]:
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        run_delay = int(os.pread(self._fd, 128, 0).split()[1])
        return (time.perf_counter_ns(), time.thread_time_ns(), run_delay, usage.ru_nvcsw,
                usage.ru_nivcsw)  # fmt: skip

    def close(self) -> None:
        os.close(self._fd)


def timed_calls(record: Record, values: Iterable[tuple[str, str]], overhead: int,
                slow_us: float) -> tuple[list[float], list[SlowCall]]:  # fmt: skip
    """Each call's cost in µs (the timer's overhead taken off), and the calls over
    slow_us with their windows."""
    clock = time.perf_counter_ns
    slow_ns = slow_us * 1000
    counters = _Counters()
    read = counters.read
    costs: list[float] = []
    slow: list[SlowCall] = []
    try:
        mark = read()
        for i, (ip, value) in enumerate(values):
            if not i % WINDOW:
                mark = read()
            t0 = clock()
            record(ip, value)
            spent = clock() - t0 - overhead
            costs.append(max(0, spent) / 1000)
            if spent > slow_ns:
                now = read()
                wall, cpu, queued = ((now[k] - mark[k]) / 1000 for k in (0, 1, 2))
                slow.append(SlowCall(t0, spent / 1000, wall, cpu, queued, now[3] - mark[3],
                                     now[4] - mark[4]))  # fmt: skip
                mark = read()
    finally:
        counters.close()
    return costs, slow


class Trace:
    """``perf record -e sched:sched_switch -k CLOCK_MONOTONIC -a`` while in a
    ``with`` block; ``available`` is False (and nothing recorded) without perf or
    where it cannot trace (not root), ``error`` then says why."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stb-perf-"))
        self.data = self.dir / "perf.data"
        self.error = "" if shutil.which("perf") else "perf not found"
        self._process: subprocess.Popen[bytes] | None = None
        self._switches: dict[int, tuple[list[int], list[tuple[int, str]]]] = {}

    @property
    def available(self) -> bool:
        return not self.error

    def __enter__(self) -> Trace:
        if self.error:
            return self
        command = ["perf", "record", "-q", "-e", "sched:sched_switch", "-k", "CLOCK_MONOTONIC",
                   "-a", "-o", str(self.data)]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # perf has begun once it has written its file's header (or it failed).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._process.poll() is None:
            if self.data.exists() and self.data.stat().st_size:
                time.sleep(0.3)  # its per-CPU buffers opened
                return self
            time.sleep(0.05)
        self._stop()
        self.error = self.error or "perf record did not start"
        return self

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if process.returncode not in (0, -signal.SIGINT) and not self.error:
            self.error = f"perf record failed: {err.decode(errors='replace').strip()[:200]}"

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if not self.error:
            self._load()
        shutil.rmtree(self.dir, ignore_errors=True)

    _SWITCH = re.compile(r"\[(\d+)\]\s+(\d+)\.(\d+):.*next_comm=(.*) next_pid=(\d+)")

    def _load(self) -> None:
        command = ["perf", "script", "-i", str(self.data), "-F", "cpu,time,trace", "--ns"]
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            m = self._SWITCH.search(line)
            if m is None:
                continue
            cpu, sec, ns, comm, pid = m.groups()
            times, tasks = self._switches.setdefault(int(cpu), ([], []))
            times.append(int(sec) * 1_000_000_000 + int(ns.ljust(9, "0")[:9]))
            tasks.append((int(pid), comm.strip()))
        if not self._switches:
            self.error = "perf recorded no sched_switch event"

    def held(self, call: SlowCall, names: dict[int, str]) -> dict[str, float]:
        """µs each kind of task held a core (all cores) during the call; a task
        is named by ``names`` (thread id -> name), else "other: COMM" or "idle"."""
        start, end = call.start_ns, call.start_ns + int(call.us * 1000)
        out: dict[str, float] = {}
        for times, tasks in self._switches.values():
            i = max(0, bisect.bisect_right(times, start) - 1)
            while i < len(times) and times[i] < end:
                begin = max(start, times[i])
                until = min(end, times[i + 1]) if i + 1 < len(times) else end
                if until > begin and times[i] <= end:
                    pid, comm = tasks[i]
                    name = names.get(pid) or ("idle" if pid == 0 else f"other: {_base(comm)}")
                    out[name] = out.get(name, 0.0) + (until - begin) / 1000
                i += 1
        return out


def _base(comm: str) -> str:
    """A kernel worker's or a process's name without its instance (kworker/1:2 -> kworker)."""
    return re.split(r"[/:\-]", comm, maxsplit=1)[0] or comm


def daemon_threads(pid: int) -> list[int]:
    """The thread ids of a process (its threads now)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def steal_ticks() -> int:
    """The machine's steal time so far (/proc/stat, USER_HZ ticks)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0
