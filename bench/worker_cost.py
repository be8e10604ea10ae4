"""Where a worker's CPU goes: its recording thread and its flusher, C against pure Python.

Run: ``python -m bench.worker_cost [--rounds 3] [--forms domain,mix] [--records N]``.

One forked worker (as bench.compare's: its records made before the fork, the
garbage collector's view of them frozen) records one worker's share of
bench.compare's workload with ``Client.record_server()`` into a trackerd (this
tree's), then flushes. Its CPU per record is read per thread from
/proc/self/task (utime + stime, clock ticks), with the context switches of each:

- ``nothing``: the loop calling a function that records nothing (the floor);
- ``queue only``: record_server() with the flusher never started (the call alone);
- ``columns`` and ``interned`` (131,072 ids): the whole worker, the flusher's
  taking, splitting, numbering, encoding, sending and pausing included.

The recording thread's CPU in its final flush() is shown apart (ms, a whole
worker's): waiting there for the flusher once cost a worker ~50 ms, when flush()
looked every millisecond (docs/performance-history.md, wcost).

Every mode runs with the C extension (where built) and with this tree's Python
fallback (the same process type, three hooks switched to their Python code after
the fork: record_queue.new_queue, encoding._c_encode_columns,
sender_split._c_sent_senders; not the code before the C work, whose Python
flusher differed too), in an order rotated from round to round; medians. CPU per record is a
whole worker's, so a tick (10 ms) over 200,000 records is 0.05 µs: read the
figures to that grain. The load average is printed before and after.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench._support import BenchDaemon, arguments, table, whole_number
from bench.workload import FORMS, conn_ip, loadavg, sender
from servertracker import Client, record_queue, sender_split
from servertracker.batch_encoder import BULK_TABLE_ENTRIES, load_value_tables
from servertracker.protocol import encoding

_TICK = os.sysconf("SC_CLK_TCK")
MODES = ("nothing", "queue only", "columns", "interned")
#: "Python fallback": this tree's fallback (three hooks switched, see pure_python()),
#: not the code before the C work (whose Python flusher differed too).
PATHS = ("C", "this tree's Python fallback")
#: Per thread: CPU seconds, voluntary and involuntary context switches.
Usage = tuple[float, int, int]


def threads() -> dict[int, Usage]:
    """Each thread of this process: its CPU seconds and context switches."""
    usage = {}
    for tid in os.listdir("/proc/self/task"):
        task = Path(f"/proc/self/task/{tid}")
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines())
        usage[int(tid)] = (
            (int(fields[11]) + int(fields[12])) / _TICK,
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
        )
    return usage


def pure_python() -> None:
    """This process's worker modules on their pure-Python code (after a fork)."""
    record_queue.new_queue = record_queue.PyRecordQueue
    encoding._c_encode_columns = None
    sender_split._c_sent_senders = None


def _nothing(conn_ip: str | None, sender: str | None) -> None:
    """What the ``nothing`` mode calls for each record."""


def work(socket: Path, form: str, records: int, mode: str, path: str) -> list[float]:
    """In a forked child: one worker's run; µs a record (whole process, recording
    thread, flusher) and the flusher's and the recording thread's switches."""
    pairs = [(conn_ip(r), sender(form, r)) for r in range(records)]
    gc.freeze()
    if path != "C":
        pure_python()
    client = None
    record: Callable[[str | None, str | None], None] = _nothing
    if mode != "nothing":
        entries = BULK_TABLE_ENTRIES if mode == "interned" else 0
        client = Client(socket, max_buffered=records + 1, table_entries=entries)
        if mode == "queue only":
            client._queue.started = True  # the flusher is never started
        record = client.record_server
    main = threading.get_native_id()
    cpu_before, before = time.process_time(), threads()
    for ip, value in pairs:
        record(ip, value)
    looped = threads()[main][0]
    if client is not None and mode != "queue only":
        assert client.flush(600)
        assert client.stats().dropped == 0
    after, cpu = threads(), time.process_time() - cpu_before
    flusher = [after[t] for t in after if t != main]
    scale = 1e6 / records
    return [
        cpu * scale,
        (after[main][0] - before[main][0]) * scale,
        sum(u[0] for u in flusher) * scale,
        sum(u[1] for u in flusher),
        sum(u[2] for u in flusher),
        after[main][1] - before[main][1],
        after[main][2] - before[main][2],
        (after[main][0] - looped) * 1000,
    ]


def run(socket: Path, form: str, records: int, mode: str, path: str) -> list[float]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            os.write(write, repr(work(socket, form, records, mode, path)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{form} {mode} {path}: the worker failed")
    result: list[float] = eval(answer)  # our own child's repr of a list of numbers
    return result


def main() -> None:
    parser = arguments("bench.worker_cost", __doc__)
    parser.add_argument("--rounds", type=whole_number(), default=3, help="rounds, modes rotated")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated sender forms")
    parser.add_argument(
        "--records", type=whole_number(), default=200_000, help="records of the worker"
    )
    args = parser.parse_args()
    load_value_tables()  # as a pre-fork master would: numpy loaded once
    entrants = [(mode, path) for mode in MODES for path in PATHS]
    results: dict[tuple[str, str, str], list[list[float]]] = {}
    print(f"load average before: {loadavg()}", flush=True)
    daemon = BenchDaemon().start()
    try:
        for round_number in range(args.rounds):
            shift = round_number % len(entrants)
            for form in args.forms.split(","):
                for mode, path in entrants[shift:] + entrants[:shift]:
                    got = run(daemon.socket_path, form, args.records, mode, path)
                    results.setdefault((form, mode, path), []).append(got)
    finally:
        daemon.stop()
    print(f"load average after: {loadavg()}")
    rows = []
    for (form, mode, path), runs in results.items():
        med = [statistics.median(r[i] for r in runs) for i in range(8)]
        rows.append(
            [form, mode, path, f"{med[0]:.2f}", f"{med[1]:.2f}", f"{med[2]:.2f}",
             f"{med[7]:.0f}", f"{med[3]:,.0f} / {med[4]:,.0f}", f"{med[5]:,.0f} / {med[6]:,.0f}"]
        )  # fmt: skip
    rows.sort(key=lambda r: (FORMS.index(r[0]), MODES.index(r[1]), PATHS.index(r[2])))
    print(
        table(
            ["form", "mode", "path", "µs/record", "recording thread", "flusher",
             "recording thread in flush(), ms", "flusher switches vol / invol",
             "recording thread switches vol / invol"],
            rows,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
